"""The lifetime protocol Model and Sampler share: a ``with`` block closes, and so does garbage
collection (never raising from ``__del__``)."""


class Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
