#!/usr/bin/env python3
"""Check tools/single_file_layout.py (the pure-Python writer of original-layout single-file SD checkpoints)
against diffusers' own single-file loader.

Usage:  bench/.venv/bin/python tools/make_single_file_fixtures.py [--src Tests/Fixtures/sd]

Writes sd1.safetensors, sd2.safetensors (from --src/sd1, --src/sd2) and vae.safetensors (from --src/sd1) with
single_file_layout.write_single_file into a temporary directory (nothing is written into the repo), then checks
(any failure raises; Tests/Fixtures/single_file/README.md describes the files and the results):
  - StableDiffusionPipeline.from_single_file(file, config=folder, local_files_only=True, dtype=float32): unet / vae /
    text_encoder state dicts bitwise equal (as f32) to from_pretrained(folder, dtype=float32), same configs;
  - AutoencoderKL.from_single_file(vae.safetensors, config=folder/vae) likewise against the folder's VAE;
  - stored dtypes (UNet / text encoder as in the folder, VAE F32), and the keys a loader must ignore are present;
  - diffusers' converters produce every model key, and their only keys without a model parameter are the expected
    ones (sd1: embeddings.position_ids; sd2: encoder.layers.<n>.* from the extra resblock);
  - the DDPM alphas_cumprod buffer agrees with diffusers' scheduler to < 1e-6;
  - a second write gives byte-identical files.
"""

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

import diffusers
import transformers
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parent))
import single_file_layout as layout  # noqa: E402

torch.set_num_threads(1)
diffusers_logging.set_verbosity_error()
diffusers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()

REPO = Path(__file__).resolve().parent.parent
DDPM = sorted(layout.ddpm_buffers())
EMA = ["model_ema.decay", "model_ema.diffusion_modelinput_blocks00weight", "model_ema.num_updates"]


class CheckFailed(RuntimeError):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


def ignored_keys(kind: str, n_layers: int) -> list:
    """The keys of a written file that no diffusers model parameter comes from."""
    if kind == "sd1":
        return DDPM + EMA + ["cond_stage_model.transformer.text_model.embeddings.position_ids"]
    p = "cond_stage_model.model."
    block = sorted(f"{p}transformer.resblocks.{n_layers}.{leaf}" for leaf in (
        "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_1.weight",
        "ln_1.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
        "mlp.c_proj.bias"))
    return DDPM + block + [p + "text_projection", p + "logit_scale"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous().view(torch.int32)


def compare_models(name: str, a: torch.nn.Module, b: torch.nn.Module) -> int:
    sa, sb = a.state_dict(), b.state_dict()
    check(set(sa) == set(sb), f"{name}: key sets differ: {sorted(set(sa) ^ set(sb))[:10]}")
    for k in sorted(sa):
        x, y = sa[k], sb[k]
        check(x.shape == y.shape, f"{name}.{k}: shape {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.is_floating_point():
            check(x.dtype == torch.float32 and y.dtype == torch.float32, f"{name}.{k}: dtype {x.dtype} / {y.dtype}")
            check(torch.equal(bits(x), bits(y)), f"{name}.{k}: values differ (max abs "
                  f"{(x.float() - y.float()).abs().max().item():.3g})")
        else:
            check(torch.equal(x, y), f"{name}.{k}: values differ")
    return len(sa)


def cfg(model) -> dict:
    """A diffusers model's config without `_name_or_path` (None after from_single_file, the folder otherwise)."""
    return {k: v for k, v in dict(model.config).items() if k != "_name_or_path"}


def check_pipeline(path: Path, folder: Path) -> dict:
    ref = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    got = StableDiffusionPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, dtype=torch.float32)
    counts = {c: compare_models(c, getattr(got, c), getattr(ref, c)) for c in ("unet", "vae", "text_encoder")}
    for c in ("unet", "vae"):
        check(cfg(getattr(got, c)) == cfg(getattr(ref, c)), f"{c} config differs")
    # transformers config: `_name_or_path` differs, and from_single_file leaves the config's `dtype` at the stored
    # "float16" although the parameters are float32 (compare_models checks the real dtypes)
    tcfg = lambda m: {k: v for k, v in m.config.to_dict().items() if k not in ("_name_or_path", "dtype")}  # noqa: E731
    check(tcfg(got.text_encoder) == tcfg(ref.text_encoder), "text_encoder config differs")
    check(dict(got.scheduler.config) == dict(ref.scheduler.config), "scheduler config differs")
    return counts


def check_vae(path: Path, folder: Path) -> int:
    ref = AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32, local_files_only=True)
    got = AutoencoderKL.from_single_file(
        str(path), config=str(folder / "vae"), local_files_only=True, dtype=torch.float32)
    check(cfg(got) == cfg(ref), "vae config differs")
    return compare_models("vae", got, ref)


