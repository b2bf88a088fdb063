"""Model: a loaded network (a diffusers model or pipeline folder)."""

from __future__ import annotations

import ctypes
import json
import os
import threading

import numpy as np

from ._args import _INT32_MAX, _c_string, _f32p, _i32p, _int, _labels, _new_params
from ._errors import DiffusionError, _check
from ._lib import ModelInfo as _ModelInfo
from ._lib import ModelParams as _ModelParams
from ._lib import Status, library


class Model:
    """A loaded UNet2DModel (+ scheduler config). Immutable; safe to share between threads.

    ``threads``: threads used by this model's network evaluations (None or 0 = all cores).
    """

    def __init__(self, path, threads: int | None = None):
        self._handle = None  # set first, so __del__ works whatever happens below
        self._lock = threading.Lock()
        self._users = 0  # in-flight predictions + open samplers
        self._closed = False
        self.path = os.fspath(path)
        threads = 0 if threads is None else _int("threads", threads, 0, _INT32_MAX)
        lib = library()
        params = _new_params(_ModelParams, lib.model_params_init)
        params.n_threads = threads
        handle = ctypes.c_void_p()
        _check(lib.model_load(_c_string("path", self.path), ctypes.byref(params), ctypes.byref(handle)))
        if not handle.value:
            raise DiffusionError(Status.ERROR_INTERNAL, "diffusion_model_load returned OK but no model")
        self._handle = handle.value
        self.threads = threads
        try:
            info = _ModelInfo()
            info.struct_size = ctypes.sizeof(_ModelInfo)
            _check(lib.model_get_info(self._handle, ctypes.byref(info)))
            self._info = {
                "in_channels": int(info.in_channels),
                "out_channels": int(info.out_channels),
                "sample_size": int(info.sample_size),
                "num_class_embeds": int(info.num_class_embeds),
                "sample_width": int(info.sample_width),
                "null_class_label": int(info.null_class_label),
            }
        except BaseException:
            self._free()
            raise

    # -- lifetime --

    def _acquire(self):
        with self._lock:
            if self._closed or self._handle is None:
                raise ValueError("model is closed")
            self._users += 1
            return self._handle

    def _release(self):
        with self._lock:
            self._users -= 1
            free = self._closed and self._users == 0
        if free:
            self._free()

    def _free(self):
        with self._lock:
            handle, self._handle = self._handle, None
        if handle:
            library().model_free(handle)

    def close(self) -> None:
        """Closes the model. Idempotent. If samplers made from it are still open (or a prediction
        is running in another thread), the C model is freed when the last of them is done."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            free = self._users == 0
        if free:
            self._free()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else f"in_channels={self.in_channels}, sample_size={self.sample_size}"
        return f"<diffusion.Model {self.path!r} {state}>"

    # -- info --

    @property
    def info(self) -> dict:
        """{"in_channels", "out_channels", "sample_size" (default height), "sample_width" (default
        width), "num_class_embeds" (0 = not class-conditional), "null_class_label" (the class
        used as the unconditional input for guidance; -1 = none)}."""
        return dict(self._info)

    in_channels = property(lambda self: self._info["in_channels"])
    out_channels = property(lambda self: self._info["out_channels"])
    sample_size = property(lambda self: self._info["sample_size"])
    num_class_embeds = property(lambda self: self._info["num_class_embeds"])
    sample_width = property(lambda self: self._info["sample_width"])
    null_class_label = property(lambda self: self._info["null_class_label"])

    @property
    def config(self) -> dict:
        """The configuration as the library understood it: {"unet": {...}, "scheduler": {...}}."""
        handle = self._acquire()
        try:
            out = ctypes.c_char_p()
            _check(library().model_config_json(handle, ctypes.byref(out)))
            text = out.value.decode("utf-8") if out.value is not None else "null"
        finally:
            self._release()
        return json.loads(text)

    # -- work --

    def predict(self, x, t, class_labels=None) -> np.ndarray:
        """One network evaluation.

        x: float32 [N, in_channels, H, W] (converted and made contiguous as needed);
        t: a scalar (used for every image) or N values; class_labels: None, an int, or N ints.
        Returns float32 [N, out_channels, H, W].
        """
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be 4-d [N, C, H, W], got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"x has {c} channels, the model takes {self.in_channels} (shape {x.shape})")
        for name, v in (("batch", n), ("height", h), ("width", w)):
            _int(name, v, 0, _INT32_MAX)
        ts = np.asarray(t, dtype=np.float32)
        if ts.ndim == 0:
            ts = np.full(n, ts, dtype=np.float32)
        elif ts.shape != (n,):
            raise ValueError(f"t must be a scalar or have shape ({n},), got shape {ts.shape}")
        ts = np.ascontiguousarray(ts)
        labels_p = None
        if class_labels is not None:
            labels = _labels("class_labels", class_labels)
            if labels.size == 1:
                labels = np.full(n, labels[0], dtype=np.int32)
            elif labels.size != n:
                raise ValueError(f"class_labels must be one label or {n}, got {labels.size}")
            labels_p = labels.ctypes.data_as(_i32p)
        out = np.empty((n, self.out_channels, h, w), dtype=np.float32)
        handle = self._acquire()
        try:
            _check(
                library().model_predict(
                    handle, x.ctypes.data_as(_f32p), n, x.shape[1], h, w, ts.ctypes.data_as(_f32p), labels_p,
                    out.ctypes.data_as(_f32p), out.size,
                )
            )
        finally:
            self._release()
        return out

    def sampler(
        self,
        scheduler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        class_label=None,
        batch: int = 1,
        height: int | None = None,
        width: int | None = None,
        scheduler_config=None,
    ) -> "Sampler":
        """A new :class:`Sampler`; it draws its start noise x_T now. See :class:`Sampler`."""
        from ._sampler import Sampler  # (imported here: _sampler imports this module)

        return Sampler(
            self, scheduler=scheduler, steps=steps, seed=seed, guidance_scale=guidance_scale, eta=eta,
            class_label=class_label, batch=batch, height=height, width=width, scheduler_config=scheduler_config,
        )

