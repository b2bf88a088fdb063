"""bench_engines.py's report: pooling each workload's quiet rounds, the tables, the notes and the JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from bench_unet import NOISY, TIMESTEP, TOLERANCE, cpu_model

from .workloads import FP32_PEERS, OPSET, WORKLOAD_MODEL

# The bf16 mode's bar (issue 9): relative error vs torch in float32, as OpenVINO's bf16 reaches.
BF16_TOLERANCE = 3e-2

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



def summarise(rounds: list[dict], workloads: list[str], engines: list[str], specs: dict, metas: dict) -> dict:
    """Pools each workload's quiet rounds; errors vs torch on the last good output of each engine (read from the
    output files, so call it while they exist)."""
    import numpy as np

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
        lib_bf16 = per_engine.get("libdiffusion-bf16", {}).get("median_ms")
        ratio_bf16 = lib_bf16 / bf16 if lib_bf16 and bf16 else None
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
    return summary


def report(args, workloads: list[str], engines: list[str], summary: dict, infos: dict, rounds: list[dict],
           failures: list[str], started: float, output: Path) -> int:
    """Prints the tables and notes, writes the JSON to output; returns the exit status."""
    # The precision OpenVINO compiled each workload's bf16 model in (this CPU may run "bf16" as f32).
    bf16_ran = {w: summary[w]["engines"]["openvino-bf16"]["info"]["compiled_precision"] for w in workloads
                if "info" in summary[w]["engines"].get("openvino-bf16", {})}
    print()
    print(f"{'tiny ' if args.tiny else ''}engines bench: {args.threads} threads per engine, float32 inputs, one network "
          f"evaluation per call; median ms of the pooled quiet rounds")
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}")
    print()
    heads = ["workload", "GFLOP", "libdiffusion ms", "lib bf16", "torch", "onnxruntime", "openvino f32",
             "openvino bf16 (actual precision)",
             "lib / best fp32 peer", "lib bf16 / ov bf16", "lib error", "lib bf16 error"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|")
    table = []
    ok = True
    problems = list(failures)
    for w in workloads:
        s = summary[w]
        cells = [w, f"{s['gflop']:.1f}"]
        for e in ("libdiffusion", "libdiffusion-bf16", "torch", "onnxruntime", "openvino-f32", "openvino-bf16"):
            m = s["engines"].get(e)
            if m is None:
                cells.append("–")
            elif "failed" in m:
                cells.append("failed")
            else:
                cell = _fmt_ms(m["median_ms"])
                if e == "openvino-bf16":
                    cell += f" ({bf16_ran.get(w, '?')})"
                if e == "libdiffusion-bf16" and not m.get("info", {}).get("precision_native", True):
                    cell += " (emulated)"
                cells.append(cell)
        rb = s["lib_over_best_fp32_peer"]
        cells.append(f"**{rb:.2f}×** ({s['best_fp32_peer']})" if rb else "–")
        cells.append(f"{s['lib_over_openvino_bf16']:.2f}×" if s["lib_over_openvino_bf16"] else "–")
        for e, limit in (("libdiffusion", TOLERANCE), ("libdiffusion-bf16", BF16_TOLERANCE)):
            err = s["engines"].get(e, {}).get("error_vs_torch")
            if err is None:
                cells.append("–")
                continue
            good = err <= limit  # False for NaN
            cells.append(f"{err:.1e} {'ok' if good else 'FAIL'}")
            if not good:
                ok = False
                problems.append(f"{w}: {e} differs from torch by {err:.3g} relative (limit {limit:g})")
        for e, m in s["engines"].items():
            if "failed" in m:
                problems.append(f"{w}: {e} failed ({m['failed']})")
            elif not e.startswith("libdiffusion") and "error_vs_torch" in m and not math.isfinite(m["error_vs_torch"]):
                problems.append(f"{w}: {e}'s output has NaN/inf (or the wrong shape)")
        print("| " + " | ".join(cells) + " |")
        table.append(dict(zip(heads, cells)))
    print("(ms = median; lib / best fp32 peer = libdiffusion median / the lowest median of torch, onnxruntime and "
          "openvino-f32; lib bf16 / ov bf16 = libdiffusion-bf16 median / openvino-bf16 median; lib error = "
          "max |lib - torch| / max |torch|, limit 1e-4; lib bf16 error the same, limit 3e-2)")

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
