"""Python bindings for libdiffusion (CPU diffusion-model image generation).

A thin ctypes + numpy layer over the C API in ``include/diffusion.h``::

    import diffusion

    with diffusion.load("models/digits") as model:
        with model.sampler(scheduler="ddim", steps=50, seed=1, batch=4) as s:
            x0 = s.run()            # float32 [N, C, H, W], as the scheduler left it
            pixels = s.images()     # uint8 [N, H, W, C]

Beyond a loaded model:

- bring your own denoiser: ``diffusion.Sampler(denoiser=fn, shape=(N, C, H, W), scheduler="ddim",
  steps=50, seed=1)`` runs any scheduler around a Python function ``fn(x, t)`` (the network);
- :meth:`Sampler.set_classifier_guidance` (a gradient function), :meth:`Sampler.set_init_image`
  (img2img from pixels or latents with a strength), :meth:`Sampler.set_start_noise`;
- :func:`scheduler_names`, :func:`scheduler_info`, :func:`noise` (a seed's start noise) and
  :func:`slerp` (spherical interpolation, e.g. to morph between seeds).

Callbacks (progress, denoiser, classifier gradient) run on the thread that called
:meth:`Sampler.step` / :meth:`Sampler.run`; an exception raised in one is kept and re-raised from
that call (nothing propagates into C), and the sampler stays usable.

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
during ``step()`` or ``run()`` cancels the run and waits for it to stop. A sampler's callbacks may
read it (``latents``, ``timesteps``) but not step or change it (ERROR_INVALID_STATE).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import numbers
import operator
import os
import signal
import sys
import threading
from collections.abc import Mapping

import numpy as np

from ._lib import DENOISE_FN as _DENOISE_FN
from ._lib import GRADIENT_FN as _GRADIENT_FN
from ._lib import PROGRESS_FN as _PROGRESS_FN
from ._lib import LibraryNotFoundError, Status, library
from ._lib import ModelInfo as _ModelInfo
from ._lib import ModelParams as _ModelParams
from ._lib import SamplerParams as _SamplerParams

__version__ = "0.2.0"

__all__ = [
    "DiffusionError",
    "LibraryNotFoundError",
    "Model",
    "Sampler",
    "Status",
    "library_path",
    "load",
    "noise",
    "scheduler_info",
    "scheduler_names",
    "slerp",
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


def _float(name: str, value) -> float:
    """A real number (int, float or numpy scalar; not bool or str) as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