def check_converters(tensors: dict, folder: Path, openclip: bool) -> list:
    """diffusers' converters applied to the file: every model key must be produced; returns the converted keys that
    match no model state-dict key."""
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    vae_cfg = AutoencoderKL.load_config(folder / "vae")
    te = CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    cu = sfu.convert_ldm_unet_checkpoint(tensors, unet_cfg)
    cv = sfu.convert_ldm_vae_checkpoint(tensors, vae_cfg)
    if openclip:
        ct = sfu.convert_open_clip_checkpoint(te, tensors, prefix="cond_stage_model.model.")
    else:
        ct = sfu.convert_ldm_clip_checkpoint(tensors)
    ct = {k.removeprefix("text_model."): v for k, v in ct.items()}
    extra = []
    for name, conv, model in (("unet", cu, UNet2DConditionModel.from_config(unet_cfg)),
                              ("vae", cv, AutoencoderKL.from_config(vae_cfg)), ("text_encoder", ct, te)):
        keys = set(model.state_dict())
        check(keys <= set(conv), f"{name}: diffusers' converter does not produce {sorted(keys - set(conv))[:5]}")
        extra += [f"{name}: {k}" for k in sorted(set(conv) - keys)]
    return extra


def check_dtypes(path: Path, folder: Path) -> None:
    with safe_open(str(path), "pt") as s:
        dt = {k: s.get_slice(k).get_dtype() for k in s.keys()}
    unet_dt = {v.dtype for v in layout._weights(folder / "unet", "diffusion_pytorch_model").values()}
    text_dt = {v.dtype for v in layout._weights(folder / "text_encoder", "model").values()}
    got = lambda pre: {v for k, v in dt.items() if k.startswith(pre) and "position_ids" not in k}  # noqa: E731
    check(got("model.diffusion_model.") == unet_dt, f"{path.name}: UNet dtypes {got('model.diffusion_model.')}")
    check(got("cond_stage_model.") == text_dt, f"{path.name}: text encoder dtypes {got('cond_stage_model.')}")
    check(got("first_stage_model.") == {"F32"}, f"{path.name}: VAE dtypes {got('first_stage_model.')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=REPO / "Tests" / "Fixtures" / "sd")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}")
    jobs = {"sd1": args.src / "sd1", "sd2": args.src / "sd2", "vae": args.src / "sd1"}
    with tempfile.TemporaryDirectory() as tmp:
        out = {k: layout.write_single_file(src, Path(tmp) / f"{k}.safetensors", k) for k, src in jobs.items()}
        for k, src in jobs.items():
            again = layout.write_single_file(src, Path(tmp) / f"{k}.again.safetensors", k)
            check(again.read_bytes() == out[k].read_bytes(), f"{k}: a second write differs")
            print(f"{k}.safetensors: {out[k].stat().st_size} bytes, {len(load_file(str(out[k])))} tensors")

        for k in ("sd1", "sd2"):
            folder = jobs[k]
            counts = check_pipeline(out[k], folder)
            print(f"{k}: from_single_file == from_pretrained bitwise: {sum(counts.values())} tensors {counts}")
            check_dtypes(out[k], folder)
            tensors = load_file(str(out[k]))
            n_layers = CLIPTextModel.config_class.from_pretrained(folder / "text_encoder").num_hidden_layers
            ignore = ignored_keys(k, n_layers)
            check(set(ignore) <= set(tensors), f"{k}: missing extra keys {sorted(set(ignore) - set(tensors))}")
            fused = 4 * n_layers if k == "sd2" else 0  # OpenCLIP: q/k/v weight + bias -> in_proj weight + bias
            check(len(tensors) - len(ignore) == sum(counts.values()) - fused, f"{k}: unexpected tensor count")
            extra = check_converters(tensors, folder, openclip=(k == "sd2"))
            if k == "sd1":
                # position_ids converts to `embeddings.position_ids`, a non-persistent buffer in transformers 5
                check(extra == ["text_encoder: embeddings.position_ids"], f"sd1: unexpected converted keys {extra}")
            else:
                check(extra and all(e.startswith(f"text_encoder: encoder.layers.{n_layers}.") for e in extra),
                      f"sd2: unexpected converted keys {extra}")
            print(f"{k}: converters produce every model key; stray converted keys: {len(extra)} {extra[:1]}...; "
                  f"{len(ignore)} keys to ignore")
        n = check_vae(out["vae"], jobs["vae"])
        print(f"vae: AutoencoderKL.from_single_file == folder VAE bitwise: {n} tensors")

        sched = diffusers.DDIMScheduler.from_pretrained(jobs["sd2"] / "scheduler", local_files_only=True)
        diff = (load_file(str(out["sd2"]))["alphas_cumprod"] - sched.alphas_cumprod).abs().max().item()
        check(diff < 1e-6, f"DDPM alphas_cumprod vs scheduler: {diff}")
        print(f"DDPM alphas_cumprod vs diffusers' scheduler: max abs diff {diff:.2g}")
    print("ALL CHECKS PASSED")


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as e:
        print(f"CHECK FAILED: {e}", file=sys.stderr)
        sys.exit(1)
