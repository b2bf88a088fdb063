"""One forward pass of the full-size google/ddpm-cifar10-32 UNet: libdiffusion vs PyTorch vs ONNX Runtime.

The parent process builds UNet2DModel.from_config(Tests/Fixtures/unet/full_cifar10_config.json) with
random weights, saves it (safetensors), exports it to ONNX and draws one input. Each engine then runs
in its own child process (so that no engine's thread pool, BLAS or OpenMP runtime can touch another's),
times batch 1 and batch 8 with the same x and timestep, and hands its outputs back for the check
against torch. Run through `make bench` or `bash bench/run.sh`; see bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "Tests" / "Fixtures" / "unet" / "full_cifar10_config.json"
ENGINES = ("libdiffusion", "torch", "onnxruntime")
TIMESTEP = 500.0
TOLERANCE = 1e-4  # max |libdiffusion - torch| / max |torch|
NOISY = 0.10  # a round in which other processes used more of the machine than this is set aside


# ---- load measurement ----------------------------------------------------------------------------


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class LoadMeter:
    """How much of the machine other processes used while we were timing.

    other = (machine busy time - this process's CPU time) / (wall time * cores). With 2 threads on a
    2-core machine, anything much above a few percent means the timings are disturbed.
    """

    def __enter__(self):
        self.busy0, self.total0 = _busy_jiffies()
        self.cpu0 = _self_cpu()
        self.wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy1, total1 = _busy_jiffies()
        cpu = _self_cpu() - self.cpu0
        wall = time.perf_counter() - self.wall0
        hz = os.sysconf("SC_CLK_TCK")
        busy = (busy1 - self.busy0) / hz
        cores = os.cpu_count() or 1
        self.own_cpu_share = cpu / (wall * cores) if wall > 0 else 0.0
        self.other_share = max(0.0, (busy - cpu) / (wall * cores)) if wall > 0 else 0.0
        return False


def machine_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU in use over the next `seconds` (this process is idle meanwhile)."""
    b0, t0 = _busy_jiffies()
    time.sleep(seconds)
    b1, t1 = _busy_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit_s: float, threshold: float = 0.10) -> float:
    """Waits (up to limit_s) until other processes use less than `threshold` of the machine."""
    deadline = time.monotonic() + limit_s
    busy = machine_busy()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  machine {100 * busy:.0f}% busy; waiting for it to quieten ...", flush=True)
        time.sleep(4)
        busy = machine_busy()
    return busy


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# ---- engines (child processes) -------------------------------------------------------------------


class _ModelParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("n_threads", ctypes.c_int32)]


def library_identity(path: str) -> dict:
    """Which build was measured: path, mtime, sha256 prefix, and the work tree's commit."""
    import hashlib

    real = os.path.realpath(path)
    with open(real, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    ident = {"library": real, "library_sha256": digest,
             "library_mtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(os.path.getmtime(real)))}
    try:
        ident["repo_head"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "Sources", "include"],
                               capture_output=True, text=True, check=True).stdout.strip()
        ident["repo_sources_dirty"] = bool(dirty)
    except (OSError, subprocess.CalledProcessError):
        pass
    return ident


def _libdiffusion_runner(work: Path, threads: int):
    import numpy as np

    path = os.environ.get("DIFFUSION_LIBRARY") or str(ROOT / ".build" / "release" / "libdiffusion.so")
    lib = ctypes.CDLL(path)
    lib.diffusion_model_params_init.argtypes = [ctypes.POINTER(_ModelParams), ctypes.c_size_t]
    lib.diffusion_model_params_init.restype = None
    lib.diffusion_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(_ModelParams), ctypes.POINTER(ctypes.c_void_p)]
    lib.diffusion_model_load.restype = ctypes.c_int
    lib.diffusion_model_free.argtypes = [ctypes.c_void_p]
    lib.diffusion_model_free.restype = None
    lib.diffusion_last_error.argtypes = []
    lib.diffusion_last_error.restype = ctypes.c_char_p
    lib.diffusion_version_string.restype = ctypes.c_char_p
    fp = ctypes.POINTER(ctypes.c_float)
    lib.diffusion_model_predict.argtypes = [ctypes.c_void_p, fp, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32,
                                            fp, ctypes.POINTER(ctypes.c_int32), fp, ctypes.c_size_t]
    lib.diffusion_model_predict.restype = ctypes.c_int

    params = _ModelParams()
    lib.diffusion_model_params_init(ctypes.byref(params), ctypes.sizeof(params))
    params.n_threads = threads
    model = ctypes.c_void_p()
    st = lib.diffusion_model_load(str(work / "unet").encode(), ctypes.byref(params), ctypes.byref(model))
    if st != 0:
        raise RuntimeError(f"diffusion_model_load: status {st}: {lib.diffusion_last_error().decode()}")
    info = {"version": lib.diffusion_version_string().decode(), **library_identity(path)}

    def run(x, t):
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = np.ascontiguousarray(t, dtype=np.float32)
        out = np.empty_like(x)
        st = lib.diffusion_model_predict(model, x.ctypes.data_as(fp), x.shape[0], x.shape[1], x.shape[2], x.shape[3],
                                         t.ctypes.data_as(fp), None, out.ctypes.data_as(fp), out.size)
        if st != 0:
            raise RuntimeError(f"diffusion_model_predict: status {st}: {lib.diffusion_last_error().decode()}")
        return out

    return run, info


