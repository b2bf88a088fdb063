"""Model: a loaded network (a diffusers model or pipeline folder, Stable Diffusion included)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading

import numpy as np

from ._args import _INT32_MAX, _c_string, _f32p, _i32p, _int, _labels, _new_params
from ._closing import Closing
from ._errors import DiffusionError, _check
from ._lib import ModelInfo as _ModelInfo
from ._lib import ModelParams as _ModelParams
from ._lib import PredictParams as _PredictParams
from ._lib import Status, library
from ._model_latent import LatentFacet

# The info fields, in diffusion_model_info's order.
# diffusion_precision values, by index.
_PRECISIONS = ("f32", "bf16")
_INFO_FIELDS = ("in_channels", "out_channels", "sample_size", "num_class_embeds", "sample_width", "null_class_label",
                "latent_channels", "vae_scale_factor", "context_length", "context_width")


class Model(Closing, LatentFacet):
    """A loaded model: a UNet2DModel (+ scheduler config), or a Stable Diffusion 1.x / 2.x pipeline
    folder (text encoder, tokenizer, UNet2DConditionModel, VAE, scheduler). Immutable; safe to share
    between threads.

    ``threads``: threads used by this model's network evaluations (None or 0 = the CPUs this process may run on).
    ``prefer_fp16``: read the fp16 variant weight files (``*.fp16.safetensors``) when both exist;
    by default the plain files, falling back to the fp16 variant when only it exists.
    ``memory_limit``: bytes the model may plan for (None or 0 = physical memory, lowered by rlimits
    and the cgroup's memory.max);
    loading, sampling, predicting, encoding or decoding whose weights plus estimated working memory
    exceed it raises a ``DiffusionError`` with status ``ERROR_OUT_OF_MEMORY`` and the numbers.
    ``precision``: "f32" (default: float32, within 1e-4 of diffusers) or "bf16" (the fast mode:
    the UNet's and VAE's convolutions and linear layers in bfloat16 with float32 sums, about 2e-2
    relative error per evaluation; on a CPU without AVX512-BF16 it is emulated, giving the same
    bytes more slowly: ``info["precision_native"]`` tells).
    ``config_from``: when ``path`` is a single-file checkpoint (``.safetensors`` in the original
    SD 1.x / 2.x layout), the diffusers pipeline folder giving its configs, tokenizer and scheduler
    (weight files in it are not read).
    ``vae``: a standalone VAE file (original layout, as ``vae-ft-mse-840000-ema-pruned.safetensors``)
    whose weights replace a Stable Diffusion pipeline's VAE.
    """

    def __init__(self, path, threads: int | None = None, *, prefer_fp16: bool = False,
                 memory_limit: int | None = None, precision: str = "f32", config_from=None, vae=None):
        self._handle = None  # set first, so __del__ works whatever happens below
        self._lock = threading.Lock()
        self._users = 0  # in-flight predictions + open samplers
        self._closed = False
        self.path = os.fspath(path)
        threads = 0 if threads is None else _int("threads", threads, 0, _INT32_MAX)
        lib = library()
        params = _new_params(_ModelParams, lib.model_params_init)
        params.n_threads = threads
        params.prefer_fp16 = bool(prefer_fp16)
        params.memory_limit = 0 if memory_limit is None else _int("memory_limit", memory_limit, 0, 2**64 - 1)
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, _PRECISIONS))}, got {precision!r}")
        params.precision = _PRECISIONS.index(precision)
        config_from_c = None if config_from is None else _c_string("config_from", os.fspath(config_from))
        params.config_from = config_from_c
        vae_c = None if vae is None else _c_string("vae", os.fspath(vae))
        params.vae = vae_c
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
            self._info = {name: int(getattr(info, name)) for name in _INFO_FIELDS}
            self._info["precision"] = _PRECISIONS[info.precision] if 0 <= info.precision < len(_PRECISIONS) else "unknown"
            self._info["precision_native"] = bool(info.precision_native)
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

    @contextlib.contextmanager
    def _use(self):
        """The C handle, counted as in use (the model cannot be freed) until the block ends."""
        handle = self._acquire()
        try:
            yield handle
        finally:
            self._release()

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

    def __repr__(self):
        state = "closed" if self._closed else f"in_channels={self.in_channels}, sample_size={self.sample_size}"
        return f"<diffusion.Model {self.path!r} {state}>"

    # -- info --

    @property
    def info(self) -> dict:
        """{"in_channels", "out_channels", "sample_size" (default height), "sample_width" (default
        width), "num_class_embeds" (0 = not class-conditional), "null_class_label" (the class
        used as the unconditional input for guidance; -1 = none), "latent_channels" (channels of
        x_t; an inpainting UNet's in_channels add 5), "vae_scale_factor" (pixels per latent; 1 = a
        pixel-space model), "context_length" (text tokens per prompt, 77; 0 = no text conditioning),
        "context_width" (width of a token's text state: SD1 768, SD2 1024), "precision" ("f32" or
        "bf16"), "precision_native" (False when this CPU emulates the bf16 instruction)}. For a
        latent model sample_size and sample_width are in pixels."""
        return dict(self._info)

    in_channels = property(lambda self: self._info["in_channels"])
    out_channels = property(lambda self: self._info["out_channels"])
    sample_size = property(lambda self: self._info["sample_size"])
    num_class_embeds = property(lambda self: self._info["num_class_embeds"])
    sample_width = property(lambda self: self._info["sample_width"])
    null_class_label = property(lambda self: self._info["null_class_label"])
    latent_channels = property(lambda self: self._info["latent_channels"])
    vae_scale_factor = property(lambda self: self._info["vae_scale_factor"])
    context_length = property(lambda self: self._info["context_length"])
    context_width = property(lambda self: self._info["context_width"])
    precision = property(lambda self: self._info["precision"])

    @property
    def is_text_pipeline(self) -> bool:
        """True for a text-to-image pipeline (Stable Diffusion): prompts condition it."""
        return self._info["context_length"] > 0

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

    def predict(self, x, t, class_labels=None, *, context=None) -> np.ndarray:
        """One network evaluation.

        x: float32 [N, in_channels, H, W] (converted and made contiguous as needed; an inpainting
        UNet's x_t, mask and masked-image latents concatenated, as diffusers' UNet takes them);
        t: a scalar (used for every image) or N values; class_labels: None, an int, or N ints;
        context: text states [N, tokens, width] or one [tokens, width] for every image (e.g. from
        :meth:`encode_prompt`), for a text pipeline's UNet. Returns float32 [N, out_channels, H, W].
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
        params = _new_params(_PredictParams, library().predict_params_init)
        params.x, params.batch, params.channels, params.height, params.width = x.ctypes.data_as(_f32p), n, c, h, w
        params.timesteps = ts.ctypes.data_as(_f32p)
        if class_labels is not None:
            labels = _labels("class_labels", class_labels)
            if labels.size == 1:
                labels = np.full(n, labels[0], dtype=np.int32)
            elif labels.size != n:
                raise ValueError(f"class_labels must be one label or {n}, got {labels.size}")
            params.class_labels = labels.ctypes.data_as(_i32p)
        if context is not None:
            states = np.asarray(context)
            if states.ndim == 2:
                states = np.broadcast_to(states, (n, *states.shape))
            if states.ndim != 3 or states.shape[0] != n:
                raise ValueError(f"context must be [{n}, tokens, width] or [tokens, width], got shape {states.shape}")
            states = np.ascontiguousarray(states, dtype=np.float32)
            params.context = states.ctypes.data_as(_f32p)
            params.context_tokens = _int("context tokens", states.shape[1], 0, _INT32_MAX)
            params.context_width = _int("context width", states.shape[2], 0, _INT32_MAX)
        out = np.empty((n, self.out_channels, h, w), dtype=np.float32)
        params.out, params.out_count = out.ctypes.data_as(_f32p), out.size
        with self._use() as handle:
            _check(library().model_predict_ex(handle, ctypes.byref(params)))
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
        *,
        prompt=None,
        negative_prompt=None,
        clip_skip: int | None = None,
        prompt_embeds=None,
        negative_prompt_embeds=None,
        guidance_rescale: float = 0.0,
        init_image=None,
        strength: float | None = None,
        mask=None,
    ) -> "Sampler":
        """A new :class:`Sampler`, ready to run; it draws its start noise x_T now.

        The first options are :class:`Sampler`'s. ``guidance_scale`` None means 7.5 for a text
        pipeline (diffusers' default), no guidance otherwise; ``height`` / ``width`` None = the
        model's sample size (pixels; for a text pipeline multiples of :attr:`vae_scale_factor`).

        Text pipelines (Stable Diffusion), as diffusers' ``StableDiffusionPipeline.__call__``:
        ``prompt``: a str, or a list of str (one generation per prompt); ``batch`` is the number of
        images per prompt (diffusers' num_images_per_prompt: each prompt's images are consecutive,
        ``len(prompt) * batch`` in all). ``negative_prompt``: a str for every prompt, or a list of
        one per prompt (None = ""). ``clip_skip``: CLIP layers to skip for the prompt (never for the
        negative prompt). ``prompt_embeds`` / ``negative_prompt_embeds``: text states [P, 77, D]
        (or one [77, D]) instead of prompt / negative_prompt (e.g. from :meth:`encode_prompt`),
        repeated ``batch`` times like prompts. ``guidance_rescale`` in [0, 1]: diffusers'
        guidance_rescale (only with guidance_scale > 1, like every guidance of a text pipeline).

        ``init_image``: uint8 RGB pixels [H, W, 3] (or [N, H, W, 3]) or a PIL image (PIL is used
        if it is installed; it is not required). Alone it is img2img: ``strength`` (default 0.8)
        says how much of the schedule runs. With ``mask`` it is inpainting: ``mask`` uint8 [H, W]
        (white = repaint, binarised at 128), or [H, W, 3] / a PIL image turned grey like PIL's
        convert("L"), or bool (True = repaint); ``strength`` defaults to 1.0 (start from noise),
        as diffusers' inpaint pipeline. A 9-channel inpainting UNet is given the mask and the
        masked image; a 4-channel UNet keeps the unmasked part after every step.
        """
        from ._pipeline import make_sampler  # (imported here: it imports _sampler, which imports this module)

        return make_sampler(
            self, scheduler=scheduler, steps=steps, seed=seed, guidance_scale=guidance_scale, eta=eta,
            class_label=class_label, batch=batch, height=height, width=width, scheduler_config=scheduler_config,
            prompt=prompt, negative_prompt=negative_prompt, clip_skip=clip_skip, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, guidance_rescale=guidance_rescale, init_image=init_image,
            strength=strength, mask=mask,
        )

    def generate(self, prompt=None, *, progress=None, **options) -> np.ndarray:
        """Runs a whole generation and returns its images, uint8 [N, H, W, 3] (decoded):
        ``model.sampler(prompt=prompt, **options)``, run (``progress`` as for :meth:`Sampler.run`),
        then :meth:`Sampler.images`. Takes every keyword option of :meth:`sampler`."""
        with self.sampler(prompt=prompt, **options) as s:
            s.run(progress)
            return s.images()
