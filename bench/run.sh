#!/usr/bin/env bash
# Speed benchmarks against other engines, in the venv bench/.venv (created on first use).
#
#   bash bench/run.sh --engines-bench [options]   every engine (libdiffusion, torch, onnxruntime, openvino
#                                                 f32/bf16) on five workloads: bench/bench_engines.py (`make bench`)
#   bash bench/run.sh [options]                   one forward pass of the full-size google/ddpm-cifar10-32 UNet
#                                                 (random weights), batch 1 and 8, 2 threads each: libdiffusion vs
#                                                 PyTorch vs ONNX Runtime: bench/bench_unet.py (`make bench-cifar`)
#
# Environment:
#   BENCH_VENV      virtualenv to use (default bench/.venv, created on first run)
#   BENCH_THREADS   threads per engine (default 2)
#   BENCH_SECONDS   target seconds of timed work per engine and batch or workload (default 2.5)
#   BENCH_ENGINES   comma list of engines (default: all the script knows)
#   BENCH_BATCHES   comma list of batch sizes (default 1,8; bench_unet.py only)
#   BENCH_WORKLOADS comma list of workloads (default all five; bench_engines.py only)
#   BENCH_ROUNDS, BENCH_WAIT_QUIET  interleaved rounds, wait for a quiet machine (see bench/README.md)
#   DIFFUSION_LIBRARY  path of libdiffusion.so (default .build/release/libdiffusion.so)
#   PYTHON          interpreter used to create the venv (default python3)
#   BENCH_SETUP_ONLY=1  only create the venv (bench/profile.sh uses it)
# Arguments are passed to the script (see `bash bench/run.sh [--engines-bench] --help`).
set -euo pipefail

script=bench_unet.py
if [ "${1:-}" = "--engines-bench" ]; then
    script=bench_engines.py
    shift
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
venv="${BENCH_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

lib="${DIFFUSION_LIBRARY:-$root/.build/release/libdiffusion.so}"
if [ "${BENCH_SETUP_ONLY:-0}" != 1 ] && [ ! -f "$lib" ]; then
    echo "bench: $lib not found; run 'make build' first (or 'make bench')" >&2
    exit 1
fi

have_packages() {
    "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
need = ["torch", "diffusers", "transformers", "safetensors", "onnxruntime", "onnx", "onnxscript", "openvino", "numpy", "open_clip"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in need) else 1)
PY
}

if [ ! -x "$venv/bin/python" ] || ! have_packages; then
    echo "bench: setting up $venv (torch, diffusers, transformers, safetensors, onnxruntime, onnx, onnxscript, openvino, numpy, open_clip_torch)"
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    pip=("$venv/bin/python" -m pip install --quiet)
    # Prefer a CPU-only torch wheel from pip's find-links folders (a plain `pip install torch`
    # fetches the CUDA build and its several GB of libraries); otherwise take PyPI's.
    torch_wheel=""
    links="${PIP_FIND_LINKS:-} $("$venv/bin/python" -m pip config get global.find-links 2>/dev/null || true)"
    for d in $links; do
        d="${d#file://}"
        [ -d "$d" ] || continue
        w="$(ls "$d"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
        [ -n "$w" ] && torch_wheel="$w"
    done
    if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
        if [ -n "$torch_wheel" ]; then
            echo "bench: installing $(basename "$torch_wheel")"
            "${pip[@]}" "$torch_wheel"
        else
            "${pip[@]}" torch
        fi
    fi
    # onnx: torch.onnx.export needs it to write the model (onnxscript: its default, dynamo, exporter).
    # transformers: the SD1.5-shaped pipeline's text encoder (tools/make_sd15_random.py, bench_sd.py);
    # open_clip_torch: the CLIP BPE vocabulary of that pipeline's tokenizer (tools/clip_vocab.py).
    "${pip[@]}" diffusers transformers safetensors onnxruntime onnx onnxscript openvino numpy open_clip_torch
fi

[ "${BENCH_SETUP_ONLY:-0}" = 1 ] && exit 0

export DIFFUSION_LIBRARY="$lib"
cd "$root"
exec "$venv/bin/python" "$here/$script" "$@"
