"""bench_engines.py's workloads: definitions, model building and caching (random weights, inputs, ONNX
exports under bench/.models/engines[-tiny]/), parameter and GFLOP counting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench_unet  # (the quiet-round machinery and the cifar model)
from bench_unet import CONFIG, TIMESTEP

HERE = Path(__file__).resolve().parent.parent  # bench/
ROOT = HERE.parent
ENGINES = ("libdiffusion", "libdiffusion-bf16", "torch", "onnxruntime", "openvino-f32", "openvino-bf16")
FP32_PEERS = ("torch", "onnxruntime", "openvino-f32")
ONNX_ENGINES = ("onnxruntime", "openvino-f32", "openvino-bf16")
WORKLOADS = ("cifar-b1", "cifar-b8", "unet-sd-widths", "sd15-unet-cfg", "sd15-vae-decode")
# workload -> (model group: one cached folder, kind, batch)
WORKLOAD_MODEL = {
    "cifar-b1": ("cifar", "unet2d", 1),
    "cifar-b8": ("cifar", "unet2d", 8),
    "unet-sd-widths": ("unet-sd-widths", "unet2d", 1),
    "sd15-unet-cfg": ("sd15-unet-cfg", "unet2d-cond", 2),
    "sd15-vae-decode": ("sd15-vae-decode", "vae-decode", 1),
}
MODELS = HERE / ".models"
SD15_PIPELINE = MODELS / "sd15-random"  # tools/make_sd15_random.py (shared with `make bench-sd`)
TINY_SD_PIPELINE = ROOT / "Tests" / "Fixtures" / "sd" / "sd1"  # tiny random SD1 pipeline (F16 UNet, 8x8 latents)
RECIPE = 1  # bump when weights, inputs or exports change: cached folders with another recipe are rebuilt
OPSET = 17
TOKENS = 77  # CLIP text states per prompt
# How tools/make_sd15_random.py builds the SD1.5 UNet and VAE: only for --count-only before the pipeline exists.
SD15_UNET_ARGS = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE_ARGS = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
                     block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                     up_block_types=("UpDecoderBlock2D",) * 4)


def models_root(tiny: bool) -> Path:
    return MODELS / ("engines-tiny" if tiny else "engines")


def sd_pipeline(tiny: bool) -> Path:
    return TINY_SD_PIPELINE if tiny else SD15_PIPELINE


def cifar_config(tiny: bool) -> dict:
    config = json.loads(CONFIG.read_text())
    if tiny:
        config.update(block_out_channels=[32, 64, 64, 64], sample_size=16)
    return config


def sd_widths_config(tiny: bool) -> dict:
    """UNet2DModel at SD1.5's widths. In UNet2DModel attention_head_dim is the width of a head (heads =
    channels / 8: 40, 80, 160 heads); in UNet2DConditionModel the same key is the number of heads."""
    return {
        "_class_name": "UNet2DModel",
        "in_channels": 4,
        "out_channels": 4,
        "sample_size": 16 if tiny else 64,
        "block_out_channels": [32, 64, 128, 128] if tiny else [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "down_block_types": ["AttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["AttnUpBlock2D"] * 3,
        "attention_head_dim": 8,
    }


# ---- shapes, FLOPs, the torch forward (shared by the torch engine, the FLOP count and the ONNX export) -----


def input_names(kind: str) -> list[str]:
    return {"unet2d": ["sample", "timestep"], "unet2d-cond": ["sample", "timestep", "encoder_hidden_states"],
            "vae-decode": ["latents"]}[kind]


def input_shapes(kind: str, config: dict, batch: int, latent_size: int | None = None) -> dict:
    """Input shapes of one call. config: the network's (for vae-decode the VAE's; latent_size its latents' side)."""
    if kind == "unet2d":
        s = config["sample_size"]
        return {"sample": [batch, config["in_channels"], s, s], "timestep": [batch]}
    if kind == "unet2d-cond":
        s = config["sample_size"]
        return {"sample": [batch, config["in_channels"], s, s], "timestep": [batch],
                "encoder_hidden_states": [batch, TOKENS, config["cross_attention_dim"]]}
    return {"latents": [batch, config["latent_channels"], latent_size, latent_size]}


def torch_forward(model, kind: str, t: dict):
    if kind == "unet2d":
        return model(t["sample"], t["timestep"]).sample
    if kind == "unet2d-cond":
        return model(t["sample"], t["timestep"], encoder_hidden_states=t["encoder_hidden_states"]).sample
    # libdiffusion's Model.decode takes latents as the samplers give them (scaled by the VAE's scaling_factor)
    # and returns the decoder's raw output for latents / scaling_factor: the same here.
    return model.decode(t["latents"] / model.config.scaling_factor).sample


