#!/usr/bin/env python3
"""Write tiny random Stable Diffusion pipelines and diffusers/transformers reference outputs for them.

Usage (see tools/README.md):  .venv/bin/python tools/make_sd_fixtures.py [--out Tests/Fixtures/sd]

Writes (and replaces) the output folder; Tests/Fixtures/sd/README.md describes every file:
  sd1/           SD1-style pipeline folder (StableDiffusionPipeline.save_pretrained, safetensors, then adjusted:
                 hand-written tokenizer files with vocab.json/merges.txt as relative symlinks to ../../../clip_vocab,
                 SD1.5's scheduler_config.json, F16 text encoder and UNet weights, F32 VAE)
  sd2/           SD2.1-style (v-prediction DDIM, linear-projection / upcast attention, per-block head counts,
                 tokenizer pads with "!")
  sd1_inpaint/   9-channel inpainting UNet; text_encoder/, tokenizer/, vae/ are symlinks to ../sd1/
  sd1_legacy/    sd1 as downloaded in 2022: fp16-variant files only, diffusers-0.6 / transformers-4.22 configs,
                 safety_checker/ + feature_extractor/ folders, old VAE attention names (query/key/value/proj_attn),
                 text encoder keys with transformers 4.x's `text_model.` prefix (transformers 5 writes none)
  refs/<pipeline>/text.safetensors|.json   tokenizer ids and encode_prompt outputs (clip_skip none / 1 / 2)
  refs/<pipeline>/unet.safetensors          UNet forward at integer and fractional timesteps
  refs/<pipeline>/vae.safetensors           VAE encode (mean, logvar, seeded posterior sample) and decode
  refs/<pipeline>/runs/<case>.json|.safetensors   seeded end-to-end pipeline calls (txt2img, img2img, inpaint)

Every reference is computed from the pipeline LOADED back from its folder (float32), so the stored (rounded) weights
are exactly what produced it. Runs keep only seeds whose final latents move by < 1e-4 when the prompt embeddings are
perturbed by 1e-6 (DESIGN.md section 6). Everything is seeded and single-threaded; a rerun rewrites byte-identical
files (on one machine: torch's CPU kernels can differ in the last bits between CPUs).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as transformers_logging

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()

REPO = Path(__file__).resolve().parent.parent
VOCAB_DIR = REPO / "Tests" / "Fixtures" / "clip_vocab"

# ----------------------------------------------------------------------------------------------
# small helpers (same conventions as tools/make_fixtures.py)


def jsonable(v):
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return v if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, np.integer):
        return int(v)
    return v


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def clean_config(config) -> dict:
    """dict(config) without diffusers' bookkeeping key `_use_default_values` (a set: unordered)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if k != "_use_default_values"}


def save_tensors(path: Path, tensors: dict) -> None:
    for k, v in tensors.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), (path, k)
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def symlink(link: Path, target: str) -> None:
    """A RELATIVE symlink link -> target (target relative to link's folder); checks that it resolves."""
    if link.is_symlink() or link.exists():
        if link.is_dir() and not link.is_symlink():
            shutil.rmtree(link)
        else:
            link.unlink()
    os.symlink(target, link)
    assert link.resolve().exists(), (link, target)


def check_nontrivial(name: str, t: torch.Tensor) -> None:
    t = t.float()
    assert torch.isfinite(t).all(), name
    assert t.abs().max() > 1e-3, (name, float(t.abs().max()))
    assert t.std() > 1e-4, (name, float(t.std()))


# ----------------------------------------------------------------------------------------------
# random weights


def reinit_(model: torch.nn.Module, seed: int, out_gain: dict | None = None, embed_std: float = 0.5) -> None:
    """Give every parameter a non-trivial random value (no identity norm, no zero conv_out).

    conv / linear weights ~ N(0, gain^2/fan_in) (gain 1 except the modules named in out_gain); biases ~ N(0, 0.1^2);
    GroupNorm / LayerNorm scale ~ 1 + N(0, 0.25^2), shift ~ N(0, 0.2^2); embeddings ~ N(0, embed_std^2).
    Modules are visited in named_modules() order with one generator, so the weights depend only on the seed.
    """
    out_gain = out_gain or {}
    gen = torch.Generator().manual_seed(seed)
    done = set()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = out_gain.get(name, 1.0)
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (gain / math.sqrt(fan_in)))
                done.add(id(m.weight))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                    done.add(id(m.bias))
            elif isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.copy_(1.0 + 0.25 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                done.update((id(m.weight), id(m.bias)))
            elif isinstance(m, torch.nn.Embedding):
                m.weight.copy_(embed_std * torch.randn(m.weight.shape, generator=gen))
                done.add(id(m.weight))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters not re-initialised: {missed}"


# ----------------------------------------------------------------------------------------------
# configurations

SD1_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    attention_head_dim=8,  # UNet2DConditionModel reads an int as the number of HEADS (8 heads of 4 / of 8 channels)
    cross_attention_dim=32,
    norm_num_groups=8,
)
SD2_UNET = dict(
    SD1_UNET,
    attention_head_dim=[2, 4, 4],  # heads per block (mid block: the last entry), as SD2's [5, 10, 20, 20]
    use_linear_projection=True,
    upcast_attention=True,
    cross_attention_dim=48,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=64,
    scaling_factor=0.18215,
)
SD1_TEXT = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=37,  # odd on purpose
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=32,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
SD2_TEXT = dict(SD1_TEXT, hidden_size=48, intermediate_size=64, hidden_act="gelu", projection_dim=48, pad_token_id=0)

# stable-diffusion-v1-5/stable-diffusion-v1-5 scheduler/scheduler_config.json (the key set of the real file: no
# timestep_spacing / prediction_type, so a scheduler swapped in with from_config gets ITS OWN defaults for those)
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

