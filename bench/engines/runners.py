"""bench_engines.py's engines: the child-process code that loads one engine (libdiffusion, torch, onnxruntime,
openvino f32/bf16), times it on one or more workloads and writes result_<engine>.json (+ .npy)."""

from __future__ import annotations

import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

from bench_unet import LoadMeter, library_identity

from .workloads import ROOT, _model_class, torch_forward

# ---- engines (child processes) ---------------------------------------------------------------------------


def _libdiffusion_runner(precision: str):
    def run(spec: dict, threads: int, inputs: dict):
        sys.path.insert(0, str(ROOT / "bindings" / "python"))
        import diffusion

        model = diffusion.load(spec["lib_path"], threads=threads, precision=precision)
        info = {"version": diffusion.version(), "precision": model.info["precision"],
                "precision_native": model.info["precision_native"], **library_identity(diffusion.library_path())}
        kind = spec["kind"]
        if kind == "unet2d":
            return (lambda i: model.predict(i["sample"], i["timestep"])), info
        if kind == "unet2d-cond":
            return (lambda i: model.predict(i["sample"], i["timestep"], context=i["encoder_hidden_states"])), info
        return (lambda i: model.decode(i["latents"])), info  # divides by scaling_factor itself
    return run


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


RUNNERS = {"libdiffusion": _libdiffusion_runner("f32"), "libdiffusion-bf16": _libdiffusion_runner("bf16"), "torch": _torch_runner, "onnxruntime": _onnxruntime_runner,
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

