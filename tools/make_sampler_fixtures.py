#!/usr/bin/env python3
"""Write libdiffusion's sampler reference fixtures (diffusers' multistep / sigma-space schedulers), computed with
PyTorch + diffusers on the CPU in float32.

Usage (see tools/README.md):  .venv/bin/python tools/make_sampler_fixtures.py [--out Tests/Fixtures/samplers]

Writes (and replaces) the output folder:
  <case>.json + <case>.safetensors    a whole seeded sampling loop of one scheduler with a deterministic toy
                                      denoiser on a [1,2,4,4] sample: every model input / output, every noise
                                      tensor the scheduler drew, every prev_sample
  runs/<case>/run.json + expected.safetensors
                                      a whole seeded run on the small random UNet fixture Tests/Fixtures/unet/plain
                                      (start, final, measured conditioning and tolerance)

Every trace is checked as it is written against an independent float64 re-implementation of the scheduler (timesteps,
sigmas, init_noise_sigma, scale_model_input and every step, multistep state included), so the formulas quoted in the
json files are the ones diffusers runs. Everything is seeded and single-threaded; a rerun rewrites byte-identical files.
"""

import argparse
import inspect
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMPipeline,
    PNDMScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 2, 4, 4)

# ----------------------------------------------------------------------------------------------
# small helpers (same conventions as tools/make_fixtures.py)


def jsonable(v):
    """JSON-safe copy: tuples -> lists, non-finite floats -> strings "inf" / "-inf" / "nan" (strict JSON has none)."""
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
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def f32(x) -> float:
    """A value rounded through float32 (so JSON shows the value the tensors hold)."""
    return float(np.float32(float(x)))


# ----------------------------------------------------------------------------------------------
# the cases

# our name -> diffusers class
CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
    "lms": LMSDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,
}

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD_LEADING = {**SD, "timestep_spacing": "leading", "steps_offset": 1}
COS = {"beta_schedule": "squaredcos_cap_v2"}