# stabilityai/stable-diffusion-2-1 scheduler/scheduler_config.json (skip_prk_steps is a PNDM leftover DDIM ignores)
SD21_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
# DDIM with the SD1 settings (as the SD1 inpainting repos ship it)
SD1_DDIM_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "trained_betas": None,
}
# CompVis/stable-diffusion-v1-4's scheduler_config.json as first published (diffusers 0.2.2): no steps_offset,
# no set_alpha_to_one (PNDM's default false). StableDiffusionPipeline.__init__ rewrites steps_offset to 1
# (deprecation "steps_offset!=1"), so the effective schedule equals sd1's.
LEGACY_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.2.2",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "skip_prk_steps": True,
}
# the keys diffusers 0.6 wrote for UNet2DConditionModel / AutoencoderKL (every other key takes today's default)
LEGACY_UNET_KEYS = ["act_fn", "attention_head_dim", "block_out_channels", "center_input_sample",
                    "cross_attention_dim", "down_block_types", "downsample_padding", "flip_sin_to_cos", "freq_shift",
                    "in_channels", "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups",
                    "out_channels", "sample_size", "up_block_types"]
LEGACY_VAE_KEYS = ["act_fn", "block_out_channels", "down_block_types", "in_channels", "latent_channels",
                   "layers_per_block", "norm_num_groups", "out_channels", "sample_size", "up_block_types"]
LEGACY_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": [None, None],
    "requires_safety_checker": True,
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
# CompVis/stable-diffusion-safety-checker's config, shortened (no weights are shipped here)
LEGACY_SAFETY_CHECKER = {
    "_name_or_path": "CompVis/stable-diffusion-safety-checker",
    "architectures": ["StableDiffusionSafetyChecker"],
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "clip",
    "projection_dim": 768,
    "text_config": {"model_type": "clip_text_model", "hidden_size": 768, "intermediate_size": 3072,
                    "num_attention_heads": 12, "num_hidden_layers": 12},
    "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                         "num_hidden_layers": 12},
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 1024, "image_size": 224,
                      "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
                      "patch_size": 14},
    "vision_config_dict": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                           "num_hidden_layers": 24, "patch_size": 14},
}
LEGACY_FEATURE_EXTRACTOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def legacy_text_config(config: dict) -> dict:
    """text_encoder/config.json as transformers 4.22 wrote it for SD1 (openai/clip-vit-large-patch14's keys)."""
    return {
        "_name_or_path": "openai/clip-vit-large-patch14",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": config["hidden_act"],
        "hidden_size": config["hidden_size"],
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": config["intermediate_size"],
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": config["max_position_embeddings"],
        "model_type": "clip_text_model",
        "num_attention_heads": config["num_attention_heads"],
        "num_hidden_layers": config["num_hidden_layers"],
        "pad_token_id": 1,
        "projection_dim": config["projection_dim"],
        "torch_dtype": "float32",
        "transformers_version": "4.22.0.dev0",
        "vocab_size": config["vocab_size"],
    }


# Tokenizer files. sd1 / sd2: the form transformers 4.3x writes (plain strings + added_tokens_decoder);
# sd1_legacy: openai/clip-vit-large-patch14's original files ({"__type": "AddedToken", ...} objects).


def added_token(content: str, legacy: bool) -> dict:
    d = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **d} if legacy else {**d, "special": True}


def tokenizer_files(pad: str, legacy: bool, name_or_path: str) -> tuple:
    if legacy:
        config = {
            "add_prefix_space": False,
            "bos_token": added_token("<|startoftext|>", True),
            "do_lower_case": True,
            "eos_token": added_token("<|endoftext|>", True),
            "errors": "replace",
            "model_max_length": 77,
            "name_or_path": name_or_path,
            "pad_token": pad,
            "special_tokens_map_file": "./special_tokens_map.json",
            "tokenizer_class": "CLIPTokenizer",
            "unk_token": added_token("<|endoftext|>", True),
        }
        tok = {k: v for k, v in added_token("", False).items() if k != "special"}
        special = {
            "bos_token": {**tok, "content": "<|startoftext|>"},
            "eos_token": {**tok, "content": "<|endoftext|>"},
            "pad_token": pad,
            "unk_token": {**tok, "content": "<|endoftext|>"},
        }
        return config, special
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            "49406": added_token("<|startoftext|>", False),
            "49407": added_token("<|endoftext|>", False),
        },
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    special = {
        "bos_token": {k: v for k, v in added_token("<|startoftext|>", False).items() if k != "special"},
        "eos_token": {k: v for k, v in added_token("<|endoftext|>", False).items() if k != "special"},
        "pad_token": pad,
        "unk_token": {k: v for k, v in added_token("<|endoftext|>", False).items() if k != "special"},
    }
    return config, special


