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
                 safety_checker/ + feature_extractor/ folders, old VAE attention names (query/key/value/proj_attn)
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
        assert math.isfinite(v)
        return v
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


def make_sd1(out: Path) -> dict:
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
    return folder


def component_refs(name: str, folder: Path, out: Path, seed: int, with_vae: bool = True, cls=StableDiffusionPipeline):
    pipe = load_pipeline(folder, cls)
    ref = out / "refs" / name
    ref.mkdir(parents=True, exist_ok=True)
    stats = {"text": text_refs(pipe, ref)}
    stats["unet"] = unet_refs(pipe.unet, ref, seed, pipe.text_encoder.config.hidden_size)
    if with_vae:
        stats["vae"] = vae_refs(pipe.vae, ref, seed + 1)
    # self-check: a second, independent load gives the same UNet output bit for bit
    again = load_pipeline(folder, cls)
    io = load_file(str(ref / "unet.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.unet(io["x"], io["t"], encoder_hidden_states=io["context"]).sample, io["out"])
    return pipe, stats


def check_folder_dtypes(folder: Path, expected: dict) -> None:
    from safetensors import safe_open
    for rel, dtype in expected.items():
        with safe_open(str(folder / rel), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {dtype}, (rel, dtypes)


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

    folder = make_sd1(out)
    check_folder_dtypes(folder, {"text_encoder/model.safetensors": "F16",
                                 "unet/diffusion_pytorch_model.safetensors": "F16",
                                 "vae/diffusion_pytorch_model.safetensors": "F32"})
    _, stats = component_refs("sd1", folder, out, seed=100)
    print("sd1", stats)
    print(f"done in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