def _model_class(kind: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

    return {"unet2d": UNet2DModel, "unet2d-cond": UNet2DConditionModel, "vae-decode": AutoencoderKL}[kind]


def count_flops(kind: str, config: dict, shapes: dict) -> dict:
    """Parameters and FLOPs of one call, on the meta device (no weights, no arithmetic): convolutions, linear
    layers and attention matmuls (torch.utils.flop_counter: convolution, mm/addmm, bmm/SDPA; 2 FLOPs per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = _model_class(kind).from_config(config).eval()
        tensors = {k: torch.full(s, TIMESTEP) if k == "timestep" else torch.empty(s) for k, s in shapes.items()}
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        torch_forward(model, kind, tensors)
    by_op = {str(k): v / 1e9 for k, v in fc.get_flop_counts().get("Global", {}).items()}
    used = [model.post_quant_conv, model.decoder] if kind == "vae-decode" else [model]  # (not the VAE's encoder)
    return {"gflop": fc.get_total_flops() / 1e9, "gflop_by_op": by_op,
            "parameters": sum(p.numel() for m in used for p in m.parameters())}


# ---- preparation (child process per model group: weights, inputs, ONNX, FLOP count; cached) ------------


def _folder_fingerprint(folder: Path) -> list:
    return sorted([str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in folder.rglob("*") if p.is_file())


def export_onnx(model, kind: str, example: dict, path: Path) -> None:
    """torch.onnx.export (TorchScript exporter, opset 17, fixed shapes) to path, weights in path + '.data'.

    The exporter writes one file per tensor when the model is over 2 GB; the model is then loaded and saved
    again with all weights in one external data file. Small models go the same way, so that the --tiny run
    exercises the path of the full-size ones."""
    import warnings

    import onnx
    import torch

    names = input_names(kind)

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return torch_forward(self.m, kind, dict(zip(names, args)))

    tmp = path.parent / "export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    args = tuple(example[n] for n in names)
    kwargs = dict(input_names=names, output_names=["out"], opset_version=OPSET)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(Wrapped(model), args, str(tmp / "model.onnx"), dynamo=False, **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(Wrapped(model), args, str(tmp / "model.onnx"), **kwargs)
    proto = onnx.load(str(tmp / "model.onnx"))  # with its external data, if the exporter wrote any
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    del proto
    shutil.rmtree(tmp)


def ensure_sd_pipeline(tiny: bool, python: str = sys.executable) -> Path:
    pipe = sd_pipeline(tiny)
    if not (pipe / "model_index.json").is_file():
        if tiny:
            raise SystemExit(f"bench: the tiny SD pipeline {pipe} is missing")
        print(f"  making the SD1.5-shaped random pipeline in {pipe} (tools/make_sd15_random.py, ~2 GB) ...",
              flush=True)
        subprocess.run([python, str(ROOT / "tools" / "make_sd15_random.py"), "--out", str(pipe)], check=True)
    return pipe


def prepare(group: str, tiny: bool, threads: int) -> dict:
    """Builds (or finds cached) the model group's folder and returns its meta.json."""
    import gc

    import diffusers
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    folder = models_root(tiny) / group
    key = {"recipe": RECIPE, "group": group, "tiny": tiny, "opset": OPSET, "torch": torch.__version__,
           "diffusers": diffusers.__version__}
    if group == "cifar":
        key["config"] = cifar_config(tiny)
    elif group == "unet-sd-widths":
        key["config"] = sd_widths_config(tiny)
    else:
        pipe = ensure_sd_pipeline(tiny)
        sub = "unet" if group == "sd15-unet-cfg" else "vae"
        key["pipeline"] = str(pipe)
        key["weights"] = _folder_fingerprint(pipe / sub)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and all((folder / f).exists() for f in meta["files"]):
            return meta
    print(f"  building {folder.relative_to(ROOT)} (random weights, inputs, ONNX export) ...", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    meta = {"key": key, "group": group}

    if group == "cifar":
        # bench_unet.py's model: random weights, x (8 images) and the ONNX export (dynamic batch).
        config = cifar_config(tiny)
        bench_unet.build_model(folder, 8, config)
        meta.update(kind="unet2d", lib_path="unet", torch_path="unet", onnx="unet.onnx", inputs={"sample": "x.npy"},
                    files=["unet", "unet.onnx", "x.npy"],
                    model=("google/ddpm-cifar10-32 UNet2DModel" + (" (tiny widths)" if tiny else "")))
        for w in ("cifar-b1", "cifar-b8"):
            meta.setdefault("flops", {})[w] = count_flops("unet2d", config, input_shapes("unet2d", config,
                                                                                         WORKLOAD_MODEL[w][2]))
    elif group == "unet-sd-widths":
        config = sd_widths_config(tiny)
        model, gen = bench_unet.random_unet(config)  # bench_unet.py's random weights (seeds 0 and 1)
        model.save_pretrained(str(folder / "unet"), safe_serialization=True)
        shapes = input_shapes("unet2d", config, 1)
        x = torch.randn(*shapes["sample"], generator=gen)
        np.save(folder / "x.npy", x.numpy())
        export_onnx(model, "unet2d", {"sample": x, "timestep": torch.full((1,), TIMESTEP)}, folder / "model.onnx")
        meta.update(kind="unet2d", lib_path="unet", torch_path="unet", onnx="model.onnx", inputs={"sample": "x.npy"},
                    files=["unet", "model.onnx", "model.onnx.data", "x.npy"],
                    model="UNet2DModel at SD1.5 widths" + (" (tiny widths)" if tiny else ""))
        meta["flops"] = {"unet-sd-widths": count_flops("unet2d", config, shapes)}
        del model
    elif group == "sd15-unet-cfg":
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(str(pipe / "unet"), torch_dtype=torch.float32).eval()
        config = dict(unet.config)
        shapes = input_shapes("unet2d-cond", config, 2)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(*shapes["sample"], generator=gen)
        states = torch.randn(*shapes["encoder_hidden_states"], generator=gen)
        np.save(folder / "x.npy", x.numpy())
        np.save(folder / "states.npy", states.numpy())
        export_onnx(unet, "unet2d-cond", {"sample": x, "timestep": torch.full((2,), TIMESTEP),
                                          "encoder_hidden_states": states}, folder / "model.onnx")
        meta.update(kind="unet2d-cond", lib_path=str(pipe), torch_path=str(pipe / "unet"), onnx="model.onnx",
                    inputs={"sample": "x.npy", "encoder_hidden_states": "states.npy"},
                    files=["model.onnx", "model.onnx.data", "x.npy", "states.npy"],
                    model=f"UNet2DConditionModel of {pipe.relative_to(ROOT)} (F16 on disk, run in f32)")
        meta["flops"] = {"sd15-unet-cfg": count_flops("unet2d-cond", config, shapes)}
        del unet
    else:  # sd15-vae-decode
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(pipe / "vae"), torch_dtype=torch.float32).eval()
        config = dict(vae.config)
        side = json.loads((pipe / "unet" / "config.json").read_text())["sample_size"]  # latents of the default size
        shapes = input_shapes("vae-decode", config, 1, side)
        gen = torch.Generator().manual_seed(3)
        z = torch.randn(*shapes["latents"], generator=gen)
        np.save(folder / "latents.npy", z.numpy())
        export_onnx(vae, "vae-decode", {"latents": z}, folder / "model.onnx")
        meta.update(kind="vae-decode", lib_path=str(pipe), torch_path=str(pipe / "vae"), onnx="model.onnx",
                    inputs={"latents": "latents.npy"}, files=["model.onnx", "model.onnx.data", "latents.npy"],
                    model=f"AutoencoderKL decoder of {pipe.relative_to(ROOT)} (scaling_factor "
                          f"{config['scaling_factor']})")
        meta["flops"] = {"sd15-vae-decode": count_flops("vae-decode", config, shapes)}
        del vae
    gc.collect()
    meta["parameters"] = next(iter(meta["flops"].values()))["parameters"]
    meta["build_seconds"] = time.perf_counter() - t0
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_path)  # written last: an interrupted build is rebuilt next time
    return meta