def write_tokenizer(folder: Path, pad: str, legacy: bool, name_or_path: str) -> None:
    """Replace whatever save_pretrained wrote by the hand-written files + symlinks to the shared vocabulary."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in ("vocab.json", "merges.txt"):
        symlink(folder / f, os.path.relpath(VOCAB_DIR / f, folder))
    config, special = tokenizer_files(pad, legacy, name_or_path)
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", special)
    assert not (folder / "tokenizer.json").exists()
    # transformers reads it back with the expected special tokens and padding
    tok = CLIPTokenizer.from_pretrained(folder)
    pad_id = tok.convert_tokens_to_ids(pad)
    ids = tok("a photo of a cat", padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    assert tok.model_max_length == 77 and len(ids) == 77, (folder, tok.model_max_length)
    assert ids[0] == 49406 and ids[6] == 49407 and all(i == pad_id for i in ids[7:]), (folder, ids)
    assert tok.pad_token == pad and tok.bos_token_id == 49406 and tok.eos_token_id == 49407, folder
    assert not (folder / "tokenizer.json").exists()


# ----------------------------------------------------------------------------------------------
# component builders (each seeded on its own, so adding a pipeline never changes another one's weights)


def build_unet(config: dict, seed: int) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config)
    reinit_(unet, seed, out_gain={"conv_out": 0.5})
    return unet.eval()


def build_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE)
    reinit_(vae, seed)
    return vae.eval()


def build_text_encoder(config: dict, seed: int) -> CLIPTextModel:
    torch.manual_seed(seed)
    te = CLIPTextModel(CLIPTextConfig(**config))
    reinit_(te, seed)
    return te.eval()


def round_(model, dtype):
    """The model with its weights rounded through dtype and back to float32 (what a reload gives)."""
    return model.to(dtype).to(torch.float32)


def save_pipeline(folder: Path, pipe, weights_dtype: dict, scheduler_config: dict, pad: str) -> None:
    """save_pretrained (safetensors), components in the given dtypes; then the hand-written adjustments."""
    if folder.exists():
        shutil.rmtree(folder)
    for name, dtype in weights_dtype.items():
        getattr(pipe, name).to(dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    for name in weights_dtype:
        getattr(pipe, name).to(torch.float32)
    write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config)
    write_tokenizer(folder / "tokenizer", pad, legacy=False, name_or_path="openai/clip-vit-large-patch14")


def load_pipeline(folder: Path, cls=StableDiffusionPipeline, **kw):
    pipe = cls.from_pretrained(folder, dtype=torch.float32, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ----------------------------------------------------------------------------------------------
# component references

PROMPTS = [
    "a photo of a cat",
    "",
    "An astronaut riding a horse, 4k, highly detailed",
    "blurry, low quality",
    # ~100 words: truncated to 75 tokens + <|startoftext|> + <|endoftext|>
    "A breathtaking panoramic view of an ancient mountain village at golden hour, with narrow cobblestone "
    "streets winding between weathered stone houses, their terracotta roofs glowing warmly in the fading "
    "sunlight, while wisps of smoke rise lazily from crooked chimneys into a sky streaked with pink, orange "
    "and violet clouds; in the foreground an old fisherman repairs his nets beside a crystal-clear river, "
    "children chase a scruffy dog across a wooden bridge, and laundry flutters on lines strung between "
    "balconies overflowing with red geraniums, all rendered in the meticulous style of a nineteenth-century "
    "romantic oil painting, ultra detailed, dramatic lighting, 8k resolution, trending on artstation",
]


@torch.no_grad()
def text_refs(pipe, out: Path) -> dict:
    tok = pipe.tokenizer
    ids = tok(PROMPTS, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    tensors = {"ids": ids.to(torch.int64)}
    te = pipe.text_encoder
    tensors["embeds"] = torch.cat([pipe.encode_prompt(p, "cpu", 1, False)[0] for p in PROMPTS])
    # clip_skip: diffusers 0.42.1's encode_prompt(clip_skip=k) runs
    #   hidden = text_encoder(ids, output_hidden_states=True)[-1][-(k + 1)]
    #   text_encoder.text_model.final_layer_norm(hidden)
    # but transformers 5 flattened CLIPTextModel (no .text_model), so that line raises AttributeError. The same
    # computation with the module where it now lives:
    skips = {1: [], 2: []}
    for i in range(len(PROMPTS)):  # one prompt at a time, as encode_prompt runs them
        row = ids[i : i + 1]
        res = te(row, output_hidden_states=True)
        hs = res.hidden_states
        assert len(hs) == te.config.num_hidden_layers + 1
        assert torch.equal(hs[0], te.embeddings(input_ids=row))
        assert torch.equal(te.final_layer_norm(hs[-1]), res.last_hidden_state)
        assert torch.equal(res.last_hidden_state, tensors["embeds"][i : i + 1])
        for k in (1, 2):
            skips[k].append(te.final_layer_norm(res[-1][-(k + 1)]))
    try:
        pipe.encode_prompt(PROMPTS[0], "cpu", 1, False, clip_skip=1)
        raise AssertionError("encode_prompt(clip_skip=1) works again: use it instead of the rederivation")
    except AttributeError:
        pass
    for k in (1, 2):
        tensors[f"embeds_clip_skip_{k}"] = torch.cat(skips[k])
    for key in ("embeds", "embeds_clip_skip_1", "embeds_clip_skip_2"):
        check_nontrivial(key, tensors[key])
    # the tokenizer output that encode_prompt used is the ids above; the embeddings differ per clip_skip
    assert not torch.equal(tensors["embeds"], tensors["embeds_clip_skip_1"])
    assert not torch.equal(tensors["embeds_clip_skip_1"], tensors["embeds_clip_skip_2"])
    untruncated = [len(tok(p).input_ids) for p in PROMPTS]
    assert max(untruncated) > 77, untruncated
    save_tensors(out / "text.safetensors", tensors)
    write_json(out / "text.json", {
        "prompts": PROMPTS,
        "untruncated_token_counts": untruncated,
        "pad_token_id": tok.pad_token_id,
        "hidden_size": pipe.text_encoder.config.hidden_size,
        "notes": (
            "ids = tokenizer(prompts, padding='max_length', max_length=77, truncation=True).input_ids (int64 [P,77]); "
            "embeds[p] = pipe.encode_prompt(prompts[p], 'cpu', 1, False)[0] (clip_skip None: the text encoder's "
            "last_hidden_state = final_layer_norm(output of the last layer)); embeds_clip_skip_k = diffusers' "
            "clip_skip=k: final_layer_norm(hidden_states[-(k+1)]) (hidden_states[0] = token+position embeddings, "
            "hidden_states[i] = output of layer i), i.e. the output after num_hidden_layers-k layers, THEN the "
            "final LayerNorm. diffusers applies clip_skip to the prompt only, never to the negative prompt. "
            "(With transformers 5 diffusers' own clip_skip path raises AttributeError - it looks for "
            "text_encoder.text_model.final_layer_norm - so these two were computed by the same lines with "
            "text_encoder.final_layer_norm.)"
        ),
    })
    return {"max|embeds|": float(tensors["embeds"].abs().max())}


@torch.no_grad()
def unet_refs(unet, out: Path, seed: int, context_dim: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    cin = unet.config.in_channels
    x = torch.randn((2, cin, 8, 8), generator=g)
    context = torch.randn((2, 77, context_dim), generator=g) * 0.5
    x_frac = torch.randn((2, cin, 8, 8), generator=g)
    t = torch.tensor([981.0, 1.0], dtype=torch.float32)
    t_frac = torch.tensor([500.5, 37.25], dtype=torch.float32)
    y = unet(x, t, encoder_hidden_states=context).sample
    y_frac = unet(x_frac, t_frac, encoder_hidden_states=context).sample
    check_nontrivial("unet out", y)
    check_nontrivial("unet out_frac", y_frac)
    # the fractional timestep really reaches the embedding (it is not rounded)
    assert not torch.equal(y_frac, unet(x_frac, t_frac.round(), encoder_hidden_states=context).sample)
    save_tensors(out / "unet.safetensors", {"x": x, "t": t, "context": context, "out": y,
                                            "x_frac": x_frac, "t_frac": t_frac, "out_frac": y_frac})
    return {"max|out|": float(y.abs().max()), "max|out_frac|": float(y_frac.abs().max())}


def smooth_image() -> torch.Tensor:
    """[1,3,64,64] smooth pattern in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(64, dtype=torch.float64), torch.arange(64, dtype=torch.float64),
                            indexing="ij")
    u, v = xx / 63, yy / 63
    r = torch.sin(2 * math.pi * (u + 0.3 * v))
    gch = torch.cos(math.pi * (2 * v - u)) * 0.9
    b = torch.tanh(3 * (u - 0.5)) * torch.cos(2 * math.pi * v)
    return torch.stack([r, gch, b]).unsqueeze(0).to(torch.float32).clamp(-1, 1)


