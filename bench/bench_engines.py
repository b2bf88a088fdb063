"""Every engine side by side on five workloads: libdiffusion vs PyTorch vs ONNX Runtime vs OpenVINO (f32, bf16).

One network evaluation per call, float32 inputs, random weights made under fixed seeds and cached in
bench/.models/engines/ (bench/.models/engines-tiny/ with --tiny) together with the ONNX exports and the
inputs. Every engine runs in its own child process with --threads threads, times each workload in
interleaved rounds (bench_unet.py's machinery: /proc/stat load measurement, quiet rounds pooled) and hands
its output back for the check against torch. Run through `make bench` or
`bash bench/run.sh --engines-bench [options]`; see bench/README.md.

Workloads:
  cifar-b1         google/ddpm-cifar10-32 UNet2DModel (Tests/Fixtures/unet/full_cifar10_config.json), batch 1
  cifar-b8         the same, batch 8
  unet-sd-widths   UNet2DModel at SD1.5 widths (320/640/1280/1280), 64x64, self-attention at 3 levels, batch 1
  sd15-unet-cfg    SD1.5's UNet2DConditionModel as a CFG pair: x 2x4x64x64, t 500, text states 2x77x768
  sd15-vae-decode  SD1.5's AutoencoderKL decoding one 1x4x64x64 latent to 512x512
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import bench_unet  # noqa: E402  (the quiet-round machinery and the cifar model)
from bench_unet import CONFIG, NOISY, TIMESTEP, TOLERANCE, LoadMeter, cpu_model, library_identity, wait_quiet  # noqa: E402

ENGINES = ("libdiffusion", "torch", "onnxruntime", "openvino-f32", "openvino-bf16")
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


# ---- engines (child processes) ---------------------------------------------------------------------------


def _libdiffusion_runner(spec: dict, threads: int, inputs: dict):
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    import diffusion

    model = diffusion.load(spec["lib_path"], threads=threads)
    info = {"version": diffusion.version(), **library_identity(diffusion.library_path())}
    kind = spec["kind"]
    if kind == "unet2d":
        return (lambda i: model.predict(i["sample"], i["timestep"])), info
    if kind == "unet2d-cond":
        return (lambda i: model.predict(i["sample"], i["timestep"], context=i["encoder_hidden_states"])), info
    return (lambda i: model.decode(i["latents"])), info  # divides by scaling_factor itself


def _torch_runner(spec: dict, threads: int, inputs: dict):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    kind = spec["kind"]
    model = _model_class(kind).from_pretrained(spec["torch_path"], torch_dtype=torch.float32).eval()
    info = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
            "mkldnn_enabled": bool(torch.backends.mkldnn.enabled) and torch.backends.mkldnn.is_available()}

    def run(i):
        with torch.inference_mode():
            return torch_forward(model, kind, {k: torch.from_numpy(v) for k, v in i.items()}).numpy()

    return run, info


def _onnxruntime_runner(spec: dict, threads: int, inputs: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(spec["onnx"], so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    info = {"version": ort.__version__, "providers": sess.get_providers(), "inputs": names}
    return (lambda i: sess.run(None, {n: i[n] for n in names})[0]), info


def _ov_value(v) -> str:
    if hasattr(v, "get_type_name"):  # an element type (ov.Type): "f32", "bf16"
        return v.get_type_name()
    try:
        return str(v.astype(str))
    except (AttributeError, TypeError, RuntimeError):
        return str(getattr(v, "value", v))


def _openvino_runner(precision: str):
    def runner(spec: dict, threads: int, inputs: dict):
        import openvino as ov

        def name_of(port):  # (a port may carry several tensor names; one of them is the ONNX input's)
            found = [n for n in port.get_names() if n in inputs]
            if not found:
                raise KeyError(f"OpenVINO input {sorted(port.get_names())} is none of {sorted(inputs)}")
            return found[0]

        core = ov.Core()
        model = core.read_model(spec["onnx"])
        # Static shapes (the cifar export has a symbolic batch axis): what OpenVINO is best at.
        model.reshape({port: ov.PartialShape(list(inputs[name_of(port)].shape)) for port in model.inputs})
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        compiled = core.compile_model(model, "CPU", config)
        # What it will really run in: the compiled model's precision, and each compute node's runtime precision.
        actual = _ov_value(compiled.get_property("INFERENCE_PRECISION_HINT"))
        nodes = {}
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            try:
                layer, prec = _ov_value(rt["layerType"]), _ov_value(rt["runtimePrecision"])
            except (KeyError, RuntimeError, IndexError):
                continue
            if layer in ("Convolution", "GroupConvolution", "MatMul", "FullyConnected", "ScaledDotProductAttention"):
                nodes[prec] = nodes.get(prec, 0) + 1
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        info = {"version": ov.get_version(), "requested_precision": precision, "compiled_precision": actual,
                "compute_node_precisions": nodes, "cpu_capabilities": list(caps),
                "num_threads": _ov_value(compiled.get_property("INFERENCE_NUM_THREADS"))}
        request = compiled.create_infer_request()
        names = [(k, name_of(port)) for k, port in enumerate(compiled.inputs)]

        def run(i):
            request.infer({k: i[n] for k, n in names})
            return request.get_output_tensor(0).data.copy()

        return run, info

    return runner


RUNNERS = {"libdiffusion": _libdiffusion_runner, "torch": _torch_runner, "onnxruntime": _onnxruntime_runner,
           "openvino-f32": _openvino_runner("f32"), "openvino-bf16": _openvino_runner("bf16")}


def time_one(engine: str, spec: dict, threads: int, seconds: float, min_reps: int, max_reps: int,
             result_path: Path) -> None:
    """Loads one workload's model in `engine`, warms it up, times it; writes result_path (+ .npy: the output)."""
    import numpy as np

    inputs = {k: np.load(v) for k, v in spec["input_files"].items()}
    t0 = time.perf_counter()
    run, info = RUNNERS[engine](spec, threads, inputs)
    load_s = time.perf_counter() - t0
    # Warm-up: two calls (allocator, thread pools, lazy init), the second one timed to size N; a single
    # one when it alone takes longer than the timed seconds (the SD workloads: 10-30 s a call).
    t0 = time.perf_counter()
    out = run(inputs)
    once = time.perf_counter() - t0
    warmups = 1
    if once < seconds:
        t0 = time.perf_counter()
        run(inputs)
        once = time.perf_counter() - t0
        warmups = 2
    reps = max(min_reps, min(max_reps, math.ceil(seconds / max(once, 1e-6))))
    times = []
    with LoadMeter() as load:
        for _ in range(reps):
            t0 = time.perf_counter()
            run(inputs)
            times.append(time.perf_counter() - t0)
    np.save(result_path.with_suffix(".npy"), np.asarray(out))
    result_path.write_text(json.dumps({
        "engine": engine, "info": info, "load_s": load_s, "warmups": warmups, "reps": reps,
        "median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
        "times_ms": [v * 1e3 for v in times], "own_cpu_share": load.own_cpu_share, "other_load": load.other_share,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # (the child's, so far)
        "output_shape": list(np.shape(out)),
    }))


