"""The settings facet of Sampler: guidance, class labels, classifier guidance, init image, start noise,
text states and inpainting.

A mixin of :class:`diffusion.Sampler`, which provides ``_use``, ``_shape``, ``_image_shape``,
``_model``, ``_callback_errors``, ``_gradient``, ``_timesteps`` and ``_fetch_timesteps``.
"""

from __future__ import annotations

import math

import numpy as np

from . import _images
from ._args import _f32p, _float, _i32p, _labels, _u8p
from ._callbacks import _gradient_callback
from ._errors import _check
from ._lib import GRADIENT_FN as _GRADIENT_FN
from ._lib import library


class SamplerSettings:
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

        ``image``: uint8 pixels [N, H, W, C] of :attr:`image_shape` (as :meth:`images` gives them)
        or one [H, W, C] image for the whole batch, mapped to pixel / 255 * 2 - 1 (a latent model
        then VAE-encodes it, drawing its posterior sample first); RGBA drops alpha, grey is repeated
        for RGB; a PIL image (if PIL is installed) is converted to RGB. Or float latents x_0
        [N, C, H, W] of :attr:`shape` or one [C, H, W] (converted to float32). ``strength`` in
        (0, 1]: as diffusers' img2img pipelines, int(steps * strength) steps run (the tail of the
        schedule) and x_0 is noised to the level of the first of them with the sampler's start
        noise. :attr:`timesteps` then lists only the remaining steps. After a step: DiffusionError
        (ERROR_INVALID_STATE).
        """
        strength = _strength(strength)
        arr = _images.pixels("image", image, self._image_shape[3])
        n, c, hh, ww = self._shape
        lib = library()
        if arr.dtype == np.uint8:
            _, hh, ww, c = self._image_shape
            if arr.shape not in ((n, hh, ww, c), (hh, ww, c)):
                raise ValueError(f"image pixels must have shape {(n, hh, ww, c)} or {(hh, ww, c)}, got {arr.shape}")
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

    def set_guidance_rescale(self, rescale: float) -> None:
        """diffusers' guidance_rescale in [0, 1] (0 = off): the guided prediction is mixed with itself
        rescaled to the conditional prediction's standard deviation (per image). Text pipelines
        guide only with a guidance scale above 1."""
        rescale = _float("rescale", rescale)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_guidance_rescale(h, rescale))

    def set_prompt_embeddings(self, embeddings, negative_embeddings=None) -> None:
        """Text states instead of the prompts (text pipelines), before or between steps:
        ``embeddings`` float [batch, 77, D] (one prompt's states per image, e.g. from
        :meth:`Model.encode_prompt`) or one [77, D] for every image; ``negative_embeddings`` the
        same for the unconditional input, or None for the empty negative prompt's."""
        model = self._model
        if model is None:
            raise TypeError("prompt embeddings need a model (a text pipeline); a denoiser does its own conditioning")
        shape = (self._shape[0], model.context_length, model.context_width)
        cond = _states("embeddings", embeddings, shape)
        uncond = None if negative_embeddings is None else _states("negative_embeddings", negative_embeddings, shape)
        with self._use(mutating=True) as h:
            _check(library().sampler_set_prompt_embeddings(
                h, cond.ctypes.data_as(_f32p), None if uncond is None else uncond.ctypes.data_as(_f32p), cond.size))

    def set_mask(self, image, mask, strength: float = 1.0) -> None:
        """Inpainting (diffusers' StableDiffusionInpaintPipeline), before the first step.

        ``image``: the picture to repaint, as for :meth:`set_init_image` (uint8 [H, W, 3] or
        [N, H, W, 3] of :attr:`image_shape`, or a PIL image). ``mask``: uint8 [H, W] or [N, H, W],
        white = repaint (the library binarises at 128); [H, W, 3 or 4] or a PIL image are turned
        grey like PIL's convert("L"); bool (True = repaint). ``strength`` in (0, 1]: 1 (the
        default) starts from noise. A 9-channel inpainting UNet gets the mask and the masked image's
        latents; a 4-channel UNet keeps the unmasked region after each step.
        """
        strength = _strength(strength)
        n, hh, ww, c = self._image_shape
        pixels = _images.pixels("image", image, c)
        if pixels.dtype != np.uint8 or pixels.shape not in ((n, hh, ww, c), (hh, ww, c)):
            raise ValueError(f"image must be uint8 pixels {(hh, ww, c)} or {(n, hh, ww, c)}, got {pixels.dtype} "
                             f"{pixels.shape}")
        pixels = np.ascontiguousarray(pixels)
        planes = _images.mask_planes(mask, hh, ww)
        if planes.ndim == 3 and planes.shape[0] not in (1, n):
            raise ValueError(f"mask has {planes.shape[0]} planes, expected 1 or the batch ({n})")
        with self._use(mutating=True) as h:
            _check(library().sampler_set_mask(h, pixels.ctypes.data_as(_u8p), pixels.size,
                                              planes.ctypes.data_as(_u8p), planes.size, strength))
            self._timesteps = self._fetch_timesteps(h)


def _strength(value) -> float:
    strength = _float("strength", value)
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise ValueError(f"strength is {strength}, must be in (0, 1]")
    return strength


def _states(name: str, value, shape: tuple) -> np.ndarray:
    """float32 text states of `shape` [batch, tokens, width], from that shape or one [tokens, width]."""
    arr = np.asarray(value)
    if arr.shape == shape[1:]:
        arr = np.broadcast_to(arr, shape)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} or {shape[1:]}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floating values (float32), not {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)