# case -> (scheduler, overrides, steps, seed, description)
CASES = {
    # DDPM with a learned variance (model output has 2*C channels: [eps | v])
    "ddpm_learned": ("ddpm", {"variance_type": "learned"}, 10, 101,
                     "variance_type learned: the second channel half IS the variance (std = sqrt(v)); toy v = "
                     "0.01*(1+tanh(xin)) >= 0 (a negative v would give NaN in diffusers)"),
    "ddpm_learned_range": ("ddpm", {"variance_type": "learned_range"}, 10, 102,
                           "variance_type learned_range (improved DDPM): log var = f*log(beta_t) + (1-f)*log(posterior "
                           "var), f = (v+1)/2, toy v = tanh(xin) in [-1,1]; linear betas, clip_sample true"),
    "ddpm_learned_range_cosine": ("ddpm", {"variance_type": "learned_range", **COS}, 10, 103,
                                  "learned_range with the squaredcos_cap_v2 schedule (the improved-DDPM setting)"),
    "ddpm_learned_range_v_pred": ("ddpm", {"variance_type": "learned_range", "prediction_type": "v_prediction",
                                           "clip_sample": False}, 10, 104,
                                  "learned_range, v_prediction, clip_sample false"),
    # Euler
    "euler_default": ("euler", {}, 10, 201, "defaults: linear 1e-4..0.02, timestep_spacing linspace (999, 888, ..., 0), "
                      "interpolation_type linear, epsilon, final sigma 0"),
    "euler_karras": ("euler", {"use_karras_sigmas": True}, 10, 202,
                     "Karras sigmas (rho 7) between the interpolated sigmas of the first and last spacing timestep; "
                     "timesteps = sigma_to_t (fractional floats)"),
    "euler_leading": ("euler", {"timestep_spacing": "leading"}, 10, 203,
                      "leading spacing 900..0; init_noise_sigma = sqrt(sigma_max^2 + 1)"),
    "euler_trailing": ("euler", {"timestep_spacing": "trailing"}, 10, 204, "trailing spacing 999, 899, ..., 99"),
    "euler_log_linear": ("euler", {"interpolation_type": "log_linear"}, 10, 205,
                         "interpolation_type log_linear: N+1 sigmas log-spaced from the LAST to the FIRST train sigma "
                         "(plus the final 0: N+2 sigmas, the last step ends at sigma_min, not 0); timesteps still "
                         "the linspace ones"),
    "euler_squaredcos": ("euler", dict(COS), 10, 206, "squaredcos_cap_v2 betas, linspace spacing"),
    "euler_v_pred": ("euler", {"prediction_type": "v_prediction"}, 10, 207, "v_prediction"),
    "euler_sample_pred": ("euler", {"prediction_type": "sample"}, 10, 208, "prediction_type sample (model gives x0)"),
    "euler_sd": ("euler", dict(SD_LEADING), 10, 209,
                 "Stable Diffusion (XL) config: scaled_linear 0.00085..0.012, timestep_spacing leading, steps_offset 1 "
                 "(timesteps 901..1), init_noise_sigma = sqrt(sigma_max^2 + 1)"),
    "euler_sd_karras": ("euler", {**SD_LEADING, "use_karras_sigmas": True}, 10, 210,
                        "SD config with Karras sigmas (endpoints = interpolated sigmas at 901 and 1)"),
    # Euler ancestral
    "euler_a_default": ("euler_a", {}, 10, 301, "defaults (linear, linspace, epsilon); noise drawn in EVERY step"),
    "euler_a_sd": ("euler_a", dict(SD_LEADING), 10, 302, "SD config: scaled_linear, leading, steps_offset 1"),
    "euler_a_v_pred": ("euler_a", {"prediction_type": "v_prediction"}, 10, 303, "v_prediction"),
    # Heun
    "heun_default": ("heun", {}, 10, 401, "defaults: NOTE Heun's defaults are linear 0.00085..0.012; linspace; "
                     "2N-1 = 19 model evaluations"),
    "heun_karras": ("heun", {"use_karras_sigmas": True}, 10, 402, "Karras sigmas"),
    "heun_v_pred": ("heun", {"prediction_type": "v_prediction"}, 10, 403, "v_prediction"),
    "heun_sd": ("heun", dict(SD_LEADING), 10, 404, "SD config: scaled_linear, leading, steps_offset 1"),
    # DPM-Solver++ (multistep)
    "dpmpp_2m": ("dpmpp_2m", {}, 10, 501, "defaults: dpmsolver++, solver_order 2, midpoint, lower_order_final true, "
                 "final_sigmas_type zero, linspace (999, 899, ..., 99)"),
    "dpmpp_order1": ("dpmpp_2m", {"solver_order": 1}, 10, 502, "solver_order 1 (= DDIM-like first-order updates)"),
    "dpmpp_3m": ("dpmpp_2m", {"solver_order": 3}, 10, 503,
                 "solver_order 3: warm-up orders 1,2 then 3; lower_order_final (N < 15): 2nd-last step order 2, "
                 "last step order 1"),
    "dpmpp_2m_karras": ("dpmpp_2m", {"use_karras_sigmas": True}, 10, 504,
                        "Karras sigmas between train sigma[0] and sigma[999]; timesteps = round(sigma_to_t)"),
    "dpmpp_2m_squaredcos": ("dpmpp_2m", dict(COS), 10, 505,
                            "squaredcos_cap_v2 betas (Karras + squaredcos is unusable in diffusers 0.42: the "
                            "unrounded, truncated timesteps repeat 998 four times and the loop runs off the end)"),
    "dpmpp_2m_sigma_min": ("dpmpp_2m", {"final_sigmas_type": "sigma_min"}, 10, 506,
                           "final sigma = train sigma[0] instead of 0 (last step still first order: "
                           "lower_order_final true and N < 15)"),
    "dpmpp_2m_sigma_min_no_lof": ("dpmpp_2m", {"final_sigmas_type": "sigma_min", "lower_order_final": False}, 10, 507,
                                  "final sigma_min and lower_order_final false: the last step is second order"),
    "dpmpp_3m_no_lof": ("dpmpp_2m", {"solver_order": 3, "lower_order_final": False}, 10, 508,
                        "order 3, lower_order_final false, final zero: 2nd-last step order 3, the last step is "
                        "still order 1 (final_sigmas_type zero forces it)"),
    "dpmpp_3m_sigma_min_no_lof": ("dpmpp_2m", {"solver_order": 3, "lower_order_final": False,
                                               "final_sigmas_type": "sigma_min"}, 10, 509,
                                  "order 3 to the very end (final sigma_min, lower_order_final false)"),
    "dpmpp_2m_sde": ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++"}, 10, 510,
                     "sde-dpmsolver++, order 2: noise drawn in EVERY step (also the last, where its weight is 0)"),
    "dpmpp_sde_order1": ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++", "solver_order": 1}, 10, 511,
                         "sde-dpmsolver++, order 1"),
    "dpmpp_3m_sde_karras": ("dpmpp_2m", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                         "use_karras_sigmas": True}, 10, 512, "sde-dpmsolver++, order 3, Karras"),
    "dpmpp_2m_v_pred": ("dpmpp_2m", {"prediction_type": "v_prediction"}, 10, 513, "v_prediction"),
    "dpmpp_2m_sample_pred": ("dpmpp_2m", {"prediction_type": "sample"}, 10, 514, "prediction_type sample"),
    "dpmpp_2m_sd": ("dpmpp_2m", dict(SD_LEADING), 10, 515,
                    "SD config: scaled_linear, leading (step_ratio = 1000 // (N+1) = 90: 901, 811, ..., 91), "
                    "steps_offset 1"),
    # PNDM
    "pndm_prk": ("pndm", {}, 10, 601, "defaults: skip_prk_steps false -> 12 Runge-Kutta (PRK) iterations on the "
                 "4 largest timesteps with half steps, then 7 PLMS iterations: 19 in all"),
    "pndm_skip_prk": ("pndm", {"skip_prk_steps": True}, 10, 602,
                      "skip_prk_steps true: 11 PLMS iterations (the 2nd repeats the 2nd timestep: a Heun-like "
                      "correction of the first step)"),
    "pndm_sd": ("pndm", {**SD, "skip_prk_steps": True, "steps_offset": 1, "set_alpha_to_one": False}, 10, 603,
                "Stable Diffusion 1.x scheduler config: PNDM skip_prk_steps, scaled_linear, steps_offset 1 "
                "(901..1), set_alpha_to_one false"),
    "pndm_prk_v_pred": ("pndm", {"prediction_type": "v_prediction"}, 10, 604, "PRK + PLMS, v_prediction"),
    # LMS
    "lms_default": ("lms", {}, 10, 701, "defaults: linear, linspace, order 4 (step() default), epsilon"),
    "lms_v_pred": ("lms", {"prediction_type": "v_prediction"}, 10, 702, "v_prediction"),
    "lms_sd": ("lms", dict(SD_LEADING), 10, 703, "SD config: scaled_linear, leading, steps_offset 1"),
    "lms_karras": ("lms", {"use_karras_sigmas": True}, 10, 704, "Karras sigmas"),
    # UniPC
    "unipc_order1": ("unipc", {"solver_order": 1}, 10, 801, "solver_order 1 (predictor order 1, corrector order 1)"),
    "unipc_order2": ("unipc", {}, 10, 802, "defaults: bh2, solver_order 2, predict_x0 true, lower_order_final true, "
                     "final sigma 0, linspace (999, 899, ..., 99)"),
    "unipc_order3": ("unipc", {"solver_order": 3}, 10, 803, "solver_order 3"),
    "unipc_order3_no_lof": ("unipc", {"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
                            10, 804, "solver_order 3, lower_order_final false (order 3 to the end), final sigma_min "
                            "(with the default final sigma 0 the order-3 predictor's 2x2 system is singular: h = inf "
                            "makes every r_k 0, and diffusers raises)"),
    "unipc_bh1": ("unipc", {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}, 10, 805,
                  "solver_type bh1 (B(h) = hh instead of expm1(hh)); final sigma_min because with the default final "
                  "sigma 0 diffusers gives NaN (B(h) = -inf times a zero correction)"),
    "unipc_predict_eps": ("unipc", {"predict_x0": False, "final_sigmas_type": "sigma_min"}, 10, 806,
                          "predict_x0 false (noise-prediction form); final_sigmas_type sigma_min because with the "
                          "default final sigma 0 diffusers produces NaN in the last step (0 * inf)"),
    "unipc_order3_predict_eps": ("unipc", {"solver_order": 3, "predict_x0": False, "final_sigmas_type": "sigma_min"},
                                 10, 807, "solver_order 3, predict_x0 false, final sigma_min"),
    "unipc_v_pred": ("unipc", {"prediction_type": "v_prediction"}, 10, 808, "v_prediction"),
    "unipc_sample_pred": ("unipc", {"prediction_type": "sample"}, 10, 809, "prediction_type sample"),
    "unipc_karras": ("unipc", {"use_karras_sigmas": True}, 10, 810, "Karras sigmas, timesteps = round(sigma_to_t)"),
    # LCM
    "lcm_4": ("lcm", {}, 4, 901, "defaults (scaled_linear 0.00085..0.012, original_inference_steps 50, "
              "timestep_scaling 10, set_alpha_to_one true), 4 steps: 999, 759, 499, 259"),
    "lcm_8": ("lcm", {}, 8, 902, "8 steps: 999, 879, 759, 639, 499, 379, 259, 139"),
    "lcm_v_pred": ("lcm", {"prediction_type": "v_prediction"}, 4, 903, "v_prediction, 4 steps"),
}


# ----------------------------------------------------------------------------------------------
# the toy denoiser


def toy_model(xin: torch.Tensor, t, variance_type=None) -> torch.Tensor:
    """eps = 0.7*xin + 0.3*sin(xin) + 0.05*cos(t/100), evaluated in float64 and rounded to float32.
    For DDPM learned variances the output gets a second channel half v: tanh(xin) (learned_range) or
    0.01*(1 + tanh(xin)) (learned: the variance itself, must be >= 0)."""
    x = xin.double()
    t64 = torch.as_tensor(t).double()
    eps = (0.7 * x + 0.3 * torch.sin(x) + 0.05 * torch.cos(t64 / 100)).float()
    if variance_type == "learned_range":
        return torch.cat([eps, torch.tanh(x).float()], dim=1)
    if variance_type == "learned":
        return torch.cat([eps, (0.01 * (1 + torch.tanh(x))).float()], dim=1)
    return eps


TOY_TEXT = ("model_output = float32(0.7*xin + 0.3*sin(xin) + 0.05*cos(t/100)) evaluated in float64 (t = the "
            "timestep value passed to the model, as held by diffusers); DDPM learned variances append a second "
            "channel half v along dim 1: learned_range v = tanh(xin), learned v = 0.01*(1+tanh(xin))")


# ----------------------------------------------------------------------------------------------
# recording the noise the scheduler draws


