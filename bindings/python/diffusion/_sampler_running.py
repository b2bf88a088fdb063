"""The running facet of Sampler: step, run and cancel, with the callbacks' exceptions and Ctrl-C
brought back to the caller (see _callbacks).

A mixin of :class:`diffusion.Sampler`, which provides ``_use``, ``_handle``, ``_handle_lock``,
``_running``, ``_callback_thread``, ``_close_pending``, ``_callback_errors``, ``_denoiser``,
``_gradient``, ``_free`` and ``_get_latents``.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import threading

import numpy as np

from ._callbacks import _callback_sinks, _defer_sigint, _ensure_unraisable_hook
from ._errors import _error
from ._lib import PROGRESS_FN as _PROGRESS_FN
from ._lib import STAGE_FN as _STAGE_FN
from ._lib import library

_STAGE_NAMES = {0: "text_encoding", 1: "denoising", 2: "decoding"}


class SamplerRunning:
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

    def run(self, progress=None, *, stage=None) -> np.ndarray:
        """Runs the remaining steps and returns the final sample (float32 [N, C, H, W], exactly as
        the scheduler left it: not clamped).

        progress(step, total_steps, timestep) is called after each step; returning False cancels
        (None counts as True). If it raises, the run is cancelled and the exception re-raised
        here; so is an exception of the denoiser or classifier gradient (that step did not happen).
        A cancelled run (callback, cancel()) raises DiffusionError with status ERROR_CANCELLED;
        Ctrl-C stops it after the current step and raises KeyboardInterrupt. Either way the sampler
        keeps the last x_t and can continue with step() or run().

        stage(name, done, total), if given, reports the run's stages: "text_encoding" (0 then 1 of
        1, a text pipeline's prompt, encoded by the first step) and "denoising" (after each step);
        returning False cancels like progress.
        """
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable or None")
        if stage is not None and not callable(stage):
            raise TypeError("stage must be callable or None")
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

        def stage_callback(kind, done, total, _user_data):
            try:
                if stage is None:
                    return not (self._close_pending or interrupted)
                result = stage(_STAGE_NAMES.get(int(kind), str(kind)), int(done), int(total))
                if self._close_pending or interrupted:
                    return False
                return True if result is None else bool(result)
            except BaseException as e:  # noqa: BLE001 - re-raised after the C call returns
                raised.append(e)
                return False

        # Always passed (even without progress) so that Ctrl-C, which Python can only notice while a
        # callback runs, cancels the run after the current step instead of waiting for the end.
        c_callback = _PROGRESS_FN(callback)  # alive until the C call returns
        c_stage = _STAGE_FN(stage_callback)
        with self._use(mutating=True) as h:
            with self._c_call(interrupted, extra_sink=(callback, raised)) as errors:
                lib = library()
                lib.sampler_set_stage_callback(h, c_stage, None)
                try:
                    status = lib.sampler_run(h, c_callback, None)
                finally:
                    lib.sampler_set_stage_callback(h, _STAGE_FN(), None)
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