def _shape(name: str, value) -> tuple:
    """A shape (an int or a sequence of ints >= 0) as a tuple of Python ints."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of integers, not {type(value).__name__}")
    try:
        dims = (operator.index(value),)
    except TypeError:
        try:
            dims = tuple(value)
        except TypeError:
            kind = type(value).__name__
            raise TypeError(f"{name} must be an integer or a sequence of integers, not {kind}") from None
    return tuple(_int(f"{name}[{i}]", d, 0, _INT32_MAX) for i, d in enumerate(dims))


def _callback_result(what: str, result, shape: tuple) -> np.ndarray:
    """A callback's returned array, checked: exactly `shape`, real floating values (converted to
    float32), all finite. Raises ValueError otherwise."""
    try:
        arr = np.asarray(result)
    except Exception as e:
        raise ValueError(f"the {what} returned {type(result).__name__}, not an array of shape {shape}: {e}") from e
    if arr.shape != shape:
        raise ValueError(f"the {what} returned an array of shape {arr.shape}, expected {shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"the {what} returned {arr.dtype} values, expected floating point (float32)")
    with np.errstate(over="ignore"):  # values beyond float32 become inf: reported just below
        arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"the {what} returned non-finite values (NaN or infinity, also from float32 overflow)")
    return arr


def _denoise_callback(fn, errors: list):
    """The Python side of a diffusion_denoise_fn: fn(x, t) -> [N, out_channels, H, W].

    Nothing may propagate into C: an exception (also a wrong result) is appended to `errors` and
    the callback returns false, so the step fails with DIFFUSION_ERROR_CALLBACK and the sampler
    re-raises the exception. It holds no reference to the sampler (no reference cycle)."""

    def callback(x_p, shape_p, timestep, out_p, out_channels, _user_data):
        try:
            n, c, h, w = (int(shape_p[i]) for i in range(4))
            x = np.ctypeslib.as_array(x_p, shape=(n, c, h, w)).copy()
            out_shape = (n, int(out_channels), h, w)
            try:
                out = _callback_result("denoiser", fn(x, float(timestep)), out_shape)
            except ValueError as e:
                if int(out_channels) != c and "shape" in str(e):
                    raise ValueError(f"{e} (this scheduler reads 2 x {c} channels: the prediction, then the "
                                     "learned variance)") from None
                raise
            np.ctypeslib.as_array(out_p, shape=out_shape)[...] = out
            return True
        except BaseException as e:  # noqa: BLE001 - re-raised by the sampler after the C call returns
            errors.append(e)
            return False

    return callback


def _gradient_callback(fn, errors: list):
    """The Python side of a diffusion_gradient_fn: fn(x, t) -> grad_x log p(y | x_t), x's shape.
    Exceptions are kept as in _denoise_callback."""

    def callback(x_p, shape_p, timestep, grad_p, _user_data):
        try:
            shape = tuple(int(shape_p[i]) for i in range(4))
            x = np.ctypeslib.as_array(x_p, shape=shape).copy()
            grad = _callback_result("classifier gradient", fn(x, float(timestep)), shape)
            np.ctypeslib.as_array(grad_p, shape=shape)[...] = grad
            return True
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            return False

    return callback


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
# sys.unraisablehook and returns an unset (garbage) value to C. The callbacks catch everything they
# can, but an exception raised by a signal handler fires as a callback is entered, before its try
# block. For Ctrl-C with the default handler, _defer_sigint prevents that; for anything else
# (a custom handler that raises) this hook at least routes the exception from our own callbacks back
# to the step()/run() that owns them.
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


def _defer_sigint(interrupted: list):
    """Makes Ctrl-C during a C call record itself in `interrupted` instead of raising; returns the
    handler to restore afterwards, or None if nothing was changed.

    Python runs a signal's handler at the first bytecode it executes in the main thread, and while
    the library runs that is the entry of one of our ctypes callbacks, before its try block: the
    KeyboardInterrupt would escape into ctypes, which then returns an unset (garbage) value to C (a
    progress callback may not cancel, a denoiser's unfilled output may be used). So while a sampler
    is inside the library, SIGINT is only recorded; the callbacks stop the run and the caller raises
    KeyboardInterrupt once the C call has returned. Only the default handler is replaced, only on
    the main thread (the only thread that runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            return None

        def record(signum, frame):
            interrupted.append(signum)

        signal.signal(signal.SIGINT, record)
    except (ValueError, OSError):  # e.g. not the main interpreter
        return None
    return signal.default_int_handler


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


def scheduler_names() -> list:
    """The scheduler names a sampler accepts, in the library's order: ddpm, ddim, euler, euler_a,
    heun, dpmpp_2m, pndm, lms, unipc, lcm. (Aliases such as "dpmpp_2m_karras" and diffusers class
    names are accepted too; :func:`scheduler_info` resolves them.)"""
    arr = library().scheduler_names()
    names = []
    if arr:
        i = 0
        while arr[i] is not None:
            names.append(arr[i].decode("utf-8"))
            i += 1
    return names


def scheduler_info(name: str) -> dict:
    """What a scheduler name, alias or diffusers class name means: {"name", "diffusers_class",
    "implied" (settings the alias sets, e.g. {"algorithm_type": "sde-dpmsolver++"} for
    "dpmpp_2m_sde"), "settings" (the diffusers keys it reads), "defaults", "default_steps"}.
    An unknown name raises DiffusionError (ERROR_INVALID_ARGUMENT) listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    out = ctypes.c_char_p()
    _check(library().scheduler_info_json(_c_string("name", name), ctypes.byref(out)))
    return json.loads(out.value.decode("utf-8"))


def noise(seed: int, shape) -> np.ndarray:
    """The start noise of a seed: float32 values of ``torch.randn(shape, generator=
    torch.Generator().manual_seed(seed))`` on the CPU, i.e. what a sampler with that seed and shape
    draws first (its start latents before the scheduler's init_noise_sigma). ``shape`` is an int or
    a sequence of ints."""
    seed = _int("seed", seed, 0, 2**64 - 1)
    shape = _shape("shape", shape)
    count = math.prod(shape)
    if count > 2**32:
        raise ValueError(f"shape {shape} has {count} values, at most 2**32")
    out = np.empty(shape, dtype=np.float32)
    if out.size:
        _check(library().noise(seed, out.ctypes.data_as(_f32p), out.size))
    return out


def slerp(a, b, t: float) -> np.ndarray:
    """Spherical interpolation of two same-shape arrays at t in [0, 1] (t = 0 gives a, 1 gives b):
    with theta the angle between them (as flat vectors), (sin((1-t) theta) a + sin(t theta) b) /
    sin(theta), linear when they are nearly parallel. Computed in double; returns float32 of their
    shape. Interpolating the start noise of two seeds keeps it looking like noise (a linear mix
    would shrink it); pass the result to :meth:`Sampler.set_start_noise` to morph between seeds."""
    a = np.asarray(a, dtype=np.float32, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    b = np.asarray(b, dtype=np.float32, order="C")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    t = _float("t", t)
    out = np.empty(a.shape, dtype=np.float32)
    if out.size:
        _check(library().slerp(a.ctypes.data_as(_f32p), b.ctypes.data_as(_f32p), out.size, t,
                               out.ctypes.data_as(_f32p)))
    return out


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

    The network is either a loaded :class:`Model` (``Sampler(model, ...)``, or ``model.sampler(...)``)
    or a Python function (``Sampler(denoiser=fn, shape=(N, C, H, W), ...)``, "bring your own
    denoiser"); give exactly one of them.

    scheduler: a name of :func:`scheduler_names` (ddpm, ddim, euler, euler_a, heun, dpmpp_2m, pndm,
    lms, unipc, lcm), an alias or a diffusers class name (see :func:`scheduler_info`); None = the
    model's scheduler_config.json, else ddpm (always ddpm for a denoiser);
    steps: inference steps (None = diffusers' pipeline default: ddpm all train steps, lcm 4, others
    50); Heun and PNDM evaluate the network more than once per step and their :attr:`timesteps`
    count every evaluation;
    seed: the random generator's seed (torch.Generator().manual_seed(seed) on CPU);
    guidance_scale: classifier-free guidance (None or 1 = none; model only);
    eta: DDIM's eta; class_label: an int for every image or one per image (class-conditional
    models); batch (None = 1), height, width: output size (None = the model's sample_size; model
    only); scheduler_config: diffusers scheduler keys (dict, or a JSON string) over the model's
    (or, for a denoiser, over the scheduler's diffusers defaults).

    denoiser: ``fn(x, t) -> prediction``, called once per network evaluation with x, the
    scheduler's scaled model input (what a diffusers pipeline passes to its UNet), as a fresh
    float32 ndarray [N, C, H, W] (a copy: the function may keep or modify it) and t, the timestep
    as a float (fractional for some schedulers). It returns an array of shape [N, out_channels, H,
    W] of real floating values (converted to float32), all finite: out_channels = C, or 2C for ddpm
    with variance_type "learned" / "learned_range" (the prediction, then the variance channels).
    It does its own conditioning (guidance_scale and class_label do not apply). If it raises, or
    returns a wrong shape, dtype or non-finite values (ValueError), the step fails, the sample is
    left unchanged (the step can be retried) and the exception is re-raised from :meth:`step` /
    :meth:`run`. shape: (N, C, H, W) of the sample, required with a denoiser.
    """

    def __init__(
        self,
        model: Model | None = None,
        scheduler: str | None = None,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        class_label=None,
        batch: int | None = None,
        height: int | None = None,
        width: int | None = None,
        scheduler_config=None,
        *,
        denoiser=None,
        shape=None,
    ):
        self._handle = None  # set first, so __del__ works whatever happens below
        self._model = None
        self._lock = threading.RLock()  # serialises calls using the handle
        self._handle_lock = threading.Lock()  # guards the handle itself (for cancel vs free)
        self._running = False  # a step() or run() is inside the C library
        self._callback_thread = None  # the thread of that call (its callbacks run on it)
        self._close_pending = False
        # Exceptions raised in the denoiser / classifier-gradient callbacks during the current C call.
        self._callback_errors = []
        self._denoiser = None  # (function, python callback, ctypes callback): alive with the sampler
        self._gradient = None  # the same while classifier guidance is on
        if (model is None) == (denoiser is None):
            raise TypeError("give exactly one of model and denoiser")
        if model is not None and not isinstance(model, Model):
            raise TypeError(f"model must be a diffusion.Model, not {type(model).__name__}")
        if denoiser is not None:
            if not callable(denoiser):
                raise TypeError(f"denoiser must be callable, not {type(denoiser).__name__}")
            if shape is None:
                raise TypeError("a sampler with a denoiser needs shape=(batch, channels, height, width)")
            if batch is not None or height is not None or width is not None:
                raise TypeError("with a denoiser the size is shape=(batch, channels, height, width); "
                                "batch, height and width are for a model")
            if guidance_scale is not None or class_label is not None:
                raise TypeError("guidance_scale and class_label need a model; a denoiser does its own conditioning")
            dims = _shape("shape", shape)
            if len(dims) != 4:
                raise ValueError(f"shape must be (batch, channels, height, width), got {tuple(dims)}")
        elif shape is not None:
            raise TypeError("shape is for a denoiser; with a model give batch, height and width")

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
        if denoiser is not None:
            params.batch, params.channels, params.height, params.width = dims
        else:
            params.batch = 1 if batch is None else _int("batch", batch, 0, _INT32_MAX)
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

        handle = ctypes.c_void_p()
        if denoiser is not None:
            py_callback = _denoise_callback(denoiser, self._callback_errors)
            c_callback = _DENOISE_FN(py_callback)
            self._denoiser = (denoiser, py_callback, c_callback)
            _check(lib.sampler_create_with_denoiser(c_callback, None, ctypes.byref(params), ctypes.byref(handle)))
        else:
            model_handle = model._acquire()  # the sampler counts as a user of the model until closed
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
            c_shape = (ctypes.c_int32 * 4)()
            _check(lib.sampler_shape(self._handle, c_shape))
            self._shape = tuple(int(v) for v in c_shape)
            self._timesteps = self._fetch_timesteps(self._handle)
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
                    Status.ERROR_INVALID_STATE,
                    "the sampler cannot be changed or stepped while step() or run() is in progress",
                )
            yield self._handle

    def _free(self):
        with self._handle_lock:
            handle, self._handle = self._handle, None
        if handle:
            library().sampler_free(handle)
            if self._model is not None:
                self._model._release()

    def close(self) -> None:
        """Frees the sampler. Idempotent. From another thread during step() or run(): cancels the
        run and waits for it to stop. From a callback of this sampler (progress, denoiser, classifier
        gradient): the run is cancelled and the sampler is freed when step() or run() returns."""
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
        kind = " denoiser" if self._denoiser is not None else ""
        return f"<diffusion.Sampler{kind} shape={self._shape} steps={len(self._timesteps)}>"

    # -- info --

    @property
    def model(self) -> Model | None:
        """The model, or None for a sampler with a denoiser."""
        return self._model

    @property
    def denoiser(self):
        """The denoiser function, or None for a sampler over a model."""
        return None if self._denoiser is None else self._denoiser[0]

    @property
    def shape(self) -> tuple:
        """(batch, channels, height, width)."""
        return self._shape

    batch = property(lambda self: self._shape[0])
    channels = property(lambda self: self._shape[1])
    height = property(lambda self: self._shape[2])
    width = property(lambda self: self._shape[3])

    def _fetch_timesteps(self, h) -> np.ndarray:
        lib = library()
        count = ctypes.c_size_t()
        _check(lib.sampler_timesteps(h, None, 0, ctypes.byref(count)))
        ts = np.empty(count.value, dtype=np.float32)
        _check(lib.sampler_timesteps(h, ts.ctypes.data_as(_f32p), ts.size, ctypes.byref(count)))
        return ts[: count.value]

    @property
    def timesteps(self) -> np.ndarray:
        """The timesteps the sampler visits, in order (float32). After :meth:`set_init_image` only
        the remaining ones (the tail of the full schedule)."""
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
        """Classifier-free guidance (model only; 1 = none)."""
        with self._use(mutating=True) as h:
            _check(library().sampler_set_guidance_scale(h, float(scale)))

    def set_class_label(self, labels) -> None:
        """One label for every image, or one per image (class-conditional model only)."""
        labels = _labels("class_label", labels)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_class_label(h, labels.ctypes.data_as(_i32p), labels.size))

    def set_classifier_guidance(self, gradient, scale: float = 1.0) -> None:
        """Classifier guidance (Dhariwal & Nichol) with gradient scale ``scale``.

        ``gradient(x, t)`` returns grad_x log p(y | x_t) for the same model input x (a fresh float32
        copy, [N, C, H, W]) and timestep t the network gets, as an array of x's shape (real
        floating, finite). ddpm moves its step's mean by scale * variance * grad (Algorithm 1), the
        other schedulers use eps' = eps - sqrt(1 - alpha_bar_t) * scale * grad (Algorithm 2).
        ``gradient`` None or scale 0 turns guidance off. Exceptions and wrong results are re-raised
        from step()/run() as for the denoiser. Works with a model or a denoiser; may be changed
        between steps.
        """
        if gradient is not None and not callable(gradient):
            raise TypeError(f"gradient must be callable or None, not {type(gradient).__name__}")
        scale = _float("scale", scale)
        if gradient is None:
            entry, c_callback = None, _GRADIENT_FN()  # NULL
        else:
            py_callback = _gradient_callback(gradient, self._callback_errors)
            c_callback = _GRADIENT_FN(py_callback)
            entry = (gradient, py_callback, c_callback)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_classifier_guidance(h, c_callback, None, scale))
            # The library now holds the new callback (or none); the old one may go.
            self._gradient = entry if scale != 0 else None

    def set_init_image(self, image, strength: float) -> None:
        """img2img: start from an image instead of pure noise, before the first step.

        ``image``: uint8 pixels [N, H, W, C] (as :meth:`images` gives them) or one [H, W, C] image
        for the whole batch, mapped to x_0 = pixel / 255 * 2 - 1; or float latents x_0 [N, C, H, W]
        or one [C, H, W] (converted to float32). ``strength`` in (0, 1]: as diffusers' img2img
        pipelines, int(steps * strength) steps run (the tail of the schedule) and x_0 is noised to
        the level of the first of them with the sampler's start noise. :attr:`timesteps` then
        lists only the remaining steps. After a step: DiffusionError (ERROR_INVALID_STATE).
        """
        strength = _float("strength", strength)
        if not (math.isfinite(strength) and 0 < strength <= 1):
            raise ValueError(f"strength is {strength}, must be in (0, 1]")
        arr = np.asarray(image)
        n, c, hh, ww = self._shape
        lib = library()
        if arr.dtype == np.uint8:
            if arr.shape not in ((n, hh, ww, c), (hh, ww, c)):
                raise ValueError(f"pixels must have shape {(n, hh, ww, c)} or {(hh, ww, c)}, got {arr.shape}")
            arr, set_init, ptr = np.ascontiguousarray(arr), lib.sampler_set_init_image, _u8p
        elif np.issubdtype(arr.dtype, np.floating):
            if arr.shape not in ((n, c, hh, ww), (c, hh, ww)):
                raise ValueError(f"latents must have shape {(n, c, hh, ww)} or {(c, hh, ww)}, got {arr.shape}")
            arr, set_init, ptr = np.ascontiguousarray(arr, dtype=np.float32), lib.sampler_set_init_latents, _f32p
        else:
            raise TypeError(f"image must be uint8 pixels [N, H, W, C] or float latents [N, C, H, W], got {arr.dtype} "
                            "values")
        with self._use(mutating=True) as h:
            _check(set_init(h, arr.ctypes.data_as(ptr), arr.size, strength))
            self._timesteps = self._fetch_timesteps(h)

    def set_start_noise(self, noise) -> None:
        """Replaces the sampler's unit start noise (before the first step): x_T becomes noise *
        init_noise_sigma (or the init image noised with it). ``noise``: [N, C, H, W] (converted to
        float32), e.g. ``slerp(diffusion.noise(1, shape), diffusion.noise(2, shape), t)``."""
        arr = np.asarray(noise)
        if arr.shape != self._shape:
            raise ValueError(f"noise must have shape {self._shape}, got {arr.shape}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_start_noise(h, arr.ctypes.data_as(_f32p), arr.size))

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

    def _images(self, fn) -> np.ndarray:
        with self._use() as h:
            shape = (ctypes.c_int32 * 4)()
            _check(library().sampler_image_shape(h, shape))
            out = np.empty(tuple(shape), dtype=np.uint8)
            _check(fn(h, out.ctypes.data_as(_u8p), out.size))
        return out

    def images(self) -> np.ndarray:
        """The finished run's images as uint8 pixels [N, H, W, C]: round(clamp(x/2 + 0.5, 0, 1) * 255)
        of the decoded sample. Before the last step: DiffusionError INVALID_STATE (see preview_images)."""
        return self._images(library().sampler_get_images)

    def preview_images(self) -> np.ndarray:
        """The current sample decoded like images(), at any point of the run."""
        return self._images(library().sampler_get_preview_images)

    # -- running --

    @contextlib.contextmanager
    def _c_call(self, interrupted: list, extra_sink=None):
        """Around a step/run C call (inside _use(mutating=True)): marks the sampler running, defers
        Ctrl-C into `interrupted` (see _defer_sigint), routes exceptions of our callbacks that
        ctypes could only report as unraisable to the call, and frees the sampler afterwards if a
        callback closed it. Yields the list of the callbacks' exceptions."""
        errors = self._callback_errors
        del errors[:]
        sinks = [(entry[1], errors) for entry in (self._denoiser, self._gradient) if entry is not None]
        if extra_sink is not None:
            sinks.append(extra_sink)
        self._running = True
        self._callback_thread = threading.get_ident()
        _ensure_unraisable_hook()
        for callback, sink in sinks:
            _callback_sinks[id(callback)] = (callback, sink)
        restore = _defer_sigint(interrupted)
        try:
            yield errors
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
            for callback, _ in sinks:
                _callback_sinks.pop(id(callback), None)
            self._running = False
            self._callback_thread = None
            if self._close_pending:
                self._free()

    def step(self) -> bool:
        """Runs one step; True if steps remain after it. Raises DiffusionError (INVALID_STATE)
        when none is left, and (CANCELLED) without stepping if a cancel() was pending. An exception
        of the denoiser or classifier gradient is re-raised (the step did not happen). Ctrl-C
        during the step lets it finish, then raises KeyboardInterrupt."""
        remaining = ctypes.c_int32(0)
        interrupted = []
        with self._use(mutating=True) as h:
            with self._c_call(interrupted) as errors:
                status = library().sampler_step(h, ctypes.byref(remaining))
                err = _error(status) if status != 0 else None
            if interrupted:
                raise KeyboardInterrupt
            if errors:
                raise errors[0]
            if err is not None:
                raise err
        return remaining.value > 0

    def run(self, progress=None) -> np.ndarray:
        """Runs the remaining steps and returns the final sample (float32 [N, C, H, W], exactly as
        the scheduler left it: not clamped).

        progress(step, total_steps, timestep) is called after each step; returning False cancels
        (None counts as True). If it raises, the run is cancelled and the exception re-raised
        here; so is an exception of the denoiser or classifier gradient (that step did not happen).
        A cancelled run (callback, cancel()) raises DiffusionError with status ERROR_CANCELLED;
        Ctrl-C stops it after the current step and raises KeyboardInterrupt. Either way the sampler
        keeps the last x_t and can continue with step() or run().
        """
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable or None")
        raised = []
        interrupted = []  # Ctrl-C, deferred by _c_call

        def callback(step, total, timestep, _user_data):
            # Nothing may propagate into C: any exception is kept and cancels the run.
            try:
                if progress is None:
                    return not (self._close_pending or interrupted)
                result = progress(int(step), int(total), float(timestep))
                if self._close_pending or interrupted:
                    return False
                return True if result is None else bool(result)
            except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
                raised.append(e)
                return False

        # Always passed (even without progress) so that Ctrl-C, which Python can only notice while a
        # callback runs, cancels the run after the current step instead of waiting for the end.
        c_callback = _PROGRESS_FN(callback)  # alive until the C call returns
        with self._use(mutating=True) as h:
            with self._c_call(interrupted, extra_sink=(callback, raised)) as errors:
                status = library().sampler_run(h, c_callback, None)
                err = _error(status) if status != 0 else None
            if interrupted:
                raise KeyboardInterrupt
            if raised:
                raise raised[0]
            if errors:
                raise errors[0]
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
