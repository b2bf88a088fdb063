"""Sampler: one generation's state (scheduler, x_t), stepped by the library."""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
from collections.abc import Mapping

import numpy as np

from ._args import _INT32_MAX, _c_string, _f32p, _i32p, _int, _labels, _new_params, _shape, _u8p
from ._callbacks import _denoise_callback
from ._closing import Closing
from ._errors import DiffusionError, _check, _error
from ._lib import DENOISE_FN as _DENOISE_FN
from ._lib import SamplerParams as _SamplerParams
from ._lib import Status, library
from ._model import Model
from ._sampler_running import SamplerRunning
from ._sampler_settings import SamplerSettings


class Sampler(Closing, SamplerSettings, SamplerRunning):
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
    only; for a latent model the image's size in pixels, and :attr:`shape` is the latents');
    scheduler_config: diffusers scheduler keys (dict, or a JSON string) over the model's
    (or, for a denoiser, over the scheduler's diffusers defaults).

    Text pipelines (Stable Diffusion): prompt, negative_prompt (str, None = ""), encoded by the
    first step and given to every image; clip_skip (None = 0): CLIP layers to skip for the
    prompt (not the negative prompt). :meth:`Model.sampler` adds lists of prompts, embeddings,
    img2img and inpainting on top, and 7.5 as the default guidance for text pipelines.

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
        prompt: str | None = None,
        negative_prompt: str | None = None,
        clip_skip: int | None = None,
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
            if prompt is not None or negative_prompt is not None or clip_skip is not None:
                raise TypeError("prompts need a model (a text pipeline); a denoiser does its own conditioning")
            dims = _shape("shape", shape)
            if len(dims) != 4:
                raise ValueError(f"shape must be (batch, channels, height, width), got {tuple(dims)}")
        elif shape is not None:
            raise TypeError("shape is for a denoiser; with a model give batch, height and width")
        elif not model.is_text_pipeline and (prompt is not None or negative_prompt is not None or clip_skip is not None):
            # (the library would ignore them: a model without a text encoder has no use for prompts)
            raise TypeError("prompt, negative_prompt and clip_skip need a text pipeline (Stable Diffusion)")

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
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if text is not None:
                if not isinstance(text, str):
                    raise TypeError(f"{name} must be a str or None, not {type(text).__name__} "
                                    "(Model.sampler takes lists of prompts)")
                setattr(params, name, _c_string(name, text))  # (ctypes keeps the bytes alive with params)
        if clip_skip is not None:
            params.clip_skip = _int("clip_skip", clip_skip, 0, _INT32_MAX)
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
            _check(lib.sampler_image_shape(self._handle, c_shape))
            self._image_shape = tuple(int(v) for v in c_shape)
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
        """(batch, channels, height, width) of the sample x_t (for a latent model, the latents)."""
        return self._shape

    @property
    def image_shape(self) -> tuple:
        """(batch, height, width, channels) of :meth:`images` (for a latent model the VAE's pixel
        size, not the latents')."""
        return self._image_shape

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
            out = np.empty(self._image_shape, dtype=np.uint8)
            _check(fn(h, out.ctypes.data_as(_u8p), out.size))
        return out

    def images(self) -> np.ndarray:
        """The finished run's images as uint8 pixels [N, H, W, C]: round(clamp(x/2 + 0.5, 0, 1) * 255)
        of the decoded sample (a latent model's decoded by its VAE). Before the last step:
        DiffusionError INVALID_STATE (see preview_images)."""
        return self._images(library().sampler_get_images)

    def preview_images(self) -> np.ndarray:
        """The current sample decoded like images(), at any point of the run."""
        return self._images(library().sampler_get_preview_images)