@torch.no_grad()
def vae_refs(vae, out: Path, seed: int) -> dict:
    image = smooth_image()
    dist = vae.encode(image).latent_dist
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(seed))
    decoded = vae.decode(z).sample
    sample_seed = seed + 1
    sampled = dist.sample(generator=torch.Generator().manual_seed(sample_seed))
    # sampled = mean + exp(0.5 * logvar) * randn(mean.shape) (logvar clamped to [-30, 20])
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(sample_seed))
    assert torch.allclose(sampled, dist.mean + torch.exp(0.5 * dist.logvar) * eps, atol=1e-6)
    for name, t in (("mean", dist.mean), ("logvar", dist.logvar), ("decoded", decoded)):
        check_nontrivial(name, t)
    save_tensors(out / "vae.safetensors", {"image": image, "mean": dist.mean, "logvar": dist.logvar, "z": z,
                                           "decoded": decoded, "sampled": sampled,
                                           "sample_seed": torch.tensor([sample_seed], dtype=torch.int64)})
    return {"max|mean|": float(dist.mean.abs().max()), "logvar range": (float(dist.logvar.min()),
            float(dist.logvar.max())), "max|decoded|": float(decoded.abs().max())}


# ----------------------------------------------------------------------------------------------
# pipelines


def make_sd1(out: Path) -> Path:
    unet = build_unet(SD1_UNET, 1)
    vae = build_vae(2)
    te = build_text_encoder(SD1_TEXT, 3)
    tok = CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), pad_token="<|endoftext|>")
    sched = PNDMScheduler.from_config(SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = out / "sd1"
    save_pipeline(folder, pipe, {"text_encoder": torch.float16, "unet": torch.float16}, SD15_SCHEDULER,
                  pad="<|endoftext|>")
    check_folder_dtypes(folder, {"text_encoder/model.safetensors": "F16",
                                 "unet/diffusion_pytorch_model.safetensors": "F16",
                                 "vae/diffusion_pytorch_model.safetensors": "F32"})
    return folder


def make_sd2(out: Path) -> Path:
    unet = build_unet(SD2_UNET, 11)
    vae = build_vae(12)
    te = build_text_encoder(SD2_TEXT, 13)
    tok = CLIPTokenizer(str(VOCAB_DIR / "vocab.json"), str(VOCAB_DIR / "merges.txt"), pad_token="!")
    sched = DDIMScheduler.from_config(SD21_SCHEDULER)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = out / "sd2"
    save_pipeline(folder, pipe, {"text_encoder": torch.float16, "unet": torch.float16}, SD21_SCHEDULER, pad="!")
    check_folder_dtypes(folder, {"text_encoder/model.safetensors": "F16",
                                 "unet/diffusion_pytorch_model.safetensors": "F16",
                                 "vae/diffusion_pytorch_model.safetensors": "F32"})
    return folder


def make_sd1_inpaint(out: Path) -> Path:
    sd1 = load_pipeline(out / "sd1")
    unet = build_unet({**SD1_UNET, "in_channels": 9}, 21)
    pipe = StableDiffusionInpaintPipeline(vae=sd1.vae, text_encoder=sd1.text_encoder, tokenizer=sd1.tokenizer,
                                          unet=unet, scheduler=DDIMScheduler.from_config(SD1_DDIM_SCHEDULER),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = out / "sd1_inpaint"
    save_pipeline(folder, pipe, {"text_encoder": torch.float16, "unet": torch.float16}, SD1_DDIM_SCHEDULER,
                  pad="<|endoftext|>")
    for name in ("text_encoder", "tokenizer", "vae"):
        shutil.rmtree(folder / name)
        symlink(folder / name, f"../sd1/{name}")
    check_folder_dtypes(folder, {"unet/diffusion_pytorch_model.safetensors": "F16"})
    return folder


def make_sd1_legacy(out: Path) -> Path:
    """sd1 the way the fp16 branch of CompVis/stable-diffusion-v1-4 was downloaded in 2022."""
    src = out / "sd1"
    folder = out / "sd1_legacy"
    if folder.exists():
        shutil.rmtree(folder)
    for name in ("unet", "vae", "text_encoder", "scheduler", "safety_checker", "feature_extractor"):
        (folder / name).mkdir(parents=True)
    write_json(folder / "model_index.json", LEGACY_MODEL_INDEX)
    write_json(folder / "scheduler" / "scheduler_config.json", LEGACY_SCHEDULER)
    write_json(folder / "safety_checker" / "config.json", LEGACY_SAFETY_CHECKER)
    write_json(folder / "feature_extractor" / "preprocessor_config.json", LEGACY_FEATURE_EXTRACTOR)
    write_tokenizer(folder / "tokenizer", "<|endoftext|>", legacy=True, name_or_path="openai/clip-vit-large-patch14")
    # unet: sd1's F16 file under the variant name, config reduced to diffusers 0.6's keys
    config = json.loads((src / "unet" / "config.json").read_text())
    write_json(folder / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
                                                 **{k: config[k] for k in LEGACY_UNET_KEYS}})
    symlink(folder / "unet" / "diffusion_pytorch_model.fp16.safetensors",
            "../../sd1/unet/diffusion_pytorch_model.safetensors")
    # vae: sd1's weights rounded to F16, mid-block attention under the pre-0.13 names query/key/value/proj_attn
    config = json.loads((src / "vae" / "config.json").read_text())
    write_json(folder / "vae" / "config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0",
                                                **{k: config[k] for k in LEGACY_VAE_KEYS}})
    state = {}
    for k, v in load_file(str(src / "vae" / "diffusion_pytorch_model.safetensors")).items():
        if ".mid_block.attentions." in k:
            for new, old in LEGACY_ATTN_NAMES.items():
                k = k.replace(new, old)
        state[k] = v.to(torch.float16)
    assert any(".query." in k for k in state)
    save_tensors(folder / "vae" / "diffusion_pytorch_model.fp16.safetensors", state)
    # text encoder: sd1's F16 tensors under transformers 4.x names (text_model. prefix) + the position_ids buffer
    te_config = json.loads((src / "text_encoder" / "config.json").read_text())
    write_json(folder / "text_encoder" / "config.json", legacy_text_config(te_config))
    state = {"text_model." + k: v for k, v in load_file(str(src / "text_encoder" / "model.safetensors")).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
    save_tensors(folder / "text_encoder" / "model.fp16.safetensors", state)
    return folder


LEGACY_ATTN_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def load_legacy(folder: Path):
    """What it takes to load sd1_legacy with diffusers 0.42.1: variant="fp16" (only *.fp16.safetensors exist) and
    safety_checker=None (the folder has its config but no weights; requires_safety_checker true only warns)."""
    return load_pipeline(folder, variant="fp16", safety_checker=None)


def check_legacy(folder: Path, out: Path, pipe) -> dict:
    """The legacy folder loads to exactly sd1's weights (VAE: rounded to f16) and the patched configs."""
    sd1 = load_pipeline(out / "sd1")
    for name in ("unet", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(sd1, name).state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = pipe.vae.state_dict(), sd1.vae.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k].half().float()) for k in a)
    notes = {
        "scheduler steps_offset (file: absent)": pipe.scheduler.config.steps_offset,
        "unet sample_size (file: 8)": pipe.unet.config.sample_size,
        "vae scaling_factor (file: absent)": pipe.vae.config.scaling_factor,
        "feature_extractor": type(pipe.feature_extractor).__name__,
        "safety_checker": repr(pipe.safety_checker),
    }
    assert pipe.scheduler.config.steps_offset == 1 and pipe.unet.config.sample_size == 64, notes
    return notes