class NoiseRecorder:
    """Replaces `randn_tensor` in the scheduler's module and keeps every tensor it returns."""

    def __init__(self, cls):
        self.module = sys.modules[cls.__module__]
        self.orig = getattr(self.module, "randn_tensor", None)
        self.drawn = []

    def __enter__(self):
        if self.orig is not None:
            def wrapper(*args, **kwargs):
                out = self.orig(*args, **kwargs)
                self.drawn.append(out.clone())
                return out
            self.module.randn_tensor = wrapper
        return self

    def __exit__(self, *exc):
        if self.orig is not None:
            self.module.randn_tensor = self.orig

    def take(self):
        d, self.drawn = self.drawn, []
        return d


NOISE_SEMANTICS = {
    "ddpm": "noise_i = randn_tensor(eps.shape (the C-channel half after the split), generator) drawn inside step "
            "when timesteps[i] > 0 (not in the last step, t = 0); prev_sample_i = mean_i + std_i * noise_i",
    "euler": "never drawn (s_churn = 0 -> gamma = 0); noise_i zeros, noise_used all false",
    "euler_a": "noise_i = randn_tensor(model_output.shape, generator) drawn in EVERY step after the deterministic "
               "part (also the last, where sigma_up = 0); prev_sample_i = x + d*(sigma_down - sigma) + noise_i*sigma_up",
    "heun": "step() takes no generator; nothing drawn",
    "dpmpp_2m": "only for sde-dpmsolver++: noise_i = randn_tensor(model_output.shape, generator, float32) drawn in "
                "EVERY step (also the last, where its weight sigma_t*sqrt(1-exp(-2h)) is 0), before the update; "
                "dpmsolver++ draws nothing",
    "pndm": "step() takes no generator; nothing drawn",
    "lms": "step() takes no generator; nothing drawn",
    "unipc": "step() takes no generator; nothing drawn",
    "lcm": "noise_i = randn_tensor(model_output.shape, generator) drawn in every step except the last; "
           "prev_sample_i = sqrt(a_prev)*denoised_i + sqrt(1-a_prev)*noise_i; last step prev_sample = denoised",
}

STEP_INFO_TEXT = {
    "ddpm": "t and prev_t (the next timestep in the list, -1 after the last: alpha_prod_prev = 1)",
    "euler": "sigma = sigmas[i], sigma_next = sigmas[i+1] (float64 of the float32 values)",
    "euler_a": "sigma, sigma_next = sigmas[i], sigmas[i+1]; sigma_up, sigma_down (float64 re-computation)",
    "heun": "stage 1 = Euler step from sigma to sigma_next (derivative saved); stage 2 = correction: the model was "
            "evaluated at sigma_next on the stage-1 result; prev = x_stage1_input + (d1 + d2)/2 * (sigma_next - sigma)",
    "dpmpp_2m": "order of the update used in this step (warm-up, lower_order_final)",
    "pndm": "phase prk (rk_stage 0-3 of one Runge-Kutta step; every stage steps from the rk_stage-0 sample at t "
            "to prev_t) or plms (combination = number of stored outputs used: 1, 2, 3, 4 -> Adams-Bashforth "
            "order; avg2 = the skip_prk second iteration that averages the first two outputs and restarts from "
            "sample 0); t / prev_t are the timesteps fed to the update formula",
    "lms": "LMS order used (min(i+1, 4))",
    "unipc": "corrector_order (0 = no corrector in this step; the corrector uses the previous step's order) and "
             "predictor_order",
    "lcm": "t and prev_t (the next timestep; the last step uses prev_t = t and returns the denoised sample)",
}

SCALE_TEXT = {
    "euler": "xin = x / (sigma_i**2 + 1)**0.5 with sigma_i = sigmas[i] (float32 tensor arithmetic)",
    "euler_a": "xin = x / (sigma_i**2 + 1)**0.5 with sigma_i = sigmas[i]",
    "heun": "xin = x / (sigma_i**2 + 1)**0.5 with sigma_i = sigmas[i] (the interleaved sigmas: iteration i uses "
            "sigmas[i])",
    "lms": "xin = x / (sigma_i**2 + 1)**0.5 with sigma_i = sigmas[i]",
}


# ----------------------------------------------------------------------------------------------
# float64 reference implementation (independent of diffusers; checks the traces and documents the formulas)


