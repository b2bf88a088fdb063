"""Where libdiffusion's forward spends its time: buckets `perf script` call stacks by kernel.

Reads the text of `perf script` (a `perf record --call-graph dwarf` of a process that calls
diffusion_model_predict, as bench/profile.sh makes) on stdin or from a file, keeps the samples whose
stack passes through diffusion_model_predict, and prints the share of each kernel, split by the
block it runs in (resnet, attention, top level), plus the leaf functions.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import json
import re
import sys

HEAD = re.compile(r"^\s*(.*?)\s+(\d+)(?:/(\d+))?\s+(\d+\.\d+):")


def samples(lines):
    """Yields ((tid, time), [(symbol, dso), leaf first]) for each sample of `perf script` output."""
    head, frames = None, []
    for line in lines:
        if not line.strip():
            if head is not None:
                yield head, frames
            head, frames = None, []
            continue
        if line[0] not in " \t":
            m = HEAD.match(line)
            tid = m.group(3) or m.group(2) if m else "?"
            head, frames = (tid, float(m.group(4)) if m else 0.0), []
            continue
        parts = line.strip().split(None, 1)
        if len(parts) < 2:
            continue
        sym = parts[1]
        # "<symbol>+0x.. (<dso>)" -> keep symbol and dso
        dso = sym[sym.rfind("(") + 1:-1] if sym.endswith(")") else ""
        name = sym[: sym.rfind(" (")] if " (" in sym else sym
        name = name.rsplit("+0x", 1)[0]
        frames.append((name, dso))
    if head is not None:
        yield head, frames


def has(frames, *keys):
    return any(any(k in name for k in keys) for name, _ in frames)


def block_of(frames):
    """The UNet block a calling-thread sample runs in."""
    if has(frames, "SpatialSelfAttention"):
        return "attention block"
    if has(frames, "ResnetBlock2D"):
        return "resnet block"
    return "top level"  # conv_in, down/upsample convs, concat, upsample, norm_out, conv_out, embedding


def classify(frames, block):
    """kernel name for one sample inside the forward; block from block_of (or borrowed in time)."""
    leaf, leaf_dso = frames[0]

    kernel_side = "kernel.kallsyms" in leaf_dso
    blas = "openblas" in leaf_dso
    blas_kind = "sgemm micro-kernel" if "sgemm_kernel" in leaf else "sgemm packing (copy)" if blas else None

    if kernel_side:
        kernel = "OS: page faults / zeroing new buffers / mmap"
    elif has(frames, "Conv2dV"):
        if blas_kind:
            kernel = f"conv {blas_kind}"
        elif has(frames, "im2col"):
            kernel = "conv im2col"
        elif has(frames, "assign9repeating", "memset", "memmove", "memcpy"):
            kernel = "conv bias fill (output init)"
        elif has(frames, "malloc", "free", "posix_memalign"):
            kernel = "allocation"
        else:
            kernel = "conv other"
    elif has(frames, "spatialAttention"):
        kernel = "attention QK^T, AV (sgemm)" if blas else "attention softmax"
    elif has(frames, "GroupNormV"):
        kernel = "group norm (+silu)"
    elif has(frames, "LinearV", "timestepEmbedding", "UNet2DModelC9embedding"):
        kernel = "time embedding + linear"
    elif has(frames, "concatChannels", "upsampleNearest2x"):
        kernel = "concat / upsample (copies)"
    elif has(frames, "malloc", "free", "posix_memalign", "FloatBuffer"):
        kernel = "allocation"
    elif has(frames, "silu", "addScaled", "ResnetBlock2D", "SpatialSelfAttention", "UNet2DModel"):
        kernel = "elementwise (temb add, residual, silu)"
    elif has(frames, "dispatch", "futex", "sched"):
        kernel = "threading (dispatch)"
    else:
        kernel = "other (" + leaf[:50] + ")"
    if blas and block == "attention block" and has(frames, "Conv2dV"):
        kernel = "attention q/k/v/out projections (1x1 conv sgemm)"
    return kernel


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="perf script output (default: stdin)")
    ap.add_argument("--json", help="also write the shares here")
    args = ap.parse_args()
    src = open(args.file) if args.file else sys.stdin

    kernels = collections.Counter()
    blocks = collections.Counter()
    by_block_kernel = collections.Counter()
    leaves = collections.Counter()
    total = outside = 0
    inside, main_times, main_blocks = [], [], []
    for (tid, t), frames in samples(src):
        if not frames:
            continue
        if has(frames, "diffusion_model_load"):
            outside += 1
        elif has(frames, "diffusion_model_predict"):
            inside.append((tid, t, frames, block_of(frames)))
            main_times.append(t)
            main_blocks.append(inside[-1][3])
        elif has(frames, "DiffusionCore"):
            # A Dispatch worker running a parallelFor body: its stack stops at the worker, so the
            # block is borrowed from the calling thread's sample nearest in time.
            inside.append((tid, t, frames, None))
        else:
            outside += 1
    order = sorted(range(len(main_times)), key=main_times.__getitem__)
    main_times = [main_times[i] for i in order]
    main_blocks = [main_blocks[i] for i in order]
    on_caller = collections.Counter()
    for tid, t, frames, block in inside:
        caller = block is not None
        if block is None:
            i = bisect.bisect_left(main_times, t)
            near = [j for j in (i - 1, i) if 0 <= j < len(main_times)]
            block = main_blocks[min(near, key=lambda j: abs(main_times[j] - t))] if near else "top level"
        total += 1
        kernel = classify(frames, block)
        kernels[kernel] += 1
        on_caller[kernel] += caller
        blocks[block] += 1
        by_block_kernel[(block, kernel)] += 1
        leaves[f"{frames[0][0][:70]} [{frames[0][1].rsplit('/', 1)[-1]}]"] += 1

    if total == 0:
        print("no samples inside diffusion_model_predict", file=sys.stderr)
        return 1
    print(f"{total} samples inside the forward ({outside} outside it: load, Python, idle threads)\n")
    threads = len({tid for tid, *_ in inside})
    print(f"{'kernel':<52} {'share':>7} {'on calling thread':>18}")
    for k, n in kernels.most_common():
        print(f"{k:<52} {100 * n / total:>6.1f}% {100 * on_caller[k] / n:>17.0f}%")
    caller_total = sum(on_caller.values())
    print(f"(on calling thread: share of that kernel's samples taken on the thread that called predict; "
          f"with 2 busy threads an evenly parallel kernel shows ~50%, a serial one 100%. Overall "
          f"{100 * caller_total / total:.0f}%, {threads} threads seen)")
    print(f"\n{'block':<52} {'share':>7}")
    for k, n in blocks.most_common():
        print(f"{k:<52} {100 * n / total:>6.1f}%")
    print(f"\n{'block / kernel':<80} {'share':>7}")
    for (b, k), n in by_block_kernel.most_common(25):
        print(f"{b + ' / ' + k:<80} {100 * n / total:>6.1f}%")
    print(f"\n{'leaf function':<90} {'share':>7}")
    for k, n in leaves.most_common(20):
        print(f"{k:<90} {100 * n / total:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": total,
                       "kernels": {k: n / total for k, n in kernels.most_common()},
                       "kernels_on_calling_thread": {k: on_caller[k] / n for k, n in kernels.most_common()},
                       "blocks": {k: n / total for k, n in blocks.most_common()},
                       "leaves": {k: n / total for k, n in leaves.most_common(40)}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