def count_only(workloads: list[str], tiny: bool) -> int:
    """Parameters and GFLOP of the workloads from their configs alone (meta device: cheap, no weights)."""
    for w in workloads:
        group, kind, batch = WORKLOAD_MODEL[w]
        if group == "cifar":
            config = cifar_config(tiny)
            shapes = input_shapes(kind, config, batch)
        elif group == "unet-sd-widths":
            config = sd_widths_config(tiny)
            shapes = input_shapes(kind, config, batch)
        else:
            pipe = sd_pipeline(tiny)
            unet_path = pipe / "unet" / "config.json"
            if unet_path.is_file():
                unet_config = json.loads(unet_path.read_text())
                vae_config = json.loads((pipe / "vae" / "config.json").read_text())
            else:  # before tools/make_sd15_random.py has run: the configs it uses
                import torch
                from diffusers import AutoencoderKL, UNet2DConditionModel

                with torch.device("meta"):
                    unet_config = dict(UNet2DConditionModel(**SD15_UNET_ARGS).config)
                    vae_config = dict(AutoencoderKL(**SD15_VAE_ARGS).config)
            config = unet_config if kind == "unet2d-cond" else vae_config
            shapes = input_shapes(kind, config, batch, unet_config["sample_size"])
        f = count_flops(kind, config, shapes)
        ops = ", ".join(f"{k.replace('aten.', '')} {v:.1f}" for k, v in sorted(f["gflop_by_op"].items()))
        print(f"{w:<16} {f['parameters'] / 1e6:8.1f} M parameters  {f['gflop']:9.1f} GFLOP  ({ops})  inputs "
              + ", ".join(f"{k} {'x'.join(map(str, s))}" for k, s in shapes.items()))
    return 0