def ref_betas(cfg) -> np.ndarray:
    n, b0, b1 = cfg["num_train_timesteps"], cfg["beta_start"], cfg["beta_end"]
    if cfg["beta_schedule"] == "linear":
        return np.linspace(b0, b1, n)
    if cfg["beta_schedule"] == "scaled_linear":
        return np.linspace(b0**0.5, b1**0.5, n) ** 2
    if cfg["beta_schedule"] == "squaredcos_cap_v2":
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        return np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    raise ValueError(cfg["beta_schedule"])


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation of the train index in log-sigma (diffusers' _sigma_to_t)."""
    out = []
    for s in np.atleast_1d(sigma):
        ls = math.log(max(s, 1e-10))
        lo = int(np.clip(np.searchsorted(log_sigmas, ls, side="right") - 1, 0, len(log_sigmas) - 2))
        w = (log_sigmas[lo] - ls) / (log_sigmas[lo] - log_sigmas[lo + 1])
        w = min(max(w, 0.0), 1.0)
        out.append((1 - w) * lo + w * (lo + 1))
    return np.array(out)


def karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def k_spacing(cfg, n) -> np.ndarray:
    """Euler / Euler-a / Heun / LMS timesteps (floats)."""
    T = cfg["num_train_timesteps"]
    if cfg["timestep_spacing"] == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if cfg["timestep_spacing"] == "leading":
        return (np.arange(n) * (T // n)).round()[::-1] + cfg["steps_offset"]
    if cfg["timestep_spacing"] == "trailing":
        return np.round(np.arange(T, 0, -T / n)) - 1
    raise ValueError(cfg["timestep_spacing"])


def ms_spacing(cfg, n) -> np.ndarray:
    """DPM-Solver / UniPC timesteps (ints): N+1 points, the last (0) dropped."""
    T = cfg["num_train_timesteps"]
    if cfg["timestep_spacing"] == "linspace":
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].copy()
    if cfg["timestep_spacing"] == "leading":
        return (np.arange(n + 1) * (T // (n + 1))).round()[::-1][:-1] + cfg["steps_offset"]
    if cfg["timestep_spacing"] == "trailing":
        return np.arange(T, 0, -T / n).round() - 1
    raise ValueError(cfg["timestep_spacing"])


def ref_schedule(kind, cfg, ac, n):
    """(timesteps, sigmas or None, init_noise_sigma) in float64 from alphas_cumprod `ac`."""
    T = cfg["num_train_timesteps"]
    full = np.sqrt((1 - ac) / ac)
    logs = np.log(full)
    if kind in ("euler", "euler_a", "heun", "lms"):
        ts = k_spacing(cfg, n)
        if kind == "euler" and cfg["interpolation_type"] == "log_linear":
            sig = np.exp(np.linspace(np.log(full[-1]), np.log(full[0]), n + 1))
        else:
            sig = np.interp(ts, np.arange(T), full)
        if cfg.get("use_karras_sigmas"):
            sig = karras(sig[-1], sig[0], n)
            ts = sigma_to_t(sig, logs)
        last = full[0] if (kind == "euler" and cfg["final_sigmas_type"] == "sigma_min") else 0.0
        sig = np.append(sig, last)
        if kind == "heun":  # every sigma but the first and the last twice; every timestep but the first twice
            sig = np.concatenate([sig[:1], np.repeat(sig[1:-1], 2), sig[-1:]])
            ts = np.concatenate([ts[:1], np.repeat(ts[1:], 2)])
        init = sig.max() if cfg["timestep_spacing"] in ("linspace", "trailing") else math.sqrt(sig.max() ** 2 + 1)
        return ts, sig, init
    if kind in ("dpmpp_2m", "unipc"):
        ts = ms_spacing(cfg, n)
        if cfg["use_karras_sigmas"]:
            sig = karras(full[0], full[-1], n)
            ts = sigma_to_t(sig, logs)
            if kind == "unipc" or cfg["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
            ts = np.trunc(ts)  # astype(int64)
        else:
            sig = np.interp(ts, np.arange(T), full)
        last = full[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        return ts, np.append(sig, last), 1.0
    if kind == "ddpm":
        ts = k_spacing(cfg, n) if cfg["timestep_spacing"] != "linspace" else np.linspace(0, T - 1, n).round()[::-1]
        return ts, None, 1.0
    if kind == "pndm":
        if cfg["timestep_spacing"] != "leading":
            raise NotImplementedError
        base = (np.arange(n) * (T // n)).round() + cfg["steps_offset"]  # ascending
        if cfg["skip_prk_steps"]:
            ts = np.concatenate([base[:-1], base[-2:-1], base[-1:]])[::-1]
        else:
            prk = np.repeat(base[-4:], 2) + np.tile([0, T // n // 2], 4)
            prk = np.repeat(prk[:-1], 2)[1:-1][::-1]
            ts = np.concatenate([prk, base[:-3][::-1]])
        return ts, None, 1.0
    if kind == "lcm":
        k = T // cfg["original_inference_steps"]
        origin = (np.arange(1, cfg["original_inference_steps"] + 1) * k - 1)[::-1]
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        return origin[idx].astype(np.float64), None, 1.0
    raise ValueError(kind)


def x0_from(pred, mo, x, alpha, sigma):
    """x0 from a model output in VP form x = alpha*x0 + sigma*eps."""
    if pred == "epsilon":
        return (x - sigma * mo) / alpha
    if pred == "sample":
        return mo
    if pred == "v_prediction":
        return alpha * x - sigma * mo
    raise ValueError(pred)


def k_x0(pred, mo, x, s):
    """x0 in sigma (VE) form: x = x0 + s*eps, model saw x/sqrt(s^2+1)."""
    if pred == "epsilon":
        return x - s * mo
    if pred == "sample":
        return mo
    if pred == "v_prediction":
        return mo * (-s / math.sqrt(s * s + 1)) + x / (s * s + 1)
    raise ValueError(pred)


class RefSampler:
    """Float64 re-implementation of each scheduler's step (given the same model output and noise)."""

    def __init__(self, kind, cfg, ac, ts, sig, n):
        self.kind, self.cfg, self.ac, self.ts, self.sig, self.n = kind, cfg, ac, ts, sig, n
        self.outputs, self.lower_order_nums, self.ets, self.counter = [], 0, [], 0
        self.derivs, self.prev = [], None
        self.last_sample, self.this_order = None, None
        self.final_alpha = 1.0 if cfg.get("set_alpha_to_one", True) else ac[0]
        self.info = {}  # what the last step did (orders, stage, timesteps used): recorded as step_info in the json

    def scale(self, i):
        if self.kind in ("euler", "euler_a", "heun", "lms"):
            return 1.0 / math.sqrt(self.sig[i] ** 2 + 1)
        return 1.0

    # -- per family --------------------------------------------------------------------------
    def step(self, i, x, mo, noise):
        return getattr(self, "step_" + self.kind)(i, x, mo, noise)

    def step_ddpm(self, i, x, mo, noise):
        cfg, ac, t = self.cfg, self.ac, int(self.ts[i])
        C = x.shape[1]
        mo, v = mo[:, :C], mo[:, C:]
        prev_t = int(self.ts[i + 1]) if i + 1 < len(self.ts) else -1
        a_t, a_p = ac[t], (ac[prev_t] if prev_t >= 0 else 1.0)
        self.info = {"t": t, "prev_t": prev_t}
        cur_alpha = a_t / a_p
        beta_t = 1 - cur_alpha
        x0 = x0_from(cfg["prediction_type"], mo, x, math.sqrt(a_t), math.sqrt(1 - a_t))
        if cfg["clip_sample"]:
            x0 = np.clip(x0, -cfg["clip_sample_range"], cfg["clip_sample_range"])
        mean = (math.sqrt(a_p) * beta_t / (1 - a_t)) * x0 + (math.sqrt(cur_alpha) * (1 - a_p) / (1 - a_t)) * x
        if t == 0:
            return mean
        post = max((1 - a_p) / (1 - a_t) * beta_t, 1e-20)
        if cfg["variance_type"] == "learned":
            std = np.sqrt(v)
        else:  # learned_range
            frac = (v + 1) / 2
            std = np.exp(0.5 * (frac * math.log(beta_t) + (1 - frac) * math.log(post)))
        return mean + std * noise

    def step_euler(self, i, x, mo, noise):
        s, s_next = self.sig[i], self.sig[i + 1]
        self.info = {"sigma": s, "sigma_next": s_next}
        x0 = k_x0(self.cfg["prediction_type"], mo, x, s)
        return x + (x - x0) / s * (s_next - s)

    def step_euler_a(self, i, x, mo, noise):
        s, s_to = self.sig[i], self.sig[i + 1]
        x0 = k_x0(self.cfg["prediction_type"], mo, x, s)
        up = math.sqrt(s_to**2 * (s**2 - s_to**2) / s**2)
        down = math.sqrt(s_to**2 - up**2)
        self.info = {"sigma": s, "sigma_next": s_to, "sigma_up": up, "sigma_down": down}
        return x + (x - x0) / s * (down - s) + noise * up

    def step_heun(self, i, x, mo, noise):
        if i % 2 == 0:  # first order (Euler) step from sigmas[i] to sigmas[i+1]
            s, s_next = self.sig[i], self.sig[i + 1]
            self.info = {"stage": 1, "sigma": s, "sigma_next": s_next}
            d = (x - k_x0(self.cfg["prediction_type"], mo, x, s)) / s
            self.prev = (d, s_next - s, x)
            return x + d * (s_next - s)
        s_next = self.sig[i]  # second (correction) evaluation at sigmas[i] = the sigma the Euler step went to
        d1, dt, x_start = self.prev
        self.info = {"stage": 2, "sigma": self.sig[i - 1], "sigma_next": s_next}
        d2 = (x - k_x0(self.cfg["prediction_type"], mo, x, s_next)) / s_next
        self.prev = None
        return x_start + (d1 + d2) / 2 * dt

    def step_lms(self, i, x, mo, noise, order=4):
        s = self.sig[i]
        self.derivs.append((x - k_x0(self.cfg["prediction_type"], mo, x, s)) / s)
        self.derivs = self.derivs[-order:]
        order = min(i + 1, order)
        self.info = {"order": order}
        out = x.copy()
        for j in range(order):  # coefficient j multiplies the derivative from j steps ago
            poly = np.polynomial.Polynomial([1.0])
            for k in range(order):
                if k != j:
                    poly = poly * np.polynomial.Polynomial([-self.sig[i - k], 1.0]) / (self.sig[i - j] - self.sig[i - k])
            integ = poly.integ()
            coeff = integ(self.sig[i + 1]) - integ(self.sig[i])
            out = out + coeff * self.derivs[-1 - j]
        return out

    def _alpha_sigma(self, s):
        a = 1 / math.sqrt(s * s + 1)
        return a, s * a

    def _lam(self, s):
        if s == 0:
            return math.inf
        a, sg = self._alpha_sigma(s)
        return math.log(a) - math.log(sg)

    def step_dpmpp_2m(self, i, x, mo, noise):
        cfg, n = self.cfg, self.n
        sde = cfg["algorithm_type"] == "sde-dpmsolver++"
        a_s, s_s = self._alpha_sigma(self.sig[i])
        m = x0_from(cfg["prediction_type"], mo, x, a_s, s_s)
        self.outputs = (self.outputs + [m])[-cfg["solver_order"]:]
        lof = i == n - 1 and ((cfg["lower_order_final"] and n < 15) or cfg["final_sigmas_type"] == "zero")
        los = i == n - 2 and cfg["lower_order_final"] and n < 15
        if cfg["solver_order"] == 1 or self.lower_order_nums < 1 or lof:
            order = 1
        elif cfg["solver_order"] == 2 or self.lower_order_nums < 2 or los:
            order = 2
        else:
            order = 3
        self.info = {"order": order}
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg["solver_order"])
        a_t, s_t = self._alpha_sigma(self.sig[i + 1])
        lam_t, lam_0 = self._lam(self.sig[i + 1]), self._lam(self.sig[i])
        h = lam_t - lam_0
        em = math.exp(-h)
        e2 = math.exp(-2 * h)
        if order == 1:
            D = [m]
        else:
            lam_1 = self._lam(self.sig[i - 1])
            r0 = (lam_0 - lam_1) / h
            m0, m1 = self.outputs[-1], self.outputs[-2]
            if order == 2:
                D = [m0, (m0 - m1) / r0]
            else:
                lam_2 = self._lam(self.sig[i - 2])
                r1 = (lam_1 - lam_2) / h
                m2 = self.outputs[-3]
                D1_0, D1_1 = (m0 - m1) / r0, (m1 - m2) / r1
                D = [m0, D1_0 + r0 / (r0 + r1) * (D1_0 - D1_1), (D1_0 - D1_1) / (r0 + r1)]
        ratio = s_t / s_s
        if not sde:
            out = ratio * x - a_t * (em - 1) * D[0]
            if order == 2:
                out = out - 0.5 * a_t * (em - 1) * D[1]
            elif order == 3:
                out = out + a_t * ((em - 1) / h + 1) * D[1] - a_t * ((em - 1 + h) / h**2 - 0.5) * D[2]
            return out
        out = ratio * em * x + a_t * (1 - e2) * D[0] + s_t * math.sqrt(1 - e2) * noise
        if order == 2:
            out = out + 0.5 * a_t * (1 - e2) * D[1]
        elif order == 3:
            out = out + a_t * ((1 - e2) / (-2 * h) + 1) * D[1] + a_t * ((1 - e2 - 2 * h) / (2 * h) ** 2 - 0.5) * D[2]
        return out

    def _unipc_coeffs(self, rks, h, order, predictor):
        hh = -h if self.cfg["predict_x0"] else h
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        B_h = hh if self.cfg["solver_type"] == "bh1" else math.expm1(hh)
        fact = 1
        R, b = [], []
        for k in range(1, order + 1):
            R.append(np.power(rks, k - 1))
            b.append(h_phi_k * fact / B_h)
            fact *= k + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        R, b = np.array(R), np.array(b)
        if predictor:
            rhos = np.array([0.5]) if order == 2 else (np.linalg.solve(R[:-1, :-1], b[:-1]) if order > 2 else None)
        else:
            rhos = np.array([0.5]) if order == 1 else np.linalg.solve(R, b)
        return h_phi_1, B_h, rhos

    def step_unipc(self, i, x, mo, noise):
        cfg, n = self.cfg, self.n
        a0, s0 = self._alpha_sigma(self.sig[i])
        if cfg["predict_x0"]:
            m = x0_from(cfg["prediction_type"], mo, x, a0, s0)
        else:
            m = {"epsilon": lambda: mo, "sample": lambda: (x - a0 * mo) / s0,
                 "v_prediction": lambda: a0 * mo + s0 * x}[cfg["prediction_type"]]()
        # corrector (UniC) of the sample the previous step predicted, with this step's model output
        self.info = {"corrector_order": 0}
        if i > 0 and self.last_sample is not None:
            order = self.this_order
            self.info["corrector_order"] = order
            a_t, s_t = self._alpha_sigma(self.sig[i])
            a_p, s_p = self._alpha_sigma(self.sig[i - 1])
            lam_t, lam_p = self._lam(self.sig[i]), self._lam(self.sig[i - 1])
            h = lam_t - lam_p
            m0 = self.outputs[-1]
            rks, D1s = [], []
            for k in range(1, order):
                rk = (self._lam(self.sig[i - (k + 1)]) - lam_p) / h
                rks.append(rk)
                D1s.append((self.outputs[-(k + 1)] - m0) / rk)
            rks.append(1.0)
            h_phi_1, B_h, rhos_c = self._unipc_coeffs(np.array(rks), h, order, predictor=False)
            corr = sum(r * d for r, d in zip(rhos_c[:-1], D1s)) if D1s else 0.0
            xp = self.last_sample
            if cfg["predict_x0"]:
                x = s_t / s_p * xp - a_t * h_phi_1 * m0 - a_t * B_h * (corr + rhos_c[-1] * (m - m0))
            else:
                x = a_t / a_p * xp - s_t * h_phi_1 * m0 - s_t * B_h * (corr + rhos_c[-1] * (m - m0))
        self.outputs = (self.outputs + [m])[-cfg["solver_order"]:]
        order = min(cfg["solver_order"], n - i) if cfg["lower_order_final"] else cfg["solver_order"]
        self.this_order = min(order, self.lower_order_nums + 1)
        order = self.this_order
        self.info["predictor_order"] = order
        self.last_sample = x
        # predictor (UniP)
        a_t, s_t = self._alpha_sigma(self.sig[i + 1])
        lam_t, lam_0 = self._lam(self.sig[i + 1]), self._lam(self.sig[i])
        h = lam_t - lam_0
        m0 = self.outputs[-1]
        rks, D1s = [], []
        for k in range(1, order):
            rk = (self._lam(self.sig[i - k]) - lam_0) / h
            rks.append(rk)
            D1s.append((self.outputs[-(k + 1)] - m0) / rk)
        rks.append(1.0)
        h_phi_1, B_h, rhos_p = self._unipc_coeffs(np.array(rks), h, order, predictor=True)
        pred = sum(r * d for r, d in zip(rhos_p, D1s)) if D1s else 0.0
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg["solver_order"])
        if cfg["predict_x0"]:
            return s_t / s0 * x - a_t * h_phi_1 * m0 - a_t * B_h * pred
        return a_t / a0 * x - s_t * h_phi_1 * m0 - s_t * B_h * pred

    def _pndm_prev(self, x, t, prev_t, eps):
        ac = self.ac
        a_t = ac[t]
        a_p = ac[prev_t] if prev_t >= 0 else self.final_alpha
        if self.cfg["prediction_type"] == "v_prediction":
            eps = math.sqrt(a_t) * eps + math.sqrt(1 - a_t) * x
        denom = a_t * math.sqrt(1 - a_p) + math.sqrt(a_t * (1 - a_t) * a_p)
        return math.sqrt(a_p / a_t) * x - (a_p - a_t) * eps / denom

    def step_pndm(self, i, x, mo, noise):
        cfg, T, n = self.cfg, self.cfg["num_train_timesteps"], self.n
        t = int(self.ts[i])
        c = self.counter
        self.counter += 1
        n_prk = 0 if cfg["skip_prk_steps"] else 12
        if c < n_prk:  # Runge-Kutta: 4 evaluations per full step (t, t-half, t-half, t-full)
            prev_t = t - (0 if c % 2 else T // n // 2)
            t_start = int(self.ts[c // 4 * 4])
            self.info = {"phase": "prk", "rk_stage": c % 4, "t": t_start, "prev_t": prev_t,
                         "x": "sample of rk_stage 0 (iteration %d)" % (c // 4 * 4)}
            if c % 4 == 0:
                self.rk_sum = mo / 6
                self.ets.append(mo)
                self.rk_x = x
            elif c % 4 in (1, 2):
                self.rk_sum = self.rk_sum + mo / 3
            else:
                mo = self.rk_sum + mo / 6
            return self._pndm_prev(self.rk_x, t_start, prev_t, mo)
        prev_t = t - T // n
        if c != 1:
            self.ets = self.ets[-3:] + [mo]
        else:  # skip_prk: the second iteration redoes step 1 with the average of both outputs
            prev_t, t = t, t + T // n
        e = self.ets
        self.info = {"phase": "plms", "t": t, "prev_t": prev_t,
                     "x": "sample of iteration 0" if (len(e) == 1 and c == 1) else "sample_i",
                     "combination": len(e) if c != 1 else "avg2"}
        if len(e) == 1 and c == 0:
            self.plms_x = x
        elif len(e) == 1 and c == 1:
            mo = (mo + e[-1]) / 2
            x = self.plms_x
        elif len(e) == 2:
            mo = (3 * e[-1] - e[-2]) / 2
        elif len(e) == 3:
            mo = (23 * e[-1] - 16 * e[-2] + 5 * e[-3]) / 12
        else:
            mo = (55 * e[-1] - 59 * e[-2] + 37 * e[-3] - 9 * e[-4]) / 24
        return self._pndm_prev(x, t, prev_t, mo)

    def step_lcm(self, i, x, mo, noise):
        cfg, ac, n = self.cfg, self.ac, self.n
        t = int(self.ts[i])
        prev_t = int(self.ts[i + 1]) if i + 1 < n else t
        a_t, a_p = ac[t], ac[prev_t]
        self.info = {"t": t, "prev_t": prev_t}
        x0 = x0_from(cfg["prediction_type"], mo, x, math.sqrt(a_t), math.sqrt(1 - a_t))
        st = t * cfg["timestep_scaling"]
        c_skip = 0.25 / (st * st + 0.25)
        c_out = st / math.sqrt(st * st + 0.25)
        den = c_out * x0 + c_skip * x
        if i == n - 1:
            return den
        return math.sqrt(a_p) * den + math.sqrt(1 - a_p) * noise


# ----------------------------------------------------------------------------------------------
# the loop


def make_sched(name: str, overrides: dict):
    cls = CLASSES[name]
    return cls.from_config(cls().config, **overrides)


def step_kwargs(sched, generator):
    return {"generator": generator} if "generator" in inspect.signature(sched.step).parameters else {}


@torch.no_grad()
def trace_case(name: str, kind: str, overrides: dict, steps: int, seed: int):
    cls = CLASSES[kind]
    sched = make_sched(kind, overrides)
    cfg = clean_config(sched.config)
    variance_type = cfg.get("variance_type") if kind == "ddpm" else None
    sched.set_timesteps(steps)
    timesteps = sched.timesteps.clone()
    sigmas = sched.sigmas.clone() if hasattr(sched, "sigmas") and kind not in ("ddpm", "pndm", "lcm") else None
    init_sigma = sched.init_noise_sigma
    g = torch.Generator().manual_seed(seed)
    start_rng = randn_tensor(SHAPE, generator=g)
    x = start_rng * init_sigma
    start = x.clone()
    kw = step_kwargs(sched, g)
    tensors = {"start_rng": start_rng, "start": start, "timesteps": timesteps.to(torch.float32),
               "alphas_cumprod": sched.alphas_cumprod.clone()}
    if sigmas is not None:
        tensors["sigmas"] = sigmas
    noise_used, input_scale, input_exact = [], [], []
    with NoiseRecorder(cls) as rec:
        for i, t in enumerate(sched.timesteps):
            xin = sched.scale_model_input(x, t)
            mo = toy_model(xin, t, variance_type)
            out = sched.step(mo, t, x, **kw).prev_sample
            drawn = rec.take()
            assert len(drawn) <= 1, (name, i, len(drawn))
            # scale_model_input must be a pure scalar scaling: xin = x * s
            s = float((xin.double() * x.double()).sum() / (x.double() ** 2).sum())
            assert float((xin.double() - s * x.double()).abs().max()) <= 1e-6 * float(x.abs().max()), (name, i)
            if kind in SCALE_TEXT:
                sig = sched.sigmas[i]
                exact = torch.equal(xin, x / ((sig**2 + 1) ** 0.5))
                s = 1.0 / float((sig**2 + 1) ** 0.5)
            else:
                exact = xin is x or torch.equal(xin, x)
                s = 1.0
            assert exact, (name, i)
            input_scale.append(s)
            input_exact.append(exact)
            tensors[f"sample_{i}"] = x
            tensors[f"model_input_{i}"] = xin
            tensors[f"model_output_{i}"] = mo
            tensors[f"noise_{i}"] = drawn[0] if drawn else torch.zeros(SHAPE)
            tensors[f"prev_sample_{i}"] = out
            noise_used.append(bool(drawn))
            x = out
    tensors["final"] = x
    assert torch.isfinite(x).all(), name

    # ---- independent float64 check
    ac = sched.alphas_cumprod.double().numpy()
    ac_ref = np.cumprod(1 - ref_betas(cfg))
    assert np.allclose(np.sqrt((1 - ac_ref) / ac_ref), np.sqrt((1 - ac) / ac), rtol=1e-3, atol=0), (name, "betas")
    ts_ref, sig_ref, init_ref = ref_schedule(kind, cfg, ac, steps)
    assert len(ts_ref) == len(timesteps), (name, len(ts_ref), len(timesteps))
    assert np.abs(ts_ref - timesteps.double().numpy()).max() <= 1e-3, (name, ts_ref, timesteps)
    if sigmas is not None:
        assert np.allclose(sig_ref, sigmas.double().numpy(), rtol=2e-5, atol=1e-7), (name, sig_ref, sigmas)
    assert abs(init_ref - float(init_sigma)) <= 2e-5 * init_ref, (name, init_ref, init_sigma)
    ref = RefSampler(kind, cfg, ac, timesteps.double().numpy(),
                     sigmas.double().numpy() if sigmas is not None else None, steps)
    step_info = []
    for i in range(len(timesteps)):
        xs = tensors[f"sample_{i}"].double().numpy()
        assert abs(ref.scale(i) - input_scale[i]) <= 1e-6, (name, i)
        got = ref.step(i, xs, tensors[f"model_output_{i}"].double().numpy(), tensors[f"noise_{i}"].double().numpy())
        want = tensors[f"prev_sample_{i}"].double().numpy()
        scale = max(1.0, float(np.abs(xs).max()), float(np.abs(want).max()))
        err = float(np.abs(got - want).max())
        assert err <= 1e-5 * scale, (name, i, err, scale)
        step_info.append(ref.info)

    meta = {
        "scheduler": kind,
        "case": name,
        "diffusers_class": cls.__name__,
        "description": CASES[name][4],
        "config": cfg,
        "overrides": overrides,
        "steps": steps,
        "iterations": len(timesteps),
        "seed": seed,
        "shape": list(SHAPE),
        "timesteps": [int(v) for v in timesteps] if not timesteps.is_floating_point() else [float(v) for v in timesteps],
        "timesteps_dtype": str(timesteps.dtype).replace("torch.", ""),
        "sigmas": [float(v) for v in sigmas] if sigmas is not None else None,
        "init_noise_sigma": f32(init_sigma),
        "input_scale": input_scale,
        "scale_model_input": SCALE_TEXT.get(kind, "identity: xin = x (scale_model_input returns its input)"),
        "input_scale_semantics": ("input_scale[i] = model_input_i / sample_i, a single scalar per iteration (checked); "
                                  "for the sigma schedulers it is 1/float32((sigmas[i]**2 + 1)**0.5) and model_input_i "
                                  "== sample_i / float32((sigmas[i]**2 + 1)**0.5) bitwise (a float32 DIVISION)"),
        "noise_used": noise_used,
        "noise_semantics": NOISE_SEMANTICS[kind],
        "step_info": step_info,
        "step_info_semantics": STEP_INFO_TEXT[kind],
        "toy_model": TOY_TEXT,
        "final_scale": float(x.abs().max()),
        "loop": (
            "sched = Cls.from_config(Cls().config, **overrides); sched.set_timesteps(steps); g = torch.Generator()"
            ".manual_seed(seed); start_rng = randn_tensor(shape, generator=g) (= torch.randn); start = start_rng * "
            "init_noise_sigma; for i, t in enumerate(sched.timesteps): model_input_i = scale_model_input(sample_i, t); "
            "model_output_i = toy(model_input_i, t); prev_sample_i = step(model_output_i, t, sample_i[, generator=g])"
            ".prev_sample (generator passed only where step() accepts one); sample_{i+1} = prev_sample_i; final = the "
            "last prev_sample"),
        "tensors": (
            "float32: start_rng, start, timesteps (float32 copy of the scheduler's timesteps, dtype in "
            "timesteps_dtype), alphas_cumprod [num_train_timesteps], sigmas (if the class has them, as held after "
            "set_timesteps, including the appended final sigma), final, and per iteration i: sample_i, model_input_i, "
            "model_output_i, noise_i (zeros when noise_used[i] is false), prev_sample_i"),
    }
    return tensors, meta


def make_trace_fixtures(out: Path) -> dict:
    summary = {}
    for name, (kind, overrides, steps, seed, description) in CASES.items():
        tensors, meta = trace_case(name, kind, overrides, steps, seed)
        save_tensors(out / f"{name}.safetensors", tensors)
        write_json(out / f"{name}.json", meta)
        summary[name] = (meta["iterations"], sum(meta["noise_used"]), meta["final_scale"], description)
    return summary


# ----------------------------------------------------------------------------------------------
# whole seeded runs on the random UNet fixture

RUN_MODEL = "plain"
# The random UNet is no noise predictor: with prediction_type epsilon, x0 = (x - sigma_t*eps)/alpha_t at t = 999
# (alpha_t = 0.006) is ~150x the net's output and the runs end at |final| ~ 660, where float32 rounding alone moves
# `final` by more than 1e-4. As a v-predictor (x0 = alpha*x - sigma*v, bounded) the same net gives |final| ~ 3-5 and
# runs that move by ~1e-6 under the start perturbation, so every run uses prediction_type v_prediction; the epsilon
# (and sample) paths of every scheduler are covered step by step by the toy traces.
V = {"prediction_type": "v_prediction"}
# case -> (scheduler, overrides, steps, description)
RUN_CASES = {
    "euler": ("euler", dict(V), 10, "EulerDiscreteScheduler defaults + v_prediction, 10 steps"),
    "euler_a": ("euler_a", dict(V), 10, "EulerAncestralDiscreteScheduler defaults + v_prediction, 10 steps (noise in "
                "every step)"),
    "dpmpp_2m": ("dpmpp_2m", dict(V), 10, "DPMSolverMultistepScheduler defaults (dpmsolver++, order 2) + "
                 "v_prediction, 10 steps"),
    "dpmpp_2m_sde_karras": ("dpmpp_2m", {**V, "algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, 10,
                            "sde-dpmsolver++ order 2 with Karras sigmas + v_prediction, 10 steps (noise in every step)"),
    "heun": ("heun", dict(V), 10, "HeunDiscreteScheduler defaults + v_prediction, 10 steps = 19 unet evaluations"),
    "unipc": ("unipc", dict(V), 10, "UniPCMultistepScheduler defaults (bh2, order 2) + v_prediction, 10 steps"),
    "lms": ("lms", dict(V), 10, "LMSDiscreteScheduler defaults (order 4) + v_prediction, 10 steps"),
    "pndm": ("pndm", dict(V), 10, "PNDMScheduler defaults (PRK warm-up) + v_prediction, 10 steps = 19 unet "
             "evaluations; identical to diffusers' PNDMPipeline"),
    "lcm": ("lcm", dict(V), 4, "LCMScheduler defaults + v_prediction, 4 steps (noise in the first 3)"),
}
# img2img runs: case -> (scheduler, overrides, steps, strength, description). The init image x0 is
# uniform in [-1, 1) from its own generator (seed 1234); the run follows diffusers' img2img pipelines:
# init_timestep = min(int(steps * strength), steps), t_start = steps - init_timestep, timesteps =
# scheduler.timesteps[t_start * order:], set_begin_index(t_start * order) where the class has it, noise =
# randn(shape, generator) (the first draw: pixel space, no VAE), x = add_noise(x0, noise, timesteps[:1]).
IMG2IMG_CASES = {
    "ddim_img2img": ("ddim", {**V, "clip_sample": False}, 20, 0.6, "DDIM 20 steps, strength 0.6 (12 steps run)"),
    "ddpm_img2img": ("ddpm", {**V, "clip_sample": False}, 20, 0.5, "DDPM 20 steps, strength 0.5 (noise in every step but t = 0)"),
    "euler_img2img": ("euler", dict(V), 10, 0.7, "Euler 10 steps, strength 0.7 (add_noise x0 + sigma * noise)"),
    "euler_a_img2img": ("euler_a", dict(V), 10, 0.45, "Euler-a 10 steps, strength 0.45 (int(4.5) = 4 steps)"),
    "heun_img2img": ("heun", dict(V), 10, 0.5, "Heun 10 steps, strength 0.5 (begin index 5 * order 2)"),
    "dpmpp_2m_img2img": ("dpmpp_2m", dict(V), 10, 0.6, "DPM-Solver++(2M) 10 steps, strength 0.6"),
    "unipc_img2img": ("unipc", dict(V), 10, 0.6, "UniPC 10 steps, strength 0.6"),
    "lms_img2img": ("lms", dict(V), 10, 0.6, "LMS 10 steps, strength 0.6"),
    "pndm_img2img": ("pndm", {**V, "skip_prk_steps": True}, 10, 0.6, "PLMS (skip_prk_steps) 10 steps, strength 0.6"),
}


# A network with learned variances (improved DDPM): unet/plain with out_channels 6, its conv_out
# extended by a second, small random block (v = 0.1-scaled) that predicts the variance interpolation.
LEARNED_CASES = {
    "ddpm_learned_range_unet": ("ddpm", {**V, "variance_type": "learned_range", "clip_sample": False}, 10,
                                "DDPM learned_range on a 3 -> 6 channel UNet (unet/plain + a variance head), 10 steps"),
    "ddpm_learned_unet": ("ddpm", {**V, "variance_type": "learned", "clip_sample": False}, 10,
                          "DDPM learned (the head's output is the variance) on a 3 -> 6 channel UNet, 10 steps"),
}


def learned_unet(plain_dir: Path, variance_type: str) -> UNet2DModel:
    base = UNet2DModel.from_pretrained(plain_dir, torch_dtype=torch.float32)
    cfg = dict(base.config)
    cfg["out_channels"] = 2 * cfg["in_channels"]
    unet = UNet2DModel.from_config(cfg)
    state = base.state_dict()
    g = torch.Generator().manual_seed(4321)
    w, b = state["conv_out.weight"], state["conv_out.bias"]
    extra_w = torch.randn(w.shape, generator=g) * 0.1 * w.abs().mean()
    extra_b = torch.rand(b.shape, generator=g) * 0.5 - 0.25
    if variance_type == "learned":  # the head's output is the variance itself: keep it positive, ~beta
        extra_w, extra_b = extra_w * 0.01, torch.full(b.shape, 0.02)
    state["conv_out.weight"] = torch.cat([w, extra_w])
    state["conv_out.bias"] = torch.cat([b, extra_b])
    unet.load_state_dict(state)
    return unet.eval()


def init_image(shape) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(1234)) * 2 - 1


@torch.no_grad()
def run_unet(unet, kind, overrides, steps, seed, perturb=None, strength=None):
    sched = make_sched(kind, overrides)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    shape = (1, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    timesteps = sched.timesteps
    start_rng = randn_tensor(shape, generator=g)
    if strength is None:
        init = sched.init_noise_sigma
        start = start_rng * init
    else:
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = sched.timesteps[t_start * sched.order:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)
        init = 1.0
        start = sched.add_noise(init_image(shape), start_rng, timesteps[:1])
    x = start if perturb is None else start + perturb * init
    kw = step_kwargs(sched, g)
    for t in timesteps:
        xin = sched.scale_model_input(x, t)
        eps = unet(xin, t).sample
        x = sched.step(eps, t, x, **kw).prev_sample
    return start_rng, start, x, (sched, timesteps)


def make_run_fixtures(out: Path, fixtures: Path) -> dict:
    root = out / "runs"
    root.mkdir(parents=True)
    model_dir = fixtures / "unet" / RUN_MODEL
    unet = UNet2DModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    summary = {}
    cases = {name: (kind, overrides, steps, None, d) for name, (kind, overrides, steps, d) in RUN_CASES.items()}
    cases.update(IMG2IMG_CASES)
    cases.update({name: (kind, o, steps, None, d) for name, (kind, o, steps, d) in LEARNED_CASES.items()})
    plain_unet = unet
    for name, (kind, overrides, steps, strength, description) in cases.items():
        learned = name in LEARNED_CASES
        unet = learned_unet(model_dir, overrides["variance_type"]) if learned else plain_unet
        chosen, tried = None, []
        for seed in range(20):
            start_rng, start, final, sched = run_unet(unet, kind, overrides, steps, seed, strength=strength)
            if not torch.isfinite(final).all():
                tried.append((seed, float("inf")))
                continue
            d = torch.randn(start.shape, generator=torch.Generator().manual_seed(10_000 + seed))
            d = d / d.abs().max()
            _, _, final_p, _ = run_unet(unet, kind, overrides, steps, seed, perturb=1e-6 * d, strength=strength)
            sens = float((final - final_p).abs().max())
            tried.append((seed, sens))
            if sens < 1e-4 and (chosen is None or sens < chosen[-1]):
                chosen = (seed, start_rng, start, final, sched, sens)
            if chosen is not None and seed >= 3:  # best of the first four seeds that are well-conditioned
                break
        assert chosen is not None, (name, tried)
        seed, start_rng, start, final, (sched, ts), sens = chosen
        if kind == "pndm" and strength is None:  # the pipeline itself must give the same image
            pipe = PNDMPipeline(unet=unet, scheduler=make_sched(kind, overrides))
            pipe.set_progress_bar_config(disable=True)
            img = pipe(batch_size=1, generator=torch.Generator().manual_seed(seed), num_inference_steps=steps,
                       output_type="np").images
            mine = (final / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            assert float(np.abs(img - mine).max()) <= 1e-6, name
        d = root / name
        d.mkdir()
        if learned:
            unet.save_pretrained(d / "model", safe_serialization=True)
        tensors = {"start_rng": start_rng, "start": start, "timesteps": ts.to(torch.float32), "final": final}
        if strength is not None:
            tensors["init_image"] = init_image(start.shape)
        save_tensors(d / "expected.safetensors", tensors)
        h = w = unet.config.sample_size
        run = {
            "model": "model" if learned else f"../../../unet/{RUN_MODEL}",
            "scheduler": kind,
            "diffusers_class": CLASSES[kind].__name__,
            "scheduler_config": overrides,
            "scheduler_config_full": clean_config(sched.config),
            "steps": steps,
            "iterations": len(ts),
            "timesteps": [int(v) for v in ts] if not ts.is_floating_point() else [float(v) for v in ts],
            "seed": seed,
            **({} if strength is None else {"strength": strength}),
            "batch": 1,
            "height": h,
            "width": w,
            "init_noise_sigma": f32(sched.init_noise_sigma),
            "sensitivity": sens,
            "tolerance": max(1e-3, 10 * sens),
            "final_scale": float(final.abs().max()),
            "seeds_tried": tried,
            "description": description,
            "notes": (
                "scheduler = Cls.from_config(Cls().config, **scheduler_config); scheduler.set_timesteps(steps); "
                "generator = torch.Generator('cpu').manual_seed(seed); start_rng = torch.randn((batch, in_channels, "
                "height, width), generator); start = start_rng * init_noise_sigma; for t in timesteps: xin = "
                "scale_model_input(x, t); eps = unet(xin, t).sample; x = step(eps, t, x[, generator=generator])"
                ".prev_sample (generator only where step() accepts one: DDPM, Euler, Euler-a, DPM-Solver, LCM). "
                "`final` is x after the last step (no (x/2+0.5).clamp). sensitivity = max |final - final'| where "
                "final' starts from start + 1e-6*init_noise_sigma*d (d random, max|d| = 1; i.e. start_rng perturbed "
                "by 1e-6*d: for the sigma-space schedulers an absolute 1e-6 would vanish in the float32 rounding of "
                "start ~ 400); tolerance = max(1e-3, 10*sensitivity) is the max-abs error allowed on `final`."),
        }
        write_json(d / "run.json", run)
        summary[name] = (seed, sens, float(final.abs().max()), description)
    return summary


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "Tests" / "Fixtures" / "samplers")
    ap.add_argument("--fixtures", type=Path, default=REPO / "Tests" / "Fixtures",
                    help="where unet/plain is read from")
    args = ap.parse_args()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__} -> {out}")
    for name, (iters, drawn, scale, desc) in make_trace_fixtures(out).items():
        print(f"{name:28s} iterations {iters:2d} noise {drawn:2d} |final| {scale:7.3f}  {desc[:60]}")
    for name, (seed, sens, scale, desc) in make_run_fixtures(out, args.fixtures.resolve()).items():
        print(f"runs/{name:22s} seed {seed:2d} sensitivity {sens:.2e} |final| {scale:8.3f}  {desc[:50]}")


if __name__ == "__main__":
    main()
