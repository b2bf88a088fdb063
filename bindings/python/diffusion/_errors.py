"""DiffusionError: a failed C call's status and the library's message."""

from __future__ import annotations

from ._lib import Status, library


def _status_name(status: int) -> str:
    try:
        return Status(status).c_name
    except ValueError:
        pass
    try:
        name = library().status_string(int(status))
        if name:
            return name.decode("utf-8", "replace")
    except Exception:
        pass
    return "unknown status"


class DiffusionError(Exception):
    """A libdiffusion call failed.

    ``status`` is the ``diffusion_status`` value (a :class:`Status` when it is one this package
    knows), ``message`` the library's ``diffusion_last_error()`` text for the failed call.
    """

    def __init__(self, status: int, message: str = ""):
        try:
            status = Status(status)
        except ValueError:
            status = int(status)
        self.status = status
        self.message = message
        super().__init__(status, message)

    @property
    def status_name(self) -> str:
        """The C name of the status, e.g. ``DIFFUSION_ERROR_IO``."""
        return _status_name(self.status)

    def __str__(self) -> str:
        return f"{self.status_name}: {self.message}" if self.message else self.status_name

    def __repr__(self) -> str:
        return f"DiffusionError({self.status_name}, {self.message!r})"


def _error(status: int) -> DiffusionError:
    """The error of a call that just failed on this thread (reads diffusion_last_error now)."""
    raw = library().last_error()
    message = raw.decode("utf-8", "replace") if raw else ""
    return DiffusionError(status, message)


def _check(status: int) -> None:
    if status != 0:
        raise _error(status)
