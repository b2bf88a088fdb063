"""Python bindings for libdiffusion (CPU diffusion-model image generation).

A thin ctypes + numpy layer over the C API in ``include/diffusion.h``::

    import diffusion

    with diffusion.load("models/digits") as model:
        with model.sampler(scheduler="ddim", steps=50, seed=1, batch=4) as s:
            x0 = s.run()            # float32 [N, C, H, W], as the scheduler left it
            pixels = s.images()     # uint8 [N, H, W, C]

The shared library is found, in this order, at ``$DIFFUSION_LIBRARY`` (a path), as
``libdiffusion.so`` next to this package, then through the system loader
(``ctypes.util.find_library("diffusion")``, ``libdiffusion.so.0``, ``libdiffusion.so``). It is
loaded on first use; :func:`library_path` says which file was picked.

Lifetimes: a :class:`Model` and a :class:`Sampler` own a C handle each and free it on
``close()`` (idempotent), on leaving a ``with`` block, or when garbage-collected. A sampler keeps
its model alive: ``model.close()`` while samplers made from it are still open only marks the model
closed (no new predictions or samplers) and the C model is freed when the last of those samplers
is closed. Using a closed object raises :class:`ValueError`; it never reaches the C library.

Threads: ctypes releases the GIL during every C call, so predictions and sampling run in
parallel with other Python threads. A model may be shared by any number of threads. A sampler
serialises its own calls (a second thread's call waits for the running one), except
:meth:`Sampler.cancel`, which any thread may call at any time; ``close()`` from another thread
during ``run()`` cancels the run and waits for it to stop.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import operator
import os
import sys
import threading
from collections.abc import Mapping

import numpy as np

from ._lib import PROGRESS_FN as _PROGRESS_FN
from ._lib import LibraryNotFoundError, Status, library
from ._lib import ModelInfo as _ModelInfo
from ._lib import ModelParams as _ModelParams
from ._lib import SamplerParams as _SamplerParams

__version__ = "0.1.0"

__all__ = [
    "DiffusionError",
    "LibraryNotFoundError",
    "Model",
    "Sampler",
    "Status",
    "library_path",
    "load",
    "version",
    "version_number",
]

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_INT32_MAX = 2**31 - 1


# ---- errors -------------------------------------------------------------------------------


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


# ---- helpers ------------------------------------------------------------------------------


def _int(name: str, value, lo: int, hi: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} is {v}, must be between {lo} and {hi}")
    return v


def _labels(name: str, value) -> np.ndarray:
    """A 1-d int32 array of class labels from an int or a sequence of ints."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be an integer or a sequence of integers, got {arr.dtype} values")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be an integer or a 1-d sequence, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < -(2**31) or arr.max() > _INT32_MAX):
        raise ValueError(f"{name} {arr.tolist()} does not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _c_string(name: str, value) -> bytes:
    """UTF-8 bytes for a const char * argument (a NUL inside would silently cut it short)."""
    raw = os.fsencode(value) if name == "path" else (value.encode("utf-8") if isinstance(value, str) else bytes(value))
    if b"\0" in raw:
        raise ValueError(f"{name} contains a NUL character")
    return raw


def _new_params(cls, init):
    """A params struct filled by the library's *_init.

    The library writes only the sizeof(struct) bytes this package knows and sets struct_size to
    it, so a newer library whose struct has grown neither writes past it nor reads beyond it.
    """
    params = cls()
    init(ctypes.byref(params), ctypes.sizeof(cls))
    return params


# Exceptions escaping a ctypes callback are not propagated: ctypes reports them to
# sys.unraisablehook and returns 0. The callback catches everything it can, but an exception raised
# by a signal handler (Ctrl-C) can fire as the callback is entered, before its try block. A hook
# routes such exceptions from our own callbacks back to the run() that owns them.
_callback_sinks = {}  # id(python callback) -> (callback, list of exceptions)
_hook_lock = threading.Lock()
_previous_hook = None


def _unraisable_hook(unraisable):
    sink = _callback_sinks.get(id(unraisable.object))
    if sink is not None and sink[0] is unraisable.object and unraisable.exc_value is not None:
        exc = unraisable.exc_value
        if unraisable.exc_traceback is not None:
            exc = exc.with_traceback(unraisable.exc_traceback)
        sink[1].append(exc)
        return
    (_previous_hook or sys.__unraisablehook__)(unraisable)


def _ensure_unraisable_hook():
    global _previous_hook
    with _hook_lock:
        if sys.unraisablehook is not _unraisable_hook:
            _previous_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable_hook


# ---- module functions ---------------------------------------------------------------------


def version() -> str:
    """The version string of the loaded library, "MAJOR.MINOR.PATCH"."""
    return library().version_string().decode()


def version_number() -> int:
    """MAJOR * 10000 + MINOR * 100 + PATCH of the loaded library."""
    return int(library().version_number())


def library_path() -> str:
    """The path of the libdiffusion that was loaded (loads it if needed)."""
    return library().path


def load(path, threads: int | None = None) -> "Model":
    """Loads a model folder (diffusers layout); see :class:`Model`."""
    return Model(path, threads=threads)


# ---- model --------------------------------------------------------------------------------


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
        return Sampler(
            self, scheduler=scheduler, steps=steps, seed=seed, guidance_scale=guidance_scale, eta=eta,
            class_label=class_label, batch=batch, height=height, width=width, scheduler_config=scheduler_config,
        )


# ---- sampler ------------------------------------------------------------------------------


class Sampler:
    """One generation: the scheduler's state and x_t, advanced by :meth:`step` or :meth:`run`.

    scheduler: "ddpm" or "ddim" (None = the model's scheduler_config.json, else ddpm);
    steps: inference steps (None = diffusers' pipeline default: ddpm all train steps, ddim 50);
    seed: the random generator's seed (torch.Generator().manual_seed(seed) on CPU);
    guidance_scale: classifier-free guidance (None or 1 = none);
    eta: DDIM's eta; class_label: an int for every image or one per image (class-conditional
    models); batch, height, width: output size (None = the model's sample_size);
    scheduler_config: diffusers scheduler keys (dict, or a JSON string) over the model's.
    """

    def __init__(
        self,
        model: Model,
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
    ):
        self._handle = None  # set first, so __del__ works whatever happens below
        self._model = None
        self._lock = threading.RLock()  # serialises calls using the handle
        self._handle_lock = threading.Lock()  # guards the handle itself (for cancel vs free)
        self._running = False
        self._callback_thread = None
        self._close_pending = False
        if not isinstance(model, Model):
            raise TypeError(f"model must be a diffusion.Model, not {type(model).__name__}")

        lib = library()
        params = _new_params(_SamplerParams, lib.sampler_params_init)
        if scheduler is not None:
            if not isinstance(scheduler, str):
                raise TypeError(f"scheduler must be a str or None, not {type(scheduler).__name__}")
            self._scheduler_bytes = _c_string("scheduler", scheduler)  # kept alive with the sampler
            params.scheduler = self._scheduler_bytes
        if steps is not None:
            params.steps = _int("steps", steps, 0, _INT32_MAX)
        params.seed = _int("seed", seed, 0, 2**64 - 1)
        params.batch = _int("batch", batch, 0, _INT32_MAX)
        if height is not None:
            params.height = _int("height", height, 0, _INT32_MAX)
        if width is not None:
            params.width = _int("width", width, 0, _INT32_MAX)
        params.eta = float(eta)
        if scheduler_config is not None:
            if isinstance(scheduler_config, Mapping):
                text = json.dumps(dict(scheduler_config))
            elif isinstance(scheduler_config, (str, bytes)):
                text = scheduler_config
            else:
                raise TypeError(
                    f"scheduler_config must be a dict or a JSON string, not {type(scheduler_config).__name__}"
                )
            self._config_bytes = _c_string("scheduler_config", text)
            params.scheduler_config_json = self._config_bytes
        labels = None if class_label is None else _labels("class_label", class_label)
        scale = None if guidance_scale is None else float(guidance_scale)

        model_handle = model._acquire()  # the sampler counts as a user of the model until closed
        handle = ctypes.c_void_p()
        status = lib.sampler_create(model_handle, ctypes.byref(params), ctypes.byref(handle))
        if status != 0:
            err = _error(status)
            model._release()
            raise err
        self._model = model
        self._handle = handle.value
        try:
            if scale is not None:
                _check(lib.sampler_set_guidance_scale(self._handle, scale))
            if labels is not None:
                _check(lib.sampler_set_class_label(self._handle, labels.ctypes.data_as(_i32p), labels.size))
            shape = (ctypes.c_int32 * 4)()
            _check(lib.sampler_shape(self._handle, shape))
            self._shape = tuple(int(v) for v in shape)
            count = ctypes.c_size_t()
            _check(lib.sampler_timesteps(self._handle, None, 0, ctypes.byref(count)))
            ts = np.empty(count.value, dtype=np.float32)
            _check(lib.sampler_timesteps(self._handle, ts.ctypes.data_as(_f32p), ts.size, ctypes.byref(count)))
            self._timesteps = ts[: count.value]
        except BaseException:
            self.close()
            raise

    # -- lifetime --

    @contextlib.contextmanager
    def _use(self, mutating: bool = False):
        with self._lock:
            if self._handle is None:
                raise ValueError("sampler is closed")
            if mutating and self._running:
                raise DiffusionError(
                    Status.ERROR_INVALID_STATE, "the sampler cannot be changed or stepped while run() is in progress"
                )
            yield self._handle

    def _free(self):
        with self._handle_lock:
            handle, self._handle = self._handle, None
        if handle:
            library().sampler_free(handle)
            self._model._release()

    def close(self) -> None:
        """Frees the sampler. Idempotent. From another thread during run(): cancels the run and
        waits for it to stop. From run()'s own progress callback: the run is cancelled and the
        sampler is freed when run() returns."""
        if self._handle is None:
            return
        if self._running:
            if self._callback_thread == threading.get_ident():
                self._close_pending = True
                self.cancel()
                return
            self.cancel()
        with self._lock:
            self._free()

    @property
    def closed(self) -> bool:
        return self._handle is None

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
        if self._handle is None:
            return "<diffusion.Sampler closed>"
        return f"<diffusion.Sampler shape={self._shape} steps={len(self._timesteps)}>"

    # -- info --

    @property
    def model(self) -> Model:
        return self._model

    @property
    def shape(self) -> tuple:
        """(batch, channels, height, width)."""
        return self._shape

    batch = property(lambda self: self._shape[0])
    channels = property(lambda self: self._shape[1])
    height = property(lambda self: self._shape[2])
    width = property(lambda self: self._shape[3])

    @property
    def timesteps(self) -> np.ndarray:
        """The timesteps the sampler visits, in order (float32)."""
        with self._use():
            return self._timesteps.copy()

    def __len__(self) -> int:
        return len(self._timesteps)

    @property
    def steps_done(self) -> int:
        """Steps taken so far."""
        done = ctypes.c_int32()
        with self._use() as h:
            _check(library().sampler_progress(h, ctypes.byref(done), None))
        return done.value

    @property
    def remaining(self) -> int:
        """Steps left."""
        return len(self._timesteps) - self.steps_done

    # -- settings --

    def set_guidance_scale(self, scale: float) -> None:
        with self._use(mutating=True) as h:
            _check(library().sampler_set_guidance_scale(h, float(scale)))

    def set_class_label(self, labels) -> None:
        """One label for every image, or one per image."""
        labels = _labels("class_label", labels)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_class_label(h, labels.ctypes.data_as(_i32p), labels.size))

    # -- state --

    def _get_latents(self, h) -> np.ndarray:
        out = np.empty(self._shape, dtype=np.float32)
        _check(library().sampler_get_latents(h, out.ctypes.data_as(_f32p), out.size))
        return out

    @property
    def latents(self) -> np.ndarray:
        """A copy of the current sample x_t, float32 [N, C, H, W]. Setting it replaces x_t before
        the next step (the schedule is not rewound); the shape must match :attr:`shape`."""
        with self._use() as h:
            return self._get_latents(h)

    @latents.setter
    def latents(self, value) -> None:
        arr = np.asarray(value)
        if arr.shape != self._shape:
            raise ValueError(f"latents must have shape {self._shape}, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_latents(h, arr.ctypes.data_as(_f32p), arr.size))

    def images(self) -> np.ndarray:
        """The current sample as uint8 pixels [N, H, W, C]: round(clamp(x/2 + 0.5, 0, 1) * 255)."""
        n, c, hh, ww = self._shape
        out = np.empty((n, hh, ww, c), dtype=np.uint8)
        with self._use() as h:
            _check(library().sampler_get_images(h, out.ctypes.data_as(_u8p), out.size))
        return out

    # -- running --

    def step(self) -> bool:
        """Runs one step; True if steps remain after it. Raises DiffusionError (INVALID_STATE)
        when none is left, and (CANCELLED) without stepping if a cancel() was pending."""
        remaining = ctypes.c_int32(0)
        with self._use(mutating=True) as h:
            _check(library().sampler_step(h, ctypes.byref(remaining)))
        return remaining.value > 0

    def run(self, progress=None) -> np.ndarray:
        """Runs the remaining steps and returns the final sample (float32 [N, C, H, W], exactly as
        the scheduler left it: not clamped).

        progress(step, total_steps, timestep) is called after each step; returning False cancels
        (None counts as True). If it raises, the run is cancelled and the exception re-raised
        here. A cancelled run (callback, cancel(), Ctrl-C) raises DiffusionError with status
        ERROR_CANCELLED; the sampler keeps the last x_t and can continue with step() or run().
        """
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable or None")
        raised = []

        def callback(step, total, timestep, _user_data):
            # Nothing may propagate into C: any exception is kept and cancels the run.
            try:
                if progress is None:
                    return not self._close_pending
                self._callback_thread = threading.get_ident()
                try:
                    result = progress(int(step), int(total), float(timestep))
                finally:
                    self._callback_thread = None
                if self._close_pending:
                    return False
                return True if result is None else bool(result)
            except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
                raised.append(e)
                return False

        # Always passed (even without progress) so that Ctrl-C, which Python delivers while the
        # callback runs, cancels the run instead of waiting for it to finish.
        c_callback = _PROGRESS_FN(callback)  # alive until the C call returns
        with self._use(mutating=True) as h:
            self._running = True
            _ensure_unraisable_hook()
            _callback_sinks[id(callback)] = (callback, raised)
            try:
                status = library().sampler_run(h, c_callback, None)
                err = _error(status) if status != 0 else None
            finally:
                _callback_sinks.pop(id(callback), None)
                self._running = False
                if self._close_pending:
                    self._free()
            if raised:
                raise raised[0]
            if err is not None:
                raise err
            if self._handle is None:
                raise ValueError("the sampler was closed during run()")
            return self._get_latents(h)

    def cancel(self) -> None:
        """Asks a running run() (or the next step()/run()) to stop. Any thread, any time; a no-op
        on a closed sampler."""
        with self._handle_lock:
            if self._handle is not None:
                library().sampler_cancel(self._handle)
