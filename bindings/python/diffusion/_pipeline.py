"""Model.sampler: a generation assembled like diffusers' StableDiffusion*Pipeline.__call__ (prompts ->
text states, guidance, init image or mask -> a Sampler ready to run)."""

from __future__ import annotations

import numpy as np

from ._args import _INT32_MAX, _int
from ._model_latent import _prompt_list
from ._sampler import Sampler

# diffusers' StableDiffusionPipeline default guidance_scale
TEXT_GUIDANCE_SCALE = 7.5
# diffusers' default strength: StableDiffusionImg2ImgPipeline 0.8, StableDiffusionInpaintPipeline 1.0
IMG2IMG_STRENGTH = 0.8
INPAINT_STRENGTH = 1.0


def make_sampler(model, *, prompt, negative_prompt, clip_skip, prompt_embeds, negative_prompt_embeds, guidance_scale,
                 guidance_rescale, init_image, strength, mask, batch, **options) -> Sampler:
    # 1. Check inputs
    if prompt is not None and prompt_embeds is not None:
        raise TypeError("give prompt or prompt_embeds, not both")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise TypeError("give negative_prompt or negative_prompt_embeds, not both")
    if clip_skip is not None and prompt_embeds is not None:
        raise TypeError("clip_skip applies to the prompt's text; prompt_embeds are already encoded")
    if mask is not None and init_image is None:
        raise TypeError("mask needs init_image (the image to inpaint)")
    if strength is not None and init_image is None:
        raise TypeError("strength needs init_image (img2img or inpainting)")
    per_prompt = batch = 1 if batch is None else _int("batch", batch, 0, _INT32_MAX)
    if guidance_scale is None and model.is_text_pipeline:
        guidance_scale = TEXT_GUIDANCE_SCALE

    # 2. Text states: one prompt string is encoded by the library for every image; a list of prompts,
    #    or given embeddings, here: each prompt's states repeated per_prompt times (num_images_per_prompt).
    states = None
    if (isinstance(prompt, (list, tuple)) or isinstance(negative_prompt, (list, tuple)) or prompt_embeds is not None
            or negative_prompt_embeds is not None):
        if not model.is_text_pipeline:
            raise TypeError("prompts and prompt embeddings need a text pipeline (Stable Diffusion)")
        states = _text_states(model, prompt, negative_prompt, clip_skip, prompt_embeds, negative_prompt_embeds)
        batch = len(states[0]) * per_prompt
        prompt = negative_prompt = clip_skip = None

    # 3. The sampler: start noise, then conditioning, then the init image (whose draws come after)
    sampler = Sampler(model, guidance_scale=guidance_scale, batch=batch, prompt=prompt,
                      negative_prompt=negative_prompt, clip_skip=clip_skip, **options)
    try:
        if states is not None:
            cond, uncond = (None if s is None else np.repeat(s, per_prompt, axis=0) for s in states)
            sampler.set_prompt_embeddings(cond, uncond)
        if guidance_rescale:
            sampler.set_guidance_rescale(guidance_rescale)
        if mask is not None:
            sampler.set_mask(init_image, mask, INPAINT_STRENGTH if strength is None else strength)
        elif init_image is not None:
            sampler.set_init_image(init_image, IMG2IMG_STRENGTH if strength is None else strength)
    except BaseException:
        sampler.close()
        raise
    return sampler


def _text_states(model, prompt, negative_prompt, clip_skip, prompt_embeds, negative_prompt_embeds):
    """(cond [P, L, D], uncond [P, L, D] or None for the empty prompt's) of P prompts."""
    width = (model.context_length, model.context_width)
    if prompt_embeds is not None:
        cond = _states("prompt_embeds", prompt_embeds, width)
    else:
        cond = model.encode_prompt("" if prompt is None else prompt, clip_skip=clip_skip)
    uncond = None
    if negative_prompt_embeds is not None:
        uncond = _states("negative_prompt_embeds", negative_prompt_embeds, width)
    elif negative_prompt is not None:
        uncond = model.encode_prompt(_prompt_list("negative_prompt", negative_prompt))  # never clip_skip
    if uncond is not None:
        if len(uncond) == 1:
            uncond = np.repeat(uncond, len(cond), axis=0)
        elif len(cond) == 1:
            cond = np.repeat(cond, len(uncond), axis=0)
        if len(uncond) != len(cond):
            raise ValueError(f"{len(cond)} prompts but {len(uncond)} negative prompts (give one, or one per prompt)")
    return cond, uncond


def _states(name: str, value, width: tuple) -> np.ndarray:
    """float32 [P, L, D] from [P, L, D] or one [L, D]."""
    arr = np.asarray(value)
    if arr.shape == width:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != width or arr.shape[0] == 0:
        raise ValueError(f"{name} must have shape [P, {width[0]}, {width[1]}] or {width}, got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floating values (float32), not {arr.dtype}")
    return arr.astype(np.float32)