def child(engine: str, spec_paths: list[Path], threads: int, seconds: float, min_reps: int, max_reps: int) -> int:
    """One engine on one or more workloads, one after the other (each model freed before the next is loaded).
    Each workload's result goes to result_<engine>.json next to its spec; a workload that raises gets
    {"error": ...} there and the others still run."""
    import gc
    import traceback

    failed = 0
    for spec_path in spec_paths:
        result_path = spec_path.parent / f"result_{engine}.json"
        try:
            time_one(engine, json.loads(spec_path.read_text()), threads, seconds, min_reps, max_reps, result_path)
        except Exception as exc:  # noqa: BLE001 (reported in the table; the run fails at the end)
            traceback.print_exc()
            message = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
            result_path.write_text(json.dumps({"error": message[:500]}))
            failed += 1
        gc.collect()
    return 1 if failed else 0


# ---- parent ----------------------------------------------------------------------------------------------


def _fmt_ms(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def rel_error(got, ref) -> float:
    """max |got - ref| / max |ref|; NaN anywhere gives NaN (np.max propagates it)."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return float("nan")
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def main() -> int:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[8:]))
    ap.add_argument("--workloads", default=env.get("BENCH_WORKLOADS", ",".join(WORKLOADS)),
                    help="comma list (default all five)")
    ap.add_argument("--engines", default=env.get("BENCH_ENGINES", ",".join(ENGINES)), help="comma list (default all)")
    ap.add_argument("--threads", type=int, default=int(env.get("BENCH_THREADS", "2")))
    ap.add_argument("--seconds", type=float, default=None,
                    help="target timed seconds per engine, workload and round (default 2.5; 0.2 with --tiny)")
    ap.add_argument("--min-reps", type=int, default=3, help="timed calls at least (default 3)")
    ap.add_argument("--max-reps", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds (engine order rotates); each workload's quiet rounds are pooled "
                         "(default 3; 1 with --tiny)")
    ap.add_argument("--wait-quiet", type=float, default=float(env.get("BENCH_WAIT_QUIET", "0")), metavar="SECONDS",
                    help="before each child, wait up to SECONDS for other load to drop below 10%%")
    ap.add_argument("--output", default=None, help="JSON with everything (default bench/results-engines.json, "
                                                   "bench/results-engines-tiny.json with --tiny)")
    ap.add_argument("--tiny", action="store_true",
                    help="the same five workloads with tiny widths and sizes (smoke test, about a minute)")
    ap.add_argument("--child-per", choices=("workload", "engine"), default=None,
                    help="a child process per workload and engine (default: the engines of one workload run "
                         "back to back, so their ratios see the same conditions) or per engine and round (all "
                         "workloads in one child: fewer process start-ups; the default with --tiny)")
    ap.add_argument("--count-only", action="store_true",
                    help="print each workload's parameters and GFLOP from its config (no weights, no timing)")
    ap.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 0.2 if args.tiny else float(env.get("BENCH_SECONDS", "2.5"))
    if args.rounds is None:
        args.rounds = 1 if args.tiny else int(env.get("BENCH_ROUNDS", "3"))
    if args.child_per is None:
        args.child_per = "engine" if args.tiny else "workload"

    if args.child:
        return child(args.child, [Path(p) for p in args.spec.split(",")], args.threads, args.seconds,
                     args.min_reps, args.max_reps)
    if args.prepare:
        prepare(args.prepare, args.tiny, args.threads)
        return 0

    workloads = [w for w in args.workloads.split(",") if w]
    engines = [e for e in args.engines.split(",") if e]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r} (known: {', '.join(WORKLOADS)})")
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
    if args.count_only:
        return count_only(workloads, args.tiny)
    output = Path(args.output or HERE / ("results-engines-tiny.json" if args.tiny else "results-engines.json"))

    import numpy as np

    started = time.perf_counter()
    child_env = dict(os.environ)
    # torch, onnxruntime and OpenVINO are given their thread counts explicitly; these only keep stray
    # OpenMP/MKL pools at the same size. OpenBLAS is left alone: libdiffusion sets its threads.
    child_env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    child_env.setdefault("DIFFUSION_LIBRARY", str(ROOT / ".build" / "release" / "libdiffusion.so"))
    if "libdiffusion" in engines and not Path(child_env["DIFFUSION_LIBRARY"]).is_file():
        raise SystemExit(f"bench: {child_env['DIFFUSION_LIBRARY']} not found; run 'make build' first")

    # 1. Models, inputs and exports (cached), one child process per model group.
    print(f"preparing models in {models_root(args.tiny).relative_to(ROOT)}/ (cached) ...", flush=True)
    metas, failures = {}, []
    for group in dict.fromkeys(WORKLOAD_MODEL[w][0] for w in workloads):
        proc = subprocess.run([sys.executable, __file__, "--prepare", group, "--threads", str(args.threads)]
                              + (["--tiny"] if args.tiny else []), env=child_env)
        meta_path = models_root(args.tiny) / group / "meta.json"
        if proc.returncode != 0 or not meta_path.is_file():
            failures.append(f"preparing {group} failed (exit {proc.returncode})")
            print(f"  {failures[-1]}", flush=True)
            continue
        metas[group] = json.loads(meta_path.read_text())
    workloads = [w for w in workloads if WORKLOAD_MODEL[w][0] in metas]

    rounds: list[dict] = []  # rounds[r][workload][engine] = child result (or {"error": ...})
    infos: dict = {}
    with tempfile.TemporaryDirectory(prefix="diffusion-engines-") as tmp:
        tmp = Path(tmp)
        specs = {}
        for w in workloads:
            group, kind, batch = WORKLOAD_MODEL[w]
            meta = metas[group]
            folder = models_root(args.tiny) / group
            wdir = tmp / w
            wdir.mkdir()
            files = {}
            for name, fname in meta["inputs"].items():
                arr = np.load(folder / fname)[:batch]
                np.save(wdir / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.float32))
                files[name] = str(wdir / f"{name}.npy")
            if kind != "vae-decode":
                np.save(wdir / "timestep.npy", np.full((batch,), TIMESTEP, dtype=np.float32))
                files["timestep"] = str(wdir / "timestep.npy")

            def resolve(p):
                return str(p if Path(p).is_absolute() else folder / p)

            specs[w] = {"workload": w, "kind": kind, "batch": batch, "lib_path": resolve(meta["lib_path"]),
                        "torch_path": resolve(meta["torch_path"]), "onnx": resolve(meta["onnx"]),
                        "input_files": files, "gflop": meta["flops"][w]["gflop"], "parameters": meta["parameters"],
                        "model": meta["model"],
                        "input_shapes": {k: list(np.load(v, mmap_mode="r").shape) for k, v in files.items()}}
            (wdir / "spec.json").write_text(json.dumps(specs[w]))

        # 2. Interleaved rounds, engine order rotating. --child-per workload: for each workload, each engine in
        #    its own child; --child-per engine: each engine in one child that runs every workload in turn.
        def run_child(r, engine, ws, results):
            label = ws[0] if len(ws) == 1 else f"{len(ws)} workloads"
            print(f"round {r + 1}/{args.rounds}: {label}: {engine} ...", flush=True)
            if args.wait_quiet > 0:
                wait_quiet(args.wait_quiet)
            for w in ws:
                (tmp / w / f"result_{engine}.json").unlink(missing_ok=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--child", engine, "--spec", ",".join(str(tmp / w / "spec.json") for w in ws),
                 "--threads", str(args.threads), "--seconds", str(args.seconds), "--min-reps", str(args.min_reps),
                 "--max-reps", str(args.max_reps)],
                env=child_env, capture_output=True, text=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
            for w in ws:
                result_path = tmp / w / f"result_{engine}.json"
                res = json.loads(result_path.read_text()) if result_path.is_file() else \
                    {"error": f"exit {proc.returncode}: " + (tail[-1] if tail else "")}
                if "error" in res:
                    sys.stderr.write(f"bench: {engine} on {w} failed ({res['error']}):\n  " + "\n  ".join(tail) + "\n")
                    results[w][engine] = res
                    continue
                res["output_file"] = str(result_path.with_suffix(".npy"))
                infos.setdefault(engine, res["info"])
                results[w][engine] = res
                print(f"    {w}: median {res['median_ms']:.1f} ms over {res['reps']} calls, other load "
                      f"{100 * res['other_load']:.0f}%", flush=True)

        for r in range(args.rounds):
            results = {w: {} for w in workloads}
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            if args.child_per == "engine":
                for engine in order:
                    run_child(r, engine, workloads, results)
            else:
                for w in workloads:
                    for engine in order:
                        run_child(r, engine, [w], results)
            rounds.append(results)

        # 3. Pool each workload's quiet rounds; errors vs torch on the last good output of each engine.
        summary = {}
        for w in workloads:
            def noise(r, w=w):
                return max([res["other_load"] for res in rounds[r][w].values() if "error" not in res], default=0.0)

            quiet = [r for r in range(len(rounds)) if noise(r) <= NOISY] or \
                [min(range(len(rounds)), key=noise)]
            gflop = specs[w]["gflop"]
            per_engine = {}
            for e in engines:
                ran = [r for r in range(len(rounds)) if "error" not in rounds[r][w].get(e, {"error": 1})]
                use = [r for r in quiet if r in ran] or ran  # (an engine that failed in the quiet rounds only)
                times = [v for r in use for v in rounds[r][w][e]["times_ms"]]
                errors = [rounds[r][w][e]["error"] for r in range(len(rounds)) if r not in ran and e in rounds[r][w]]
                if not times:
                    per_engine[e] = {"failed": errors[-1] if errors else "no result"}
                    continue
                med = statistics.median(times)
                per_engine[e] = {
                    "reps": len(times), "median_ms": med, "min_ms": min(times), "gflop_per_s": gflop / (med / 1e3),
                    "pooled_rounds": use,
                    "other_load": max(rounds[r][w][e]["other_load"] for r in use),
                    "own_cpu_share": statistics.fmean(rounds[r][w][e]["own_cpu_share"] for r in use),
                    "load_s": statistics.fmean(rounds[r][w][e]["load_s"] for r in ran),
                    "peak_rss_gb": max(rounds[r][w][e]["peak_rss_gb"] for r in ran),
                    "failed_rounds": errors,
                    "info": rounds[ran[-1]][w][e]["info"],
                }
            # Errors vs torch (last round in which each engine ran).
            last = {}
            for e in engines:
                for r in reversed(range(len(rounds))):
                    if "error" not in rounds[r][w].get(e, {"error": 1}):
                        last[e] = rounds[r][w][e]["output_file"]
                        break
            if "torch" in last:
                ref = np.load(last["torch"])
                per_engine["torch"]["error_vs_torch"] = 0.0 if np.isfinite(ref).all() else float("nan")
                for e in engines:
                    if e != "torch" and e in last:
                        per_engine[e]["error_vs_torch"] = rel_error(np.load(last[e]), ref)
            peers = {e: per_engine[e]["median_ms"] for e in FP32_PEERS if "median_ms" in per_engine.get(e, {})}
            best = min(peers, key=peers.get) if peers else None
            lib = per_engine.get("libdiffusion", {}).get("median_ms")
            ratio_best = lib / peers[best] if lib and best else None
            bf16 = per_engine.get("openvino-bf16", {}).get("median_ms")
            ratio_bf16 = lib / bf16 if lib and bf16 else None
            per_round = []
            for r in range(len(rounds)):
                rr = rounds[r][w]
                pm = [rr[e]["median_ms"] for e in FP32_PEERS if e in rr and "error" not in rr[e]]
                if "libdiffusion" in rr and "error" not in rr["libdiffusion"] and pm:
                    per_round.append(rr["libdiffusion"]["median_ms"] / min(pm))
            summary[w] = {"gflop": gflop, "parameters": specs[w]["parameters"], "model": specs[w]["model"],
                          "input_shapes": specs[w]["input_shapes"], "gflop_by_op": metas[WORKLOAD_MODEL[w][0]]["flops"][w]
                          ["gflop_by_op"], "pooled_rounds": quiet,
                          "other_load_per_round": [noise(r) for r in range(len(rounds))], "engines": per_engine,
                          "best_fp32_peer": best, "lib_over_best_fp32_peer": ratio_best,
                          "lib_over_openvino_bf16": ratio_bf16, "lib_over_best_fp32_peer_per_round": per_round}

    # ---- report ----
    # The precision OpenVINO compiled each workload's bf16 model in (this CPU may run "bf16" as f32).
    bf16_ran = {w: summary[w]["engines"]["openvino-bf16"]["info"]["compiled_precision"] for w in workloads
                if "info" in summary[w]["engines"].get("openvino-bf16", {})}
    print()
    print(f"{'tiny ' if args.tiny else ''}engines bench: {args.threads} threads per engine, float32 inputs, one network "
          f"evaluation per call; median ms of the pooled quiet rounds")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}")
    print()
    heads = ["workload", "GFLOP", "libdiffusion ms", "torch", "onnxruntime", "openvino f32",
             "openvino bf16 (actual precision)",
             "lib / best fp32 peer", "lib / ov bf16", "lib error"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|")
    table = []
    ok = True
    problems = list(failures)
    for w in workloads:
        s = summary[w]
        cells = [w, f"{s['gflop']:.1f}"]
        for e in ("libdiffusion", "torch", "onnxruntime", "openvino-f32", "openvino-bf16"):
            m = s["engines"].get(e)
            if m is None:
                cells.append("–")
            elif "failed" in m:
                cells.append("failed")
            else:
                cell = _fmt_ms(m["median_ms"])
                if e == "openvino-bf16":
                    cell += f" ({bf16_ran.get(w, '?')})"
                cells.append(cell)
        rb = s["lib_over_best_fp32_peer"]
        cells.append(f"**{rb:.2f}×** ({s['best_fp32_peer']})" if rb else "–")
        cells.append(f"{s['lib_over_openvino_bf16']:.2f}×" if s["lib_over_openvino_bf16"] else "–")
        lib = s["engines"].get("libdiffusion", {})
        err = lib.get("error_vs_torch")
        if err is None:
            cells.append("–")
        else:
            good = err <= TOLERANCE  # False for NaN
            cells.append(f"{err:.1e} {'ok' if good else 'FAIL'}")
            if not good:
                ok = False
                problems.append(f"{w}: libdiffusion differs from torch by {err:.3g} relative (limit {TOLERANCE:g})")
        for e, m in s["engines"].items():
            if "failed" in m:
                problems.append(f"{w}: {e} failed ({m['failed']})")
            elif e != "libdiffusion" and "error_vs_torch" in m and not math.isfinite(m["error_vs_torch"]):
                problems.append(f"{w}: {e}'s output has NaN/inf (or the wrong shape)")
        print("| " + " | ".join(cells) + " |")
        table.append(dict(zip(heads, cells)))
    print("(ms = median; lib / best fp32 peer = libdiffusion median / the lowest median of torch, onnxruntime and "
          "openvino-f32; lib / ov bf16 = libdiffusion median / openvino-bf16 median; lib error = "
          "max |lib - torch| / max |torch|, limit 1e-4)")

    print()
    head = f"{'workload':<16} {'engine':<14} {'reps':>5} {'median ms':>10} {'min ms':>10} {'GFLOP/s':>8} " \
           f"{'vs best fp32':>12} {'err vs torch':>12} {'other load':>10} {'own CPU':>8} {'load s':>7} {'RSS GB':>6}"
    print(head)
    print("-" * len(head))
    for w in workloads:
        s = summary[w]
        best = s["engines"][s["best_fp32_peer"]]["median_ms"] if s["best_fp32_peer"] else None
        for e in engines:
            m = s["engines"][e]
            if "failed" in m:
                print(f"{w:<16} {e:<14} failed: {m['failed']}")
                continue
            err = m.get("error_vs_torch")
            vs = f"{m['median_ms'] / best:.2f}x" if best else "–"
            err_s = "–" if err is None else f"{err:.1e}"
            print(f"{w:<16} {e:<14} {m['reps']:>5} {m['median_ms']:>10.1f} {m['min_ms']:>10.1f} "
                  f"{m['gflop_per_s']:>8.1f} {vs:>12} {err_s:>12} {100 * m['other_load']:>9.1f}% "
                  f"{100 * m['own_cpu_share']:>7.0f}% {m['load_s']:>7.1f} {m['peak_rss_gb']:>6.2f}")
    print("(other load = share of the machine's CPU used by other processes while timing; own CPU = the engine's "
          "share of all cores)")

    print()
    for w in workloads:
        s = summary[w]
        ops = ", ".join(f"{k.replace('aten.', '')} {v:.1f}" for k, v in sorted(s["gflop_by_op"].items()))
        print(f"{w}: {s['model']}, {s['parameters'] / 1e6:.1f} M parameters, inputs "
              + ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in s["input_shapes"].items())
              + f"; {s['gflop']:.1f} GFLOP ({ops})")
        print(f"  rounds pooled: {', '.join(str(i + 1) for i in s['pooled_rounds'])} (other load per round: "
              f"{', '.join(f'{100 * v:.1f}%' for v in s['other_load_per_round'])}); lib / best fp32 peer per round: "
              f"{'  '.join(f'{v:.2f}x' for v in s['lib_over_best_fp32_peer_per_round']) or '–'}")
    print()
    if "libdiffusion" in infos:
        li = infos["libdiffusion"]
        print(f"libdiffusion {li['version']}: {li['library']} (sha256 {li['library_sha256']}, built "
              f"{li['library_mtime']}; work tree at {li.get('repo_head', '?')}"
              f"{', Sources modified' if li.get('repo_sources_dirty') else ''})")
    if "torch" in infos:
        ti = infos["torch"]
        print(f"torch {ti['version']}: {ti['num_threads']} threads, oneDNN {'on' if ti['mkldnn_enabled'] else 'off'}")
    if "onnxruntime" in infos:
        print(f"onnxruntime {infos['onnxruntime']['version']}: {', '.join(infos['onnxruntime']['providers'])}, "
              f"opset {OPSET} export, intra-op {args.threads}, inter-op 1, sequential, all optimisations")
    for e in ("openvino-f32", "openvino-bf16"):
        if e in infos:
            oi = infos[e]
            print(f"{e}: openvino {oi['version']}, INFERENCE_PRECISION_HINT {oi['requested_precision']}, CPU "
                  f"capabilities {', '.join(oi['cpu_capabilities'])}")
            for w in workloads:
                wi = summary[w]["engines"].get(e, {}).get("info")
                if wi:
                    print(f"  {w}: compiled model's precision {wi['compiled_precision']}; conv/matmul nodes by runtime "
                          f"precision {wi['compute_node_precisions']}")
    not_bf16 = sorted({p for p in bf16_ran.values() if "bf16" not in p.lower()})
    if not_bf16:
        print(f"NOTE: openvino-bf16 did not run in bf16 but in {', '.join(not_bf16)} "
              f"({', '.join(w for w, p in bf16_ran.items() if 'bf16' not in p.lower())}): this CPU has no BF16 "
              f"(capabilities: {', '.join(infos['openvino-bf16']['cpu_capabilities'])}), so that column is another "
              f"f32 run")
    if any(m.get("other_load", 0) > NOISY for s in summary.values() for m in s["engines"].values()):
        print("WARNING: other processes used more than 10% of the machine while timing; the numbers are noisy")
    elapsed = time.perf_counter() - started
    print(f"\ntotal time {elapsed / 60:.1f} min")

    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "tiny": args.tiny, "threads": args.threads, "timestep": TIMESTEP, "seconds": args.seconds,
        "rounds_requested": args.rounds, "child_per": args.child_per, "tolerance": TOLERANCE, "elapsed_s": elapsed,
        "table": table, "workloads": summary, "engines": infos,
        "openvino_bf16_precision": bf16_ran,
        "rounds": [{w: {e: {k: v for k, v in res.items() if k not in ("info", "output_file")}
                        for e, res in r[w].items()} for w in r} for r in rounds],
        "problems": problems, "ok": ok and not problems,
    }
    output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {output}")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
