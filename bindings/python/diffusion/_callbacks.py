"""The Python side of the library's callbacks (denoiser, classifier gradient), and keeping Ctrl-C and
exceptions raised on entry to a callback out of C."""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np


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
