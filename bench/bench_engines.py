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
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import engines.report as report  # noqa: E402  (bench/engines/: the pieces, by concern)
from bench_unet import TIMESTEP, wait_quiet  # noqa: E402
from engines.runners import child  # noqa: E402
from engines.workloads import ENGINES, WORKLOAD_MODEL, WORKLOADS, count_only, models_root, prepare  # noqa: E402


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
        summary = report.summarise(rounds, workloads, engines, specs, metas)

    return report.report(args, workloads, engines, summary, infos, rounds, failures, started, output)


if __name__ == "__main__":
    sys.exit(main())
