#!/usr/bin/env bash
# One forward pass of the full-size google/ddpm-cifar10-32 UNet (random weights), batch 1 and 8,
# 2 threads each: libdiffusion vs PyTorch vs ONNX Runtime. Called by `make bench` after the build.
#
# Environment:
#   BENCH_VENV      virtualenv to use (default bench/.venv, created on first run)
#   BENCH_THREADS   threads per engine (default 2)
#   BENCH_SECONDS   target seconds of timed work per engine and batch (default 4)
#   BENCH_ENGINES   comma list of engines (default libdiffusion,torch,onnxruntime)
#   BENCH_BATCHES   comma list of batch sizes (default 1,8)
#   DIFFUSION_LIBRARY  path of libdiffusion.so (default .build/release/libdiffusion.so)
#   PYTHON          interpreter used to create the venv (default python3)
#   BENCH_SETUP_ONLY=1  only create the venv (bench/profile.sh uses it)
# Arguments are passed to bench_unet.py (see `bash bench/run.sh --help`).
set -euo pipefail

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
need = ["torch", "diffusers", "safetensors", "onnxruntime", "onnx", "numpy"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in need) else 1)
PY
}

if [ ! -x "$venv/bin/python" ] || ! have_packages; then
    echo "bench: setting up $venv (torch, diffusers, safetensors, onnxruntime, onnx, numpy)"
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
    # onnx: torch.onnx.export needs it to write the model.
    "${pip[@]}" diffusers safetensors onnxruntime onnx numpy
fi

[ "${BENCH_SETUP_ONLY:-0}" = 1 ] && exit 0

export DIFFUSION_LIBRARY="$lib"
cd "$root"
exec "$venv/bin/python" "$here/bench_unet.py" "$@"
