"""The text and latent facet of Model (Stable Diffusion pipelines): tokenizer, text encoder, VAE.

A mixin of :class:`diffusion.Model`, which provides ``_use`` and ``_info``. On a model without a
text encoder or VAE the library refuses these calls (DiffusionError ERROR_UNSUPPORTED).
"""

from __future__ import annotations

import ctypes

import numpy as np

from ._args import _INT32_MAX, _c_string, _f32p, _i32p, _int
from ._errors import _check
from ._lib import library


def _prompt_list(name: str, prompts) -> list:
    """A str or a non-empty list / tuple of str as a list of str."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts):
        return list(prompts)
    raise TypeError(f"{name} must be a str or a non-empty list of str, not {type(prompts).__name__}")


def _image_batch(name: str, value, channels: int) -> np.ndarray:
    """float32 [N, channels, H, W], contiguous."""
    arr = np.asarray(value)
    if arr.ndim != 4 or arr.shape[1] != channels:
        raise ValueError(f"{name} must be [N, {channels}, H, W], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers (float32), not {arr.dtype}")
    for axis, v in zip(("batch", "height", "width"), (arr.shape[0], arr.shape[2], arr.shape[3])):
        _int(f"{name} {axis}", v, 0, _INT32_MAX)
    return np.ascontiguousarray(arr, dtype=np.float32)


class LatentFacet:
    def tokenize(self, prompts) -> np.ndarray:
        """The CLIP token ids of a prompt (str) or of each prompt of a list, int64 [N, 77]: start
        token, the text's tokens, end token, then the tokenizer's pad token, truncated to 77
        (what ``tokenizer(prompts, padding="max_length", truncation=True).input_ids`` gives)."""
        texts = [_c_string("prompt", p) for p in _prompt_list("prompts", prompts)]
        lib = library()
        rows = []
        with self._use() as handle:
            for text in texts:
                count = ctypes.c_size_t()
                _check(lib.model_tokenize(handle, text, None, 0, ctypes.byref(count)))
                ids = np.empty(count.value, dtype=np.int32)
                _check(lib.model_tokenize(handle, text, ids.ctypes.data_as(_i32p), ids.size, ctypes.byref(count)))
                rows.append(ids[: count.value])
        return np.stack(rows).astype(np.int64)

    def encode_prompt(self, prompts, *, clip_skip: int | None = None) -> np.ndarray:
        """The text encoder's states of a prompt (str) or of each prompt of a list, float32
        [N, 77, D] (diffusers' ``encode_prompt``; D = :attr:`context_width`). ``clip_skip``: CLIP
        layers to skip (None or 0 = none; 1 = the second-to-last layer's output, through the final
        LayerNorm), as diffusers' clip_skip."""
        texts = [_c_string("prompt", p) for p in _prompt_list("prompts", prompts)]
        skip = 0 if clip_skip is None else _int("clip_skip", clip_skip, 0, _INT32_MAX)
        out = np.empty((len(texts), self._info["context_length"], self._info["context_width"]), dtype=np.float32)
        lib = library()
        with self._use() as handle:
            for i, text in enumerate(texts):
                _check(lib.model_encode_prompt(handle, text, skip, out[i].ctypes.data_as(_f32p), out[i].size))
        return out

    def encode(self, images, *, seed: int | None = None) -> np.ndarray:
        """VAE-encodes images float32 [N, 3, H, W] with values in [-1, 1] (H, W multiples of
        :attr:`vae_scale_factor`) to latents [N, latent_channels, H / f, W / f], multiplied by the
        VAE's scaling_factor (what the samplers work on). ``seed`` None gives the posterior's mean;
        a seed draws a sample with ``torch.Generator().manual_seed(seed)`` as diffusers'
        ``latent_dist.sample(generator)``."""
        x = _image_batch("images", images, 3)
        n, _, h, w = x.shape
        f = max(self._info["vae_scale_factor"], 1)
        seed_p = None
        if seed is not None:
            seed_value = ctypes.c_uint64(_int("seed", seed, 0, 2**64 - 1))
            seed_p = ctypes.pointer(seed_value)
        # (sizes that are not multiples of f: the library refuses them, with its message)
        out = np.empty((n, self._info["latent_channels"], h // f, w // f), dtype=np.float32)
        with self._use() as handle:
            _check(library().model_vae_encode(handle, x.ctypes.data_as(_f32p), n, h, w, seed_p,
                                              out.ctypes.data_as(_f32p), out.size))
        return out

    def decode(self, latents) -> np.ndarray:
        """VAE-decodes latents [N, latent_channels, h, w] (as the samplers give them: scaled by the
        VAE's scaling_factor) to images float32 [N, 3, h * f, w * f]: the decoder's raw output for
        latents / scaling_factor, not clamped (pixels are x / 2 + 0.5 in [0, 1])."""
        z = _image_batch("latents", latents, self._info["latent_channels"])
        n, _, h, w = z.shape
        f = max(self._info["vae_scale_factor"], 1)
        out = np.empty((n, 3, h * f, w * f), dtype=np.float32)
        with self._use() as handle:
            _check(library().model_vae_decode(handle, z.ctypes.data_as(_f32p), n, h, w,
                                              out.ctypes.data_as(_f32p), out.size))
        return out