def _torch_runner(work: Path, threads: int):
    import warnings

    import torch
    from diffusers import UNet2DModel

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    caught = warnings.catch_warnings(record=True)
    ws = caught.__enter__()
    warnings.simplefilter("always")
    model = UNet2DModel.from_pretrained(str(work / "unet"), torch_dtype=torch.float32).eval()
    info = {
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "mkl_available": torch.backends.mkl.is_available(),
        "parallel_info": torch.__config__.parallel_info(),
        "warnings": [],
    }

    def run(x, t):
        with torch.inference_mode():
            y = model(torch.from_numpy(x), torch.from_numpy(t)).sample
        return y.numpy()

    def finish():
        caught.__exit__(None, None, None)
        info["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in ws})

    run.finish = finish
    return run, info


def _onnxruntime_runner(work: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(work / "unet.onnx"), so, providers=["CPUExecutionProvider"])
    info = {"version": ort.__version__, "providers": sess.get_providers()}

    def run(x, t):
        return sess.run(["out"], {"sample": x, "timestep": t})[0]

    return run, info


RUNNERS = {"libdiffusion": _libdiffusion_runner, "torch": _torch_runner, "onnxruntime": _onnxruntime_runner}


def child(engine: str, work: Path, threads: int, batches: list[int], seconds: float, max_reps: int) -> None:
    import numpy as np

    run, info = RUNNERS[engine](work, threads)
    x_all = np.load(work / "x.npy")
    result = {"engine": engine, "info": info, "batches": {}}
    for b in batches:
        x = np.ascontiguousarray(x_all[:b])
        t = np.full((b,), TIMESTEP, dtype=np.float32)
        # Warm-up: two calls (allocator, thread pools, lazy init), the second one timed to size N.
        out = run(x, t)
        t0 = time.perf_counter()
        run(x, t)
        once = time.perf_counter() - t0
        reps = max(5, min(max_reps, math.ceil(seconds / max(once, 1e-6))))
        times = []
        with LoadMeter() as load:
            for _ in range(reps):
                t0 = time.perf_counter()
                run(x, t)
                times.append(time.perf_counter() - t0)
        np.save(work / f"out_{engine}_{b}.npy", out)
        result["batches"][str(b)] = {
            "reps": reps,
            "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3,
            "stdev_ms": statistics.stdev(times) * 1e3 if len(times) > 1 else 0.0,
            "times_ms": [v * 1e3 for v in times],
            "own_cpu_share": load.own_cpu_share,
            "other_load": load.other_share,
        }
    if hasattr(run, "finish"):
        run.finish()
    (work / f"result_{engine}.json").write_text(json.dumps(result))


# ---- parent --------------------------------------------------------------------------------------


def random_unet(config: dict):
    """UNet2DModel.from_config(config) with every parameter random under fixed seeds: (model, generator)."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    model = UNet2DModel.from_config(config).eval()
    # Default init leaves every GroupNorm at weight 1 / bias 0 (51 tensors here) and other diffusers
    # blocks zero some projections: give every parameter small random values so that every kernel and
    # every affine term does real, checkable work (fan-in scaled, so activations stay O(1)).
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model, gen


def build_model(work: Path, max_batch: int, config: dict | None = None) -> dict:
    """Random full-size model (or UNet2DModel `config`) -> work/unet (safetensors), work/unet.onnx, work/x.npy."""
    import warnings

    import numpy as np
    import torch

    config_name = str(CONFIG.relative_to(ROOT)) if config is None else "custom"
    if config is None:
        config = json.loads(CONFIG.read_text())
    model, gen = random_unet(config)
    model.save_pretrained(str(work / "unet"), safe_serialization=True)

    # At least two images: the ONNX export traces batch 2 so that the batch axis stays symbolic.
    x = torch.randn(max(max_batch, 2), config["in_channels"], config["sample_size"], config["sample_size"], generator=gen)
    np.save(work / "x.npy", x.numpy())

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, sample, timestep):
            return self.m(sample, timestep).sample

    t = torch.full((2,), TIMESTEP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(
            input_names=["sample", "timestep"],
            output_names=["out"],
            opset_version=17,
            dynamic_axes={"sample": {0: "batch"}, "timestep": {0: "batch"}, "out": {0: "batch"}},
        )
        try:
            torch.onnx.export(Wrapped(model), (x[:2], t), str(work / "unet.onnx"), dynamo=False, **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(Wrapped(model), (x[:2], t), str(work / "unet.onnx"), **kwargs)
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "config": config_name}


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "2.5")),
                    help="target timed seconds per engine, batch and round")
    ap.add_argument("--max-reps", type=int, default=500)
    ap.add_argument("--batches", default=os.environ.get("BENCH_BATCHES", "1,8"))
    ap.add_argument("--engines", default=os.environ.get("BENCH_ENGINES", ",".join(ENGINES)))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", "3")),
                    help="interleaved rounds (engine order rotates); the quiet rounds' samples are pooled")
    ap.add_argument("--wait-quiet", type=float, default=float(os.environ.get("BENCH_WAIT_QUIET", "0")),
                    metavar="SECONDS", help="before each engine, wait up to SECONDS for other load to drop below 10%%")
    ap.add_argument("--output", default=str(HERE / "results.json"))
    ap.add_argument("--save-model", metavar="DIR",
                    help="only write the model (DIR/unet, DIR/unet.onnx, DIR/x.npy) and exit; for bench/profile.sh")
    ap.add_argument("--child", choices=ENGINES, help="run one engine on a --work folder made by --save-model")
    ap.add_argument("--work", help="folder written by --save-model (with --child)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]
    engines = [e for e in args.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r}")

    if args.save_model:
        Path(args.save_model).mkdir(parents=True, exist_ok=True)
        print(json.dumps(build_model(Path(args.save_model), max(batches))))
        return 0
    if args.child:
        child(args.child, Path(args.work), args.threads, batches, args.seconds, args.max_reps)
        return 0

    import numpy as np

    with tempfile.TemporaryDirectory(prefix="diffusion-bench-") as tmp:
        work = Path(tmp)
        print(f"building the model from {CONFIG.relative_to(ROOT)} (random weights) and exporting ONNX ...",
              flush=True)
        model_info = build_model(work, max(batches))
        print(f"  {model_info['parameters'] / 1e6:.1f} M parameters", flush=True)

        env = dict(os.environ)
        # torch and onnxruntime are given their thread counts explicitly; these only keep stray
        # OpenMP/MKL pools at the same size. OpenBLAS is left alone: libdiffusion sets its threads.
        env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
        rounds = []
        for r in range(args.rounds):
            results = {}
            for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
                print(f"round {r + 1}/{args.rounds}: {engine} ...", flush=True)
                if args.wait_quiet > 0:
                    wait_quiet(args.wait_quiet)
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", engine, "--work", str(work), "--threads", str(args.threads),
                     "--batches", args.batches, "--seconds", str(args.seconds), "--max-reps", str(args.max_reps)],
                    env=env, capture_output=True, text=True)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stdout + proc.stderr)
                    raise SystemExit(f"bench: the {engine} run failed (exit {proc.returncode})")
                res = json.loads((work / f"result_{engine}.json").read_text())
                res["stderr"] = [l for l in proc.stderr.splitlines() if l.strip()]
                results[engine] = res
            rounds.append(results)

        def noise(results):
            return max(b["other_load"] for res in results.values() for b in res["batches"].values())

        # Pool the samples of the quiet rounds (other load <= 10%); if none was quiet, take the
        # least disturbed round alone.
        quiet = [i for i, r in enumerate(rounds) if noise(r) <= NOISY]
        if not quiet:
            quiet = [min(range(len(rounds)), key=lambda i: noise(rounds[i]))]
        results = {e: {"info": rounds[-1][e]["info"], "stderr": rounds[-1][e]["stderr"], "batches": {}}
                   for e in engines}
        for e in engines:
            for b in batches:
                times = [v for i in quiet for v in rounds[i][e]["batches"][str(b)]["times_ms"]]
                results[e]["batches"][str(b)] = {
                    "reps": len(times),
                    "median_ms": statistics.median(times),
                    "min_ms": min(times),
                    "other_load": max(rounds[i][e]["batches"][str(b)]["other_load"] for i in quiet),
                }

        # Correctness: libdiffusion (and ORT) against torch, on the last round's outputs.
        checks = {}
        if "torch" in results:
            for b in batches:
                ref = np.load(work / f"out_torch_{b}.npy").astype(np.float64)
                scale = float(np.abs(ref).max())
                for e in engines:
                    if e == "torch":
                        continue
                    got = np.load(work / f"out_{e}_{b}.npy").astype(np.float64)
                    diff = float(np.abs(got - ref).max())
                    checks.setdefault(e, {})[str(b)] = {"max_abs_diff": diff, "output_scale": scale,
                                                        "relative": diff / scale}

    # ---- report ----
    print()
    print(f"UNet2DModel {model_info['config']} ({model_info['parameters'] / 1e6:.1f} M parameters), "
          f"32x32, timestep {TIMESTEP:g}, {args.threads} threads per engine, float32")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}")
    header = f"{'engine':<13} {'batch':>5} {'reps':>5} {'median ms':>10} {'min ms':>9} {'ms/image':>9} " \
             f"{'vs torch':>9} {'other load':>10}"
    print(header)
    print("-" * len(header))
    table = []
    for b in batches:
        tref = results.get("torch", {}).get("batches", {}).get(str(b))
        for e in engines:
            m = results[e]["batches"][str(b)]
            ratio = m["median_ms"] / tref["median_ms"] if tref else float("nan")
            ratio_min = m["min_ms"] / tref["min_ms"] if tref else float("nan")
            row = {"engine": e, "batch": b, **m, "ratio_to_torch": ratio, "ratio_to_torch_min": ratio_min}
            table.append(row)
            print(f"{e:<13} {b:>5} {m['reps']:>5} {m['median_ms']:>10.1f} {m['min_ms']:>9.1f} "
                  f"{m['median_ms'] / b:>9.1f} {ratio:>8.2f}x {100 * m['other_load']:>9.1f}%")
    print("(vs torch = engine median / torch median; other load = share of the machine's CPU used by other "
          "processes while timing)")

    ok = True
    print()
    for e, per in checks.items():
        for b, c in per.items():
            good = c["relative"] <= TOLERANCE
            if e == "libdiffusion":
                ok &= good
            verdict = "ok" if good else ("MISMATCH" if e == "libdiffusion" else "(info)")
            print(f"check {e} vs torch, batch {b}: max |diff| = {c['max_abs_diff']:.3g}, output scale "
                  f"{c['output_scale']:.3g}, relative {c['relative']:.2e} (limit {TOLERANCE:g}) {verdict}")

    linfo = results.get("libdiffusion", {}).get("info")
    if linfo:
        print()
        print(f"libdiffusion {linfo['version']}: {linfo['library']} (sha256 {linfo['library_sha256']}, built "
              f"{linfo['library_mtime']}; work tree at {linfo.get('repo_head', '?')}"
              f"{', Sources modified' if linfo.get('repo_sources_dirty') else ''})")
    tinfo = results.get("torch", {}).get("info")
    if tinfo:
        print()
        print(f"torch {tinfo['version']}: mkldnn (oneDNN) available={tinfo['mkldnn_available']} "
              f"enabled={tinfo['mkldnn_enabled']}, mkl={tinfo['mkl_available']}, threads={tinfo['num_threads']}")
        notes = tinfo["warnings"] + [l for l in results["torch"]["stderr"]
                                     if any(k in l.lower() for k in ("mkldnn", "onednn", "dnnl", "mkl"))]
        if notes:
            for w in notes:
                print(f"  torch warning: {w}")
        else:
            print("  no MKL-DNN/oneDNN warning from torch")
    per_round = {}
    if "torch" in engines:
        for e in engines:
            for b in batches:
                per_round[f"{e}/{b}"] = [r[e]["batches"][str(b)]["median_ms"] / r["torch"]["batches"][str(b)]["median_ms"]
                                         for r in rounds]
    print()
    print(f"rounds: {len(rounds)}, pooled: {', '.join(str(i + 1) for i in quiet)} "
          f"(other load per round: {', '.join(f'{100 * noise(r):.1f}%' for r in rounds)})")
    for key, ratios in per_round.items():
        if not key.startswith("torch/"):
            print(f"  {key:<16} vs torch, per round: {'  '.join(f'{v:.2f}x' for v in ratios)}")
    if any(b["other_load"] > NOISY for res in results.values() for b in res["batches"].values()):
        print("WARNING: other processes used more than 10% of the machine while timing; the numbers are noisy")

    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "model": model_info,
        "threads": args.threads,
        "timestep": TIMESTEP,
        "table": table,
        "checks": checks,
        "engines": {e: results[e]["info"] for e in engines},
        "rounds": [{e: r[e]["batches"] for e in engines} for r in rounds],
        "pooled_rounds": quiet,
        "ratio_to_torch_per_round": per_round,
    }
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    if not ok:
        print("FAIL: libdiffusion's output does not match torch's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