def component_refs(name: str, folder: Path, out: Path, seed: int, pipe, loader, with_text=True, with_vae=True):
    ref = out / "refs" / name
    ref.mkdir(parents=True, exist_ok=True)
    stats = {}
    if with_text:
        stats["text"] = text_refs(pipe, ref)
    stats["unet"] = unet_refs(pipe.unet, ref, seed, pipe.text_encoder.config.hidden_size)
    if with_vae:
        stats["vae"] = vae_refs(pipe.vae, ref, seed + 1)
    # self-check: a second, independent load gives the same UNet output bit for bit
    again = loader(folder)
    io = load_file(str(ref / "unet.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.unet(io["x"], io["t"], encoder_hidden_states=io["context"]).sample, io["out"])
    return stats


def check_folder_dtypes(folder: Path, expected: dict) -> None:
    from safetensors import safe_open
    for rel, dtype in expected.items():
        with safe_open(str(folder / rel), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {dtype}, (rel, dtypes)


# ----------------------------------------------------------------------------------------------
# end-to-end runs

SCHEDULERS = {
    "pndm": PNDMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}
PIPELINES = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
    "inpaint": StableDiffusionInpaintPipeline,
}
CAT = "a photo of a cat"
ASTRONAUT = "An astronaut riding a horse, 4k, highly detailed"
NEGATIVE = "blurry, low quality"

# pipeline -> case -> settings (seeds: the first of `seeds` whose sensitivity is < 1e-4 is kept)
RUNS = {
    "sd1": {
        "txt2img_pndm": dict(kind="txt2img", scheduler="pndm", steps=8, guidance_scale=7.5, prompt=CAT, seeds=range(0, 8)),
        "txt2img_ddim_g1": dict(kind="txt2img", scheduler="ddim", steps=8, guidance_scale=1.0, prompt=CAT,
                                seeds=range(10, 18)),
        "txt2img_euler_a_negative": dict(kind="txt2img", scheduler="euler_a", steps=8, guidance_scale=7.5,
                                         prompt=ASTRONAUT, negative_prompt=NEGATIVE, seeds=range(20, 28)),
        "txt2img_dpmpp_2m_batch4": dict(kind="txt2img", scheduler="dpmpp_2m", steps=8, guidance_scale=7.5,
                                        prompt=[CAT, ASTRONAUT], num_images_per_prompt=2, seeds=range(30, 38)),
        "img2img_ddim": dict(kind="img2img", scheduler="ddim", steps=10, guidance_scale=7.5, prompt=CAT,
                             strength=0.6, seeds=range(40, 48)),
        "img2img_euler": dict(kind="img2img", scheduler="euler", steps=10, guidance_scale=7.5, prompt=ASTRONAUT,
                              strength=0.75, seeds=range(50, 58)),
        "inpaint_4ch_ddim": dict(kind="inpaint", scheduler="ddim", steps=8, guidance_scale=7.5, prompt=CAT,
                                 seeds=range(60, 68)),
    },
    "sd2": {
        "txt2img_ddim_vpred": dict(kind="txt2img", scheduler="ddim", steps=8, guidance_scale=7.5, prompt=CAT,
                                   seeds=range(100, 108)),
        "txt2img_dpmpp_2m_rescale": dict(kind="txt2img", scheduler="dpmpp_2m", steps=8, guidance_scale=7.5,
                                         guidance_rescale=0.7, prompt=ASTRONAUT, seeds=range(110, 118)),
    },
    "sd1_inpaint": {
        "inpaint_9ch_ddim": dict(kind="inpaint", scheduler="ddim", steps=8, guidance_scale=7.5, prompt=CAT,
                                 seeds=range(200, 208)),
    },
    "sd1_legacy": {
        # same settings as sd1's txt2img_pndm: the final latents must equal sd1's (same UNet / text encoder)
        "txt2img_pndm": dict(kind="txt2img", scheduler="pndm", steps=8, guidance_scale=7.5, prompt=CAT,
                             seeds=range(0, 8)),
    },
}


def init_image_u8() -> np.ndarray:
    """Deterministic smooth colour pattern, uint8 [64,64,3]."""
    yy, xx = np.meshgrid(np.arange(64, dtype=np.float64), np.arange(64, dtype=np.float64), indexing="ij")
    r = 128 + 100 * np.sin(2 * np.pi * xx / 64)
    g = 128 + 100 * np.cos(2 * np.pi * yy / 64)
    b = 128 + 90 * np.sin(2 * np.pi * (xx + yy) / 96 + 1.0)
    return np.clip(np.round(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def mask_u8() -> np.ndarray:
    """uint8 [64,64]: white (255) = repaint. A centred rectangle; grey bands on both sides of 0.5 (128 -> 1,
    127 -> 0 after /255 and binarisation at 0.5); a lone 200 pixel on the 8-pixel grid (kept by the nearest
    downsampling to 8x8, which reads pixel (8i, 8j)) and a lone 255 pixel off the grid (dropped by it)."""
    m = np.zeros((64, 64), dtype=np.uint8)
    m[16:48, 16:40] = 255
    m[16:48, 40:48] = 128
    m[8:16, 16:48] = 127
    m[48, 8] = 200
    m[52, 53] = 255
    return m


class DrawRecorder:
    """Wraps diffusers' randn_tensor in every module that imported it; records each draw in order."""

    def __init__(self):
        from diffusers.utils import torch_utils
        self.orig = torch_utils.randn_tensor
        self.draws = None
        self.patched = []
        for mod in list(sys.modules.values()):
            if mod is not None and getattr(mod, "__name__", "").startswith("diffusers") and \
                    getattr(mod, "randn_tensor", None) is self.orig:
                self.patched.append(mod)
                setattr(mod, "randn_tensor", self.make(mod.__name__))

    def make(self, where):
        def wrapped(*a, **kw):
            t = self.orig(*a, **kw)
            if self.draws is not None:
                self.draws.append((where.split(".")[-1], t.clone()))
            return t
        return wrapped

    def __enter__(self):
        self.draws = []
        return self.draws

    def __exit__(self, *exc):
        self.draws = None


def make_scheduler(pipe, name: str):
    """A fresh scheduler of our name: a copy of the pipeline's own scheduler as loaded when it is of that class,
    else Cls.from_config(pipe.scheduler.config).

    The difference matters for sd1_legacy: its scheduler_config.json has no steps_offset; StableDiffusionPipeline's
    __init__ patches the LOADED scheduler's config to steps_offset 1, but the key stays listed in the config's
    `_use_default_values`, and from_config drops such keys - so PNDMScheduler.from_config(pipe.scheduler.config)
    would run with steps_offset 0 (timesteps 875, 750, ...) while the pipeline's own scheduler uses 876, 751, ...
    """
    if type(pipe.scheduler) is SCHEDULERS[name]:
        return copy.deepcopy(pipe.scheduler)
    return SCHEDULERS[name].from_config(pipe.scheduler.config)


def call_pipeline(pipe, c: dict, seed: int, output_type: str, embeds=None, timesteps_seen=None):
    kw = dict(num_inference_steps=c["steps"], guidance_scale=c["guidance_scale"], height=64, width=64,
              generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type,
              num_images_per_prompt=c.get("num_images_per_prompt", 1))
    if c.get("guidance_rescale"):
        kw["guidance_rescale"] = c["guidance_rescale"]
    if c["kind"] in ("img2img", "inpaint"):
        kw["image"] = PIL.Image.fromarray(init_image_u8(), mode="RGB")
    if c["kind"] == "img2img":
        kw["strength"] = c["strength"]
    if c["kind"] == "inpaint":
        kw["mask_image"] = PIL.Image.fromarray(mask_u8(), mode="L")
    if embeds is None:
        kw["prompt"] = c["prompt"]
        if c.get("negative_prompt") is not None:
            kw["negative_prompt"] = c["negative_prompt"]
    else:
        kw["prompt_embeds"], kw["negative_prompt_embeds"] = embeds
    if timesteps_seen is not None:
        def on_step_end(p, i, t, kwargs):
            timesteps_seen.append(float(t))
            return {}
        kw["callback_on_step_end"] = on_step_end
    with torch.no_grad():
        return pipe(**kw).images


def mask_latents_of(pipe) -> torch.Tensor:
    """The [1,1,8,8] mask the inpainting pipeline concatenates / blends with, by diffusers' own steps:
    mask_processor.preprocess (grayscale, /255, no normalisation, binarise: < 0.5 -> 0, else 1), then
    F.interpolate(size=(H/8, W/8)) (mode 'nearest': latent cell (i, j) reads pixel (8i, 8j))."""
    m = pipe.mask_processor.preprocess(PIL.Image.fromarray(mask_u8(), mode="L"), height=64, width=64)
    lat = torch.nn.functional.interpolate(m, size=(8, 8))
    mine = torch.from_numpy((mask_u8()[::8, ::8] >= 128).astype(np.float32))[None, None]
    assert torch.equal(lat, mine)
    full = torch.from_numpy((mask_u8() >= 128).astype(np.float32))[None, None]
    assert torch.equal(m, full)
    return lat


def make_runs(name: str, folder: Path, out: Path, base_pipe, recorder: DrawRecorder, summary: list) -> None:
    root = out / "refs" / name / "runs"
    root.mkdir(parents=True, exist_ok=True)
    for case, c in RUNS[name].items():
        pipe = PIPELINES[c["kind"]](**base_pipe.components)
        pipe.set_progress_bar_config(disable=True)
        do_cfg = c["guidance_scale"] > 1.0
        chosen, tried = None, []
        for seed in c["seeds"]:
            pipe.scheduler = make_scheduler(base_pipe, c["scheduler"])
            with recorder as draws:
                latents = call_pipeline(pipe, c, seed, "latent")
            draws = list(draws)
            if not torch.isfinite(latents).all():
                tried.append((seed, float("inf")))
                continue
            with torch.no_grad():
                pe, ne = pipe.encode_prompt(c["prompt"], "cpu", 1, do_cfg, c.get("negative_prompt"))
            # the same run from the embeddings is bit-identical
            pipe.scheduler = make_scheduler(base_pipe, c["scheduler"])
            again = call_pipeline(pipe, c, seed, "latent", embeds=(pe, ne))
            assert torch.equal(again, latents), (name, case, seed)
            g = torch.Generator().manual_seed(10_000 + seed)
            pe_p = pe + 1e-6 * torch.randn(pe.shape, generator=g)
            ne_p = ne + 1e-6 * torch.randn(ne.shape, generator=g) if ne is not None else None
            pipe.scheduler = make_scheduler(base_pipe, c["scheduler"])
            perturbed = call_pipeline(pipe, c, seed, "latent", embeds=(pe_p, ne_p))
            sens = float((perturbed - latents).abs().max())
            tried.append((seed, sens))
            if sens < 1e-4:
                chosen = (seed, latents, draws, sens)
                break
        assert chosen is not None, (name, case, tried)
        seed, latents, draws, sens = chosen
        check_nontrivial(f"{name}/{case} final_latents", latents)

        pipe.scheduler = make_scheduler(base_pipe, c["scheduler"])
        seen = []
        images = call_pipeline(pipe, c, seed, "np", timesteps_seen=seen)
        image_u8 = torch.from_numpy((images * 255).round().astype(np.uint8))
        # the image is the VAE decode of the final latents
        with torch.no_grad():
            dec = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        mine = (dec / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        assert np.abs(mine - images).max() < 1e-6, (name, case)
        assert image_u8.float().std() > 1.0, (name, case)

        sched = make_scheduler(base_pipe, c["scheduler"])
        sched.set_timesteps(c["steps"])
        tensors = {"final_latents": latents, "image": image_u8, "timesteps": torch.tensor(seen, dtype=torch.float32)}
        if c["kind"] == "img2img":
            init_t = min(int(c["steps"] * c["strength"]), c["steps"])
            t_start = max(c["steps"] - init_t, 0)
            assert seen == [float(t) for t in sched.timesteps[t_start * sched.order:]], (seen, sched.timesteps)
        else:
            t_start = 0
            assert seen == [float(t) for t in sched.timesteps], (seen, sched.timesteps)
        pre_loop = draws[: len(draws) - sum(1 for w, _ in draws if w.startswith("scheduling_"))]
        assert all(not w.startswith("scheduling_") for w, _ in pre_loop)
        draw_names = DRAW_NAMES[c["kind"] + ("_4ch" if c["kind"] == "inpaint" and pipe.unet.config.in_channels == 4
                                             else "")]
        assert len(pre_loop) == len(draw_names), (name, case, [w for w, _ in draws])
        draw_info = []
        for (where, t), (tname, what) in zip(pre_loop, draw_names):
            tensors[tname] = t
            draw_info.append({"tensor": tname, "shape": list(t.shape), "drawn_in": where, "what": what})
        # the first draw is an ordinary torch.randn of the seeded CPU generator
        first = torch.randn(pre_loop[0][1].shape, generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(first, tensors["start_noise"]), (name, case)
        step_draws = [w for w, _ in draws[len(pre_loop):]]
        if step_draws:
            draw_info.append({"tensor": None, "count": len(step_draws), "drawn_in": step_draws[0],
                              "shape": list(draws[len(pre_loop)][1].shape),
                              "what": "one randn(latents.shape) per scheduler step (ancestral noise), after the "
                                      "pre-loop draws, from the same generator"})
        if c["kind"] in ("img2img", "inpaint"):
            tensors["init_image"] = torch.from_numpy(init_image_u8())
        if c["kind"] == "inpaint":
            tensors["mask"] = torch.from_numpy(mask_u8())
            tensors["mask_latents"] = mask_latents_of(pipe)
        save_tensors(root / f"{case}.safetensors", tensors)
        prompt = c["prompt"]
        n_prompts = len(prompt) if isinstance(prompt, list) else 1
        meta = {
            "pipeline": f"../../../{name}",
            "pipeline_class": PIPELINES[c["kind"]].__name__,
            "kind": c["kind"],
            "scheduler": c["scheduler"],
            "scheduler_class": SCHEDULERS[c["scheduler"]].__name__,
            "scheduler_source": ("the pipeline's own scheduler as loaded" if type(base_pipe.scheduler) is
                                 SCHEDULERS[c["scheduler"]] else f"{SCHEDULERS[c['scheduler']].__name__}"
                                 ".from_config(pipe.scheduler.config)"),
            "scheduler_config": clean_config(sched.config),
            "steps": c["steps"],
            "timesteps_full": [float(t) for t in sched.timesteps],
            "t_start": t_start,
            "timesteps": seen,
            "seed": seed,
            "seeds_tried": [{"seed": s_, "sensitivity": v} for s_, v in tried],
            "guidance_scale": c["guidance_scale"],
            "guidance_rescale": c.get("guidance_rescale", 0.0),
            "prompt": prompt,
            "negative_prompt": c.get("negative_prompt"),
            "num_images_per_prompt": c.get("num_images_per_prompt", 1),
            "batch": n_prompts * c.get("num_images_per_prompt", 1),
            "height": 64,
            "width": 64,
            "strength": c.get("strength", 1.0 if c["kind"] == "inpaint" else None),
            "eta": 0.0,
            "init_image": "init_image" if c["kind"] in ("img2img", "inpaint") else None,
            "mask": "mask" if c["kind"] == "inpaint" else None,
            "random_draws": draw_info,
            "sensitivity": sens,
            "tolerance": max(1e-3, 10 * sens),
            "final_latents_scale": float(latents.abs().max()),
        }
        if name == "sd1_legacy":
            meta["load"] = ("StableDiffusionPipeline.from_pretrained(folder, variant='fp16', dtype=torch.float32, "
                            "safety_checker=None)")
        write_json(root / f"{case}.json", meta)
        summary.append((f"{name}/{case}", c["scheduler"], c["steps"], seed, sens, float(latents.abs().max())))
        print(f"  {name}/{case}: seed {seed}, sensitivity {sens:.2e}, tried {tried}", flush=True)


DRAW_NAMES = {
    "txt2img": [("start_noise", "prepare_latents: randn(batch, 4, H/8, W/8); latents = start_noise * "
                                "init_noise_sigma")],
    "img2img": [("start_noise", "vae.encode(init_image).latent_dist.sample(generator): the posterior draw, "
                                "init_latents = 0.18215 * (mean + exp(0.5*logvar) * start_noise)"),
                ("noise", "prepare_latents: randn(init_latents.shape); latents = scheduler.add_noise(init_latents, "
                          "noise, timesteps[:1])")],
    "inpaint": [("start_noise", "prepare_latents (strength 1, 9-channel UNet, no image encode): randn(batch, 4, "
                                "H/8, W/8); latents = start_noise * init_noise_sigma"),
                ("masked_image_noise", "prepare_mask_latents: vae.encode(masked_image).latent_dist.sample(generator)"
                                       "; masked_image_latents = 0.18215 * (mean + exp(0.5*logvar) * this)")],
    "inpaint_4ch": [("start_noise", "prepare_latents (4-channel UNet: return_image_latents): vae.encode("
                                    "init_image).latent_dist.sample(generator); image_latents = 0.18215 * (mean + "
                                    "exp(0.5*logvar) * start_noise)"),
                    ("noise", "prepare_latents: randn(batch, 4, H/8, W/8); strength 1 -> latents = noise * "
                              "init_noise_sigma (noise is kept for the per-step re-noising of image_latents)"),
                    ("masked_image_noise", "prepare_mask_latents: vae.encode(masked_image).latent_dist.sample("
                                           "generator) - drawn although a 4-channel UNet never uses "
                                           "masked_image_latents")],
}


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "Tests" / "Fixtures" / "sd")
    args = ap.parse_args()
    out = args.out.resolve()
    t0 = time.time()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
          f" -> {out}")
    readme = out / "README.md"
    keep = readme.read_text() if readme.exists() else None
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if keep is not None:
        readme.write_text(keep)

    recorder = DrawRecorder()
    summary = []
    folders = {"sd1": make_sd1(out), "sd2": make_sd2(out)}
    folders["sd1_inpaint"] = make_sd1_inpaint(out)
    folders["sd1_legacy"] = make_sd1_legacy(out)
    loaders = {
        "sd1": load_pipeline,
        "sd2": load_pipeline,
        "sd1_inpaint": lambda f: load_pipeline(f, StableDiffusionInpaintPipeline),
        "sd1_legacy": load_legacy,
    }
    for i, (name, folder) in enumerate(folders.items()):
        pipe = loaders[name](folder)
        if name == "sd1_legacy":
            print("sd1_legacy as loaded:", check_legacy(folder, out, pipe))
        stats = component_refs(name, folder, out, 100 + 10 * i, pipe, loaders[name],
                               with_text=name != "sd1_inpaint", with_vae=name != "sd1_inpaint")
        print(name, stats)
        make_runs(name, folder, out, pipe, recorder, summary)
    # sd1_legacy's run is sd1's txt2img_pndm run: identical latents (same UNet / text encoder / effective scheduler)
    a = load_file(str(out / "refs" / "sd1" / "runs" / "txt2img_pndm.safetensors"))
    b = load_file(str(out / "refs" / "sd1_legacy" / "runs" / "txt2img_pndm.safetensors"))
    assert torch.equal(a["final_latents"], b["final_latents"])

    print(f"\n{'case':42s} {'sched':9s} steps seed sensitivity  max|final|")
    for case, sched, steps, seed, sens, scale in summary:
        print(f"{case:42s} {sched:9s} {steps:5d} {seed:4d} {sens:10.2e} {scale:10.3f}")
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
