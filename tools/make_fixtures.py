#!/usr/bin/env python3
"""Write libdiffusion's reference fixtures, computed with PyTorch + diffusers on the CPU in float32.

Usage (see tools/README.md):  .venv/bin/python tools/make_fixtures.py [--out Tests/Fixtures]

Writes, under the output folder (and replaces only these three folders + one file):
  unet/<case>/                  config.json + diffusion_pytorch_model.safetensors (save_pretrained),
                                io.safetensors (x, t, [class_labels], out), case.json
  unet/full_cifar10_config.json the config of google/ddpm-cifar10-32 (for benchmarks)
  schedulers/<case>.json|.safetensors   step-by-step scheduler traces (no network, no RNG needed)
  sampling/<case>/run.json|expected.safetensors   seeded whole-pipeline runs on a unet fixture
It never touches <out>/rng/.

Everything is seeded and single-threaded; a rerun rewrites byte-identical files.
"""

import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# small helpers


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def clean_config(config) -> dict:
    """dict(config) without diffusers' bookkeeping key `_use_default_values` (a set: unordered)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if k != "_use_default_values"}


def save_tensors(path: Path, tensors: dict) -> None:
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def f32(x: float) -> float:
    """A float rounded through float32 (so JSON shows the value the tensors hold)."""
    return float(np.float32(x))


# ----------------------------------------------------------------------------------------------
# 1. UNet2DModel forward fixtures

BASE = dict(
    sample_size=16,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
)
ATTN_MIXED = dict(down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))

# name -> (description, config overrides on top of BASE, seed, weight dtype to save)
UNET_CASES = {
    "plain": (
        "DownBlock2D x2 / UpBlock2D x2, mid block with attention; every other option at its diffusers default "
        "except small channels (8,16) and norm_num_groups 4 (attention_head_dim default 8 -> 2 heads in the mid block)",
        {},
        1,
        None,
    ),
    "attn_one_head": (
        "AttnDownBlock2D x2 / AttnUpBlock2D x2, attention_head_dim null (one head of all channels in every "
        "attention, mid block too); NON-SQUARE sample_size [8, 16] (H=8, W=16)",
        dict(
            sample_size=(8, 16),
            attention_head_dim=None,
            down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
        ),
        2,
        None,
    ),
    "attn_head_dim4": (
        "DownBlock2D+AttnDownBlock2D / AttnUpBlock2D+UpBlock2D, attention_head_dim 4 (16 channels -> 4 heads of 4)",
        dict(attention_head_dim=4, **ATTN_MIXED),
        3,
        None,
    ),
    "mid_no_attention": ("plain structure, add_attention false (mid block = two resnets, no attention)",
                         dict(add_attention=False), 4, None),
    "sincos_freq_shift1": ("plain structure, flip_sin_to_cos false (sin first) and freq_shift 1",
                           dict(flip_sin_to_cos=False, freq_shift=1), 5, None),
    "scale_shift": (
        "DownBlock2D+AttnDownBlock2D / AttnUpBlock2D+UpBlock2D, resnet_time_scale_shift scale_shift "
        "(time_emb_proj gives 2*C; and the MID-block attention has NO group_norm in this mode)",
        dict(resnet_time_scale_shift="scale_shift", **ATTN_MIXED),
        6,
        None,
    ),
    "class_cond": ("plain structure, num_class_embeds 10 (class_embed_type null -> nn.Embedding added to temb); "
                   "class_labels [3, 7]", dict(num_class_embeds=10), 7, None),
    "class_cond_null": ("plain structure, num_class_embeds 11 with label 10 the unconditional class (config.json key "
                        "_null_class_label, libdiffusion's convention; diffusers ignores _ keys); for guidance runs",
                        dict(num_class_embeds=11), 17, None),
    "center_input": ("plain structure, center_input_sample true (x -> 2x - 1 first)",
                     dict(center_input_sample=True), 8, None),
    "layers1": ("plain structure, layers_per_block 1 (up blocks have 2 resnets)", dict(layers_per_block=1), 9, None),
    "layers3": ("plain structure, layers_per_block 3 (up blocks have 4 resnets)", dict(layers_per_block=3), 10, None),
    "groups2_eps6_pad0": (
        "3 levels (8,16,16) DownBlock2D/AttnDownBlock2D/DownBlock2D, norm_num_groups 2, norm_eps 1e-6, "
        "downsample_padding 0 (pad right/bottom by 1, then stride-2 conv without padding)",
        dict(
            block_out_channels=(8, 16, 16),
            norm_num_groups=2,
            norm_eps=1e-6,
            downsample_padding=0,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        ),
        11,
        None,
    ),
    "in3_out6": ("plain structure, in_channels 3, out_channels 6", dict(out_channels=6), 12, None),
    "in1_out1": ("plain structure, in_channels 1, out_channels 1 (grayscale)", dict(in_channels=1, out_channels=1), 13,
                 None),
    "mid_options": (
        "plain structure, mid_block_scale_factor 1.5 (mid resnets and mid attention divide their output by it), "
        "attn_norm_num_groups 2 (mid attention group norm only), time_embedding_dim 24",
        dict(mid_block_scale_factor=1.5, attn_norm_num_groups=2, time_embedding_dim=24),
        14,
        None,
    ),
    "cifar_small": (
        "block structure of google/ddpm-cifar10-32 (DownBlock2D, AttnDownBlock2D, DownBlock2D, DownBlock2D / "
        "UpBlock2D, UpBlock2D, AttnUpBlock2D, UpBlock2D; layers_per_block 2, attention_head_dim null, "
        "downsample_padding 0, flip_sin_to_cos false, freq_shift 1, norm_eps 1e-6) with small channels (8,16,16,16), "
        "norm_num_groups 4, 32x32",
        dict(
            sample_size=32,
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=2,
            attention_head_dim=None,
            downsample_padding=0,
            flip_sin_to_cos=False,
            freq_shift=1,
            norm_eps=1e-6,
        ),
        15,
        None,
    ),
    "plain_f16": ("the `plain` model (same seed) saved with float16 weights; `out` is the float32 forward of the "
                  "f16-rounded weights", {}, 1, torch.float16),
    "plain_bf16": ("the `plain` model (same seed) saved with bfloat16 weights; `out` is the float32 forward of the "
                   "bf16-rounded weights", {}, 1, torch.bfloat16),
}

# google/ddpm-cifar10-32 unet/config.json (keys absent there take diffusers' defaults on load).
FULL_CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
# google/ddpm-cifar10-32 scheduler_config.json
FULL_CIFAR10_SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}


def reinit_(model: torch.nn.Module, gen: torch.Generator, out_gain: float = 1.0) -> None:
    """Give every parameter a non-trivial random value (no identity norm, no zero conv_out).

    conv / linear weights ~ N(0, 1/fan_in) keep activations O(1); biases ~ N(0, 0.1^2);
    norm scale ~ 1 + N(0, 0.25^2), norm shift ~ N(0, 0.2^2); class embedding ~ N(0, 0.5^2).
    """
    done = set()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                gain = out_gain if name == "conv_out" else 1.0
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (gain / math.sqrt(fan_in)))
                done.add(id(m.weight))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                    done.add(id(m.bias))
            elif isinstance(m, torch.nn.GroupNorm):
                m.weight.copy_(1.0 + 0.25 * torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                done.update((id(m.weight), id(m.bias)))
            elif isinstance(m, torch.nn.Embedding):
                m.weight.copy_(0.5 * torch.randn(m.weight.shape, generator=gen))
                done.add(id(m.weight))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    assert not missed, f"parameters not re-initialised: {missed}"


def build_unet(overrides: dict, seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    model = UNet2DModel(**{**BASE, **overrides})
    reinit_(model, torch.Generator().manual_seed(seed))
    return model.eval()


# libdiffusion reads the unconditional class label of a class-conditional model from config.json.
NULL_CLASS_LABEL = {"class_cond_null": 10}


def hw_of(config) -> tuple:
    s = config.sample_size
    return (s, s) if isinstance(s, int) else tuple(s)


@torch.no_grad()
def make_unet_fixtures(out: Path) -> dict:
    root = out / "unet"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    summary = {}
    for name, (description, overrides, seed, save_dtype) in UNET_CASES.items():
        model = build_unet(overrides, seed)
        d = root / name
        if save_dtype is not None:
            model = model.to(save_dtype)
            model.save_pretrained(d, safe_serialization=True)
            model = model.to(torch.float32)  # exact: the forward runs on the rounded weights in f32
        else:
            model.save_pretrained(d, safe_serialization=True)
        if name in NULL_CLASS_LABEL:
            config = json.loads((d / "config.json").read_text())
            config["_null_class_label"] = NULL_CLASS_LABEL[name]
            write_json(d / "config.json", config)

        g = torch.Generator().manual_seed(1000 + seed)
        h, w = hw_of(model.config)
        x = torch.randn((2, model.config.in_channels, h, w), generator=g)
        t = torch.randint(0, 1000, (2,), generator=g).to(torch.float32)
        tensors = {"x": x, "t": t}
        labels = None
        if model.config.num_class_embeds is not None:
            labels = torch.tensor([3, 7], dtype=torch.int64)
            tensors["class_labels"] = labels
        y = model(x, t, class_labels=labels).sample
        tensors["out"] = y
        save_tensors(d / "io.safetensors", tensors)
        scale = float(y.abs().max())
        write_json(d / "case.json", {"description": description, "output_scale": scale,
                                     "weights_dtype": str(save_dtype or torch.float32).replace("torch.", "")})

        # self-check: the folder reloads through diffusers to the same output
        again = UNet2DModel.from_pretrained(d, torch_dtype=torch.float32).eval()
        y2 = again(x, t, class_labels=labels).sample
        assert torch.equal(y, y2), name
        summary[name] = (description, scale)
    summary["cifar_small_legacy"] = make_legacy_case(root)
    write_json(root / "full_cifar10_config.json", FULL_CIFAR10_CONFIG)
    write_json(root / "full_cifar10_scheduler_config.json", FULL_CIFAR10_SCHEDULER_CONFIG)
    # the full config must build (same structure as cifar_small)
    UNet2DModel.from_config({k: v for k, v in FULL_CIFAR10_CONFIG.items() if not k.startswith("_")})
    return summary


LEGACY_ATTN_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


@torch.no_grad()
def make_legacy_case(root: Path) -> tuple:
    """cifar_small as the real google/ddpm-* checkpoints are stored: minimal old-style config.json (only the keys
    google/ddpm-cifar10-32 has; the rest take diffusers' defaults) and the pre-0.13 attention weight names
    query/key/value/proj_attn (diffusers renames them on load)."""
    description, overrides, seed, _ = UNET_CASES["cifar_small"]
    model = build_unet(overrides, seed)
    d = root / "cifar_small_legacy"
    d.mkdir()
    config = dict(FULL_CIFAR10_CONFIG)
    config.update(block_out_channels=list(overrides["block_out_channels"]), norm_num_groups=BASE["norm_num_groups"])
    write_json(d / "config.json", config)
    state = {}
    for k, v in model.state_dict().items():
        if ".attentions." in k:
            for new_name, old_name in LEGACY_ATTN_NAMES.items():
                k = k.replace(new_name, old_name)
        state[k] = v
    save_tensors(d / "diffusion_pytorch_model.safetensors", state)
    io = (root / "cifar_small" / "io.safetensors").read_bytes()
    (d / "io.safetensors").write_bytes(io)
    desc = ("the cifar_small weights stored the way google/ddpm-* checkpoints are: old minimal config.json (the key "
            "set of google/ddpm-cifar10-32's; every missing key takes diffusers' default) and legacy attention names "
            "attentions.N.{query,key,value,proj_attn}.{weight,bias} (= to_q, to_k, to_v, to_out.0); io identical to "
            "cifar_small")
    case = json.loads((root / "cifar_small" / "case.json").read_text())
    write_json(d / "case.json", {**case, "description": desc})
    again = UNet2DModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    io_t = load_file(str(d / "io.safetensors"))
    assert torch.equal(again(io_t["x"], io_t["t"]).sample, io_t["out"])
    return desc, case["output_scale"]


# ----------------------------------------------------------------------------------------------
# 2. scheduler step traces

SHAPE = (1, 2, 3, 3)

# name -> (scheduler, overrides, eta, steps, description)
SCHED_CASES = {
    # DDPM
    "ddpm_default": ("ddpm", {}, None, 10, "defaults: linear 1e-4..0.02, 1000 train steps, 10 inference steps "
                     "(leading: 900..0), fixed_small, clip_sample true, epsilon, thresholding off"),
    "ddpm_fixed_large": ("ddpm", {"variance_type": "fixed_large"}, None, 10, "variance = beta_t (current)"),
    "ddpm_noclip": ("ddpm", {"clip_sample": False}, None, 10, "clip_sample false"),
    "ddpm_clip_range_0p5": ("ddpm", {"clip_sample_range": 0.5}, None, 10, "x0 clamped to [-0.5, 0.5]"),
    "ddpm_sample_pred": ("ddpm", {"prediction_type": "sample"}, None, 10, "model predicts x0"),
    "ddpm_v_pred": ("ddpm", {"prediction_type": "v_prediction", "clip_sample": False}, None, 10, "v-prediction"),
    "ddpm_scaled_linear": ("ddpm", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                           None, 10, "betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2"),
    "ddpm_squaredcos": ("ddpm", {"beta_schedule": "squaredcos_cap_v2"}, None, 10, "cosine schedule, betas capped 0.999"),
    "ddpm_trailing": ("ddpm", {"timestep_spacing": "trailing"}, None, 10, "trailing spacing: 999, 899, ..., 99"),
    "ddpm_linspace": ("ddpm", {"timestep_spacing": "linspace"}, None, 10, "linspace spacing: 999, 888, ..., 0"),
    "ddpm_steps_offset1": ("ddpm", {"steps_offset": 1}, None, 10,
                           "leading + steps_offset 1: 901..1; the last step (t=1 > 0) DOES add noise"),
    "ddpm_train10_all_steps": ("ddpm", {"num_train_timesteps": 10}, None, 10,
                               "10 train timesteps, all 10 used (9..0)"),
    "ddpm_thresholding": ("ddpm", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
                          None, 10, "OPTIONAL feature: dynamic thresholding (quantile 0.9 of |x0| per sample, "
                          "clamped to [1, 1.5]); model outputs x3 so it bites"),
    # DDIM
    "ddim_eta0": ("ddim", {}, 0.0, 10, "defaults: linear, 1000 train, 10 steps leading (900..0), set_alpha_to_one "
                  "true, clip_sample true, epsilon, eta 0 (deterministic)"),
    "ddim_eta0p7": ("ddim", {}, 0.7, 10, "eta 0.7, noise passed via variance_noise= (drawn every step, also the last)"),
    "ddim_noclip": ("ddim", {"clip_sample": False}, 0.0, 10, "clip_sample false"),
    "ddim_clip_range_0p5": ("ddim", {"clip_sample_range": 0.5}, 0.7, 10, "x0 clamped to [-0.5, 0.5], eta 0.7"),
    "ddim_trailing": ("ddim", {"timestep_spacing": "trailing"}, 0.0, 10,
                      "trailing: 999..99; prev = t - 100 (NOT the next list entry rule, same here)"),
    "ddim_linspace": ("ddim", {"timestep_spacing": "linspace"}, 0.7, 10,
                      "linspace: 999, 888, ..., 0; prev = t - 1000//10 = t - 100, which is not the next timestep"),
    "ddim_steps_offset1": ("ddim", {"steps_offset": 1}, 0.0, 10, "leading + steps_offset 1: 901..1"),
    "ddim_alpha_to_one_false": ("ddim", {"set_alpha_to_one": False, "steps_offset": 1}, 0.0, 10,
                                "set_alpha_to_one false: final alpha_prod = alphas_cumprod[0] (SD-style with offset 1)"),
    "ddim_alpha_to_one_true": ("ddim", {"set_alpha_to_one": True, "steps_offset": 1}, 0.0, 10,
                               "set_alpha_to_one true with steps_offset 1: final alpha_prod = 1"),
    "ddim_scaled_linear": ("ddim", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, 0.0, 10,
                           "Stable-Diffusion-like DDIM settings"),
    "ddim_squaredcos": ("ddim", {"beta_schedule": "squaredcos_cap_v2"}, 0.0, 10, "cosine schedule"),
    "ddim_sample_pred": ("ddim", {"prediction_type": "sample"}, 0.7, 10, "model predicts x0, eta 0.7"),
    "ddim_v_pred": ("ddim", {"prediction_type": "v_prediction", "clip_sample": False}, 0.0, 10, "v-prediction"),
    "ddim_thresholding": ("ddim", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
                          0.0, 10, "OPTIONAL feature: dynamic thresholding; model outputs x3"),
    "ddim_from_ddpm_config": ("ddim_from_ddpm", {"variance_type": "fixed_large", "clip_sample": False}, 0.5, 10,
                              "DDIMScheduler.from_config(DDPMScheduler(**overrides).config): DDPM-only keys "
                              "(variance_type) are ignored; config shows what DDIM ends up with"),
}

NOISE_SEMANTICS = {
    "ddpm": "prev_sample_i = mean_i + sqrt(variance_i) * noise_i when timesteps[i] > 0 (for fixed_small/"
            "fixed_large); noise_i is exactly what diffusers drew (randn_tensor(model_output.shape, generator)) "
            "inside step(); when timesteps[i] == 0 diffusers draws nothing, noise_i is zeros and noise_used[i] false",
    "ddim": "prev_sample_i = sqrt(a_prev) * x0_i + sqrt(1 - a_prev - std^2) * eps_i + std * noise_i with "
            "std = eta * sqrt(variance); noise_i was passed as step(..., variance_noise=noise_i); when eta == 0 "
            "nothing is drawn, noise_i is zeros and noise_used[i] false",
}


def make_scheduler(kind: str, overrides: dict):
    if kind == "ddpm":
        return DDPMScheduler(**overrides)
    if kind == "ddim":
        return DDIMScheduler(**overrides)
    if kind == "ddim_from_ddpm":
        return DDIMScheduler.from_config(DDPMScheduler(**overrides).config)
    raise ValueError(kind)


def ref_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    flat = x0.reshape(x0.shape[0], -1)
    s = np.quantile(np.abs(flat), ratio, axis=1)
    s = np.clip(s, 1.0, max_value)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


def ref_step(kind, cfg, ac, t, prev_t, final_alpha, x, mo, noise, eta):
    """float64 re-derivation of one step (checks that the recorded trace means what the json says)."""
    a_t = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else final_alpha
    b_t = 1 - a_t
    if cfg["prediction_type"] == "epsilon":
        x0 = (x - math.sqrt(b_t) * mo) / math.sqrt(a_t)
        eps = mo
    elif cfg["prediction_type"] == "sample":
        x0 = mo
        eps = (x - math.sqrt(a_t) * x0) / math.sqrt(b_t)
    else:
        x0 = math.sqrt(a_t) * x - math.sqrt(b_t) * mo
        eps = math.sqrt(a_t) * mo + math.sqrt(b_t) * x
    if cfg["thresholding"]:
        x0 = ref_threshold(x0, cfg["dynamic_thresholding_ratio"], cfg["sample_max_value"])
    elif cfg["clip_sample"]:
        x0 = np.clip(x0, -cfg["clip_sample_range"], cfg["clip_sample_range"])
    if kind == "ddpm":
        alpha_t = a_t / a_prev
        beta_t = 1 - alpha_t
        mean = (math.sqrt(a_prev) * beta_t / b_t) * x0 + (math.sqrt(alpha_t) * (1 - a_prev) / b_t) * x
        var = max((1 - a_prev) / (1 - a_t) * beta_t, 1e-20)
        if cfg["variance_type"] == "fixed_large":
            var = beta_t
        prev = mean + (math.sqrt(var) * noise if t > 0 else 0.0)
    else:
        var = (1 - a_prev) / b_t * (1 - a_t / a_prev)
        std = eta * math.sqrt(var)
        prev = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - std**2) * eps + std * noise
    return x0, prev


def make_scheduler_fixtures(out: Path) -> dict:
    root = out / "schedulers"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    summary = {}
    for idx, (name, (kind, overrides, eta, steps, description)) in enumerate(SCHED_CASES.items()):
        sched = make_scheduler(kind, overrides)
        family = "ddpm" if kind == "ddpm" else "ddim"
        sched.set_timesteps(steps)
        timesteps = sched.timesteps.clone()
        cfg = clean_config(sched.config)
        data_gen = torch.Generator().manual_seed(500 + idx)  # samples / model outputs / DDIM noise
        ddpm_gen = torch.Generator().manual_seed(900 + idx)  # DDPM's own in-step draws
        out_scale = 3.0 if cfg.get("thresholding") else 1.0

        tensors = {"alphas_cumprod": sched.alphas_cumprod.clone(), "betas": sched.betas.clone(),
                   "timesteps": timesteps.to(torch.int64)}
        x = torch.randn(SHAPE, generator=data_gen)
        prev_ts, noise_used = [], []
        ac64 = sched.alphas_cumprod.double().numpy()
        final_alpha = float(sched.final_alpha_cumprod) if family == "ddim" else 1.0
        for i, t in enumerate(timesteps):
            mo = torch.randn(SHAPE, generator=data_gen) * out_scale
            if family == "ddpm":
                prev_t = int(sched.previous_timestep(t))
                used = bool(t > 0)
                if used:
                    replay = torch.Generator()
                    replay.set_state(ddpm_gen.get_state())
                    noise = torch.randn(SHAPE, generator=replay)
                else:
                    noise = torch.zeros(SHAPE)
                res = sched.step(mo, t, x, generator=ddpm_gen)
            else:
                prev_t = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
                used = eta > 0
                noise = torch.randn(SHAPE, generator=data_gen) if used else torch.zeros(SHAPE)
                res = sched.step(mo, t, x, eta=eta, variance_noise=noise if used else None)
            tensors[f"sample_{i}"] = x
            tensors[f"model_output_{i}"] = mo
            tensors[f"noise_{i}"] = noise
            tensors[f"prev_sample_{i}"] = res.prev_sample
            tensors[f"pred_original_sample_{i}"] = res.pred_original_sample
            prev_ts.append(prev_t)
            noise_used.append(used)
            # cross-check against the float64 formulas
            x0_ref, prev_ref = ref_step(family, cfg, ac64, int(t), prev_t, final_alpha, x.double().numpy(),
                                        mo.double().numpy(), noise.double().numpy(), eta)
            err0 = np.abs(res.pred_original_sample.double().numpy() - x0_ref).max()
            err1 = np.abs(res.prev_sample.double().numpy() - prev_ref).max()
            assert err0 < 1e-4 * max(1.0, np.abs(x0_ref).max()), (name, i, err0)
            assert err1 < 1e-4 * max(1.0, np.abs(prev_ref).max()), (name, i, err1)
            x = res.prev_sample

        save_tensors(root / f"{name}.safetensors", tensors)
        meta = {
            "scheduler": family,
            "description": description,
            "config": cfg,
            "overrides": overrides,
            "steps": steps,
            "eta": eta,
            "timesteps": [int(v) for v in timesteps],
            "prev_timesteps": prev_ts,
            "noise_used": noise_used,
            "noise_semantics": NOISE_SEMANTICS[family],
            "shape": list(SHAPE),
        }
        if kind == "ddim_from_ddpm":
            meta["built_with"] = "DDIMScheduler.from_config(DDPMScheduler(**overrides).config)"
            meta["source_config"] = clean_config(DDPMScheduler(**overrides).config)
        if family == "ddim":
            meta["final_alpha_cumprod"] = float(sched.final_alpha_cumprod)
        write_json(root / f"{name}.json", meta)
        summary[name] = description
    return summary


# ----------------------------------------------------------------------------------------------
# 3. whole seeded sampling runs

DDPM50 = {"num_train_timesteps": 50, "beta_start": 0.001, "beta_end": 0.2}

# name -> dict(model, scheduler, overrides, steps, batch, eta, class_labels, description)
SAMPLING_CASES = {
    "ddpm_fixed_small": dict(model="plain", scheduler="ddpm", overrides=dict(DDPM50), steps=50, batch=1, eta=None,
                             description="DDPMPipeline, fixed_small (default), clip_sample true, 50 train steps all used"),
    "ddpm_fixed_large_noclip_b2": dict(
        model="plain", scheduler="ddpm", overrides={"num_train_timesteps": 50, "variance_type": "fixed_large", "clip_sample": False},
        steps=50, batch=2, eta=None,
        description="DDPMPipeline, fixed_large, clip_sample false, batch 2, 50 train steps with the default betas "
                    "(1e-4..0.02, keeps the unclipped random-net run bounded)"),
    "ddim_eta0_20": dict(model="plain", scheduler="ddim", overrides={}, steps=20, batch=1, eta=0.0,
                         description="DDIMPipeline, eta 0, 20 of 1000 train steps (leading), clip_sample true"),
    "ddim_eta1": dict(model="plain", scheduler="ddim", overrides={}, steps=10, batch=2, eta=1.0,
                      description="DDIMPipeline, eta 1: noise drawn from the generator in every step (incl. last)"),
    "ddim_trailing": dict(model="plain", scheduler="ddim", overrides={"timestep_spacing": "trailing"}, steps=10,
                          batch=1, eta=0.0, description="DDIMPipeline, trailing spacing (999..99), eta 0"),
    "ddim_v_prediction": dict(model="plain", scheduler="ddim",
                              overrides={"prediction_type": "v_prediction", "clip_sample": False}, steps=10, batch=2,
                              eta=0.0, description="DDIMPipeline, v_prediction, clip_sample false, batch 2"),
    "ddpm_class_cond": dict(model="class_cond", scheduler="ddpm", overrides=dict(DDPM50), steps=50, batch=2, eta=None,
                            class_labels=[3, 7],
                            description="manual DDPMPipeline loop with class_labels [3, 7] passed to the unet "
                                        "(pipelines have no class input); otherwise identical to DDPMPipeline"),
    "ddim_guidance1p5": dict(model="class_cond_null", scheduler="ddim", overrides={}, steps=10, batch=2, eta=0.0,
                             class_labels=[3, 7], guidance_scale=1.5,
                             description="classifier-free guidance, scale 1.5 (larger scales make this random net "
                                         "chaotic): unet on cat([x, x]) with labels [10, 10, 3, 7] (null class "
                                         "first), eps = eps_u + 1.5 (eps_c - eps_u); DDIM eta 0"),
    "ddpm_guidance2": dict(model="class_cond_null", scheduler="ddpm", overrides=dict(DDPM50), steps=50, batch=1,
                           eta=None, class_labels=[5], guidance_scale=2.0,
                           description="classifier-free guidance, scale 2, DDPM 50 steps, label 5"),
    "ddim_nonsquare_eta0p5": dict(model="attn_one_head", scheduler="ddim", overrides={}, steps=10, batch=1, eta=0.5,
                                  description="DDIMPipeline on the non-square (H=8, W=16) attn_one_head model, eta 0.5"),
}


def new_scheduler(kind: str, overrides: dict):
    base = DDPMScheduler() if kind == "ddpm" else DDIMScheduler()
    return type(base).from_config(base.config, **overrides)


@torch.no_grad()
def run_loop(unet, kind, overrides, steps, seed, batch, eta, class_labels=None, perturb=None, guidance_scale=None):
    """The DDPMPipeline / DDIMPipeline loop, line for line (perturb is added to the start noise after drawing)."""
    sched = new_scheduler(kind, overrides)
    if kind == "ddim":
        sched = DDIMScheduler.from_config(sched.config)  # what DDIMPipeline.__init__ does
    generator = torch.Generator().manual_seed(seed)
    h, w = hw_of(unet.config)
    shape = (batch, unet.config.in_channels, h, w)
    start = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=unet.dtype)
    image = start if perturb is None else start + perturb
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        if guidance_scale is None:
            model_output = unet(image, t, class_labels=class_labels).sample
        else:  # classifier-free guidance as one batch of two: [unconditional; conditional]
            null = torch.full_like(class_labels, NULL_CLASS_LABEL["class_cond_null"])
            both = unet(torch.cat([image, image]), t, class_labels=torch.cat([null, class_labels])).sample
            eps_u, eps_c = both.chunk(2)
            model_output = eps_u + guidance_scale * (eps_c - eps_u)
        if kind == "ddpm":
            image = sched.step(model_output, t, image, generator=generator).prev_sample
        else:
            image = sched.step(model_output, t, image, eta=eta, use_clipped_model_output=None,
                               generator=generator).prev_sample
    return start, image, sched


@torch.no_grad()
def run_pipeline(unet, kind, overrides, steps, seed, batch, eta):
    sched = new_scheduler(kind, overrides)
    if kind == "ddpm":
        pipe = DDPMPipeline(unet=unet, scheduler=sched)
        kwargs = {}
    else:
        pipe = DDIMPipeline(unet=unet, scheduler=sched)
        kwargs = {"eta": eta}
    pipe.set_progress_bar_config(disable=True)
    res = pipe(batch_size=batch, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
               output_type="np", **kwargs)
    return res.images


def make_sampling_fixtures(out: Path) -> dict:
    root = out / "sampling"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    summary = {}
    for name, c in SAMPLING_CASES.items():
        model_dir = out / "unet" / c["model"]
        unet = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        labels = c.get("class_labels")
        labels_t = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
        chosen = None
        tried = []
        for seed in range(20):
            start, final, sched = run_loop(unet, c["scheduler"], c["overrides"], c["steps"], seed, c["batch"], c["eta"],
                                           labels_t, guidance_scale=c.get("guidance_scale"))
            if not torch.isfinite(final).all():
                tried.append((seed, float("inf")))
                continue
            # conditioning: start perturbed by 1e-6 in a random (max-abs 1) direction
            d = torch.randn(start.shape, generator=torch.Generator().manual_seed(10_000 + seed))
            d = d / d.abs().max()
            _, final_p, _ = run_loop(unet, c["scheduler"], c["overrides"], c["steps"], seed, c["batch"], c["eta"],
                                     labels_t, perturb=1e-6 * d, guidance_scale=c.get("guidance_scale"))
            sens = float((final - final_p).abs().max())
            tried.append((seed, sens))
            if sens < 1e-4 and (chosen is None or sens < chosen[-1]):
                chosen = (seed, start, final, sched, sens)
            if chosen is not None and seed >= 3:  # best of the first four seeds that are well-conditioned
                break
        assert chosen is not None, (name, tried)
        seed, start, final, sched, sens = chosen

        if labels is None:  # the pipeline itself must give the same image
            images = run_pipeline(unet, c["scheduler"], c["overrides"], c["steps"], seed, c["batch"], c["eta"])
            mine = (final / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            diff = float(np.abs(images - mine).max())
            assert diff <= 1e-6, (name, diff)

        d = root / name
        d.mkdir()
        tensors = {"start": start, "timesteps": sched.timesteps.to(torch.int64), "final": final}
        if labels_t is not None:
            tensors["class_labels"] = labels_t
        save_tensors(d / "expected.safetensors", tensors)
        h, w = hw_of(unet.config)
        run = {
            "model": f"../../unet/{c['model']}",
            "scheduler": c["scheduler"],
            "scheduler_config": c["overrides"],
            "scheduler_config_full": clean_config(sched.config),
            "steps": c["steps"],
            "seed": seed,
            "batch": c["batch"],
            "height": h,
            "width": w,
            "eta": c["eta"],
            "class_labels": labels,
            "guidance_scale": c.get("guidance_scale"),
            "sensitivity": sens,
            "tolerance": max(1e-3, 10 * sens),
            "final_scale": float(final.abs().max()),
            "description": c["description"],
            "notes": (
                "scheduler = <DDPM|DDIM>Scheduler.from_config(<class defaults>, **scheduler_config). Loop = the "
                "diffusers pipeline: generator = torch.Generator('cpu').manual_seed(seed); start = torch.randn("
                "(batch, in_channels, height, width), generator) BEFORE set_timesteps(steps); for t in timesteps: "
                "eps = unet(x, t[, class_labels]); x = step(eps, t, x, [eta=eta,] generator=generator) "
                "(DDPM draws randn(x.shape) inside step only when t > 0; DDIM draws it in every step when eta > 0). "
                "`final` is x after the last step, before the pipeline's (x/2+0.5).clamp(0,1). sensitivity = max "
                "|final - final'| where final' starts from start + 1e-6*d (d random, max|d| = 1); "
                "tolerance = max(1e-3, 10*sensitivity) is the max-abs error allowed on `final`."
            ),
        }
        write_json(d / "run.json", run)
        summary[name] = (c["description"], seed, sens)
    return summary


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "Tests" / "Fixtures")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__} -> {out}")

    for name, (desc, scale) in make_unet_fixtures(out).items():
        print(f"unet/{name:22s} output_scale {scale:8.4f}  {desc[:70]}")
    for name, desc in make_scheduler_fixtures(out).items():
        print(f"schedulers/{name:26s} {desc[:80]}")
    for name, (desc, seed, sens) in make_sampling_fixtures(out).items():
        print(f"sampling/{name:28s} seed {seed:2d} sensitivity {sens:.2e}  {desc[:60]}")


if __name__ == "__main__":
    main()
