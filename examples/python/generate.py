#!/usr/bin/env python3
"""Generate a batch of images with libdiffusion from Python and save them as one PNG grid.

    python3 examples/python/generate.py                       # models/digits, 16 images
    python3 examples/python/generate.py --model path/to/model --count 8 --steps 50 --output grid.png

Needs numpy and the `diffusion` package (pip install ./bindings/python, or PYTHONPATH=bindings/python)
and the library (set DIFFUSION_LIBRARY=.build/release/libdiffusion.so if it is not installed).
No Pillow: the PNG is written with zlib + struct.
"""

from __future__ import annotations

import argparse
import math
import os
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
try:
    import diffusion
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(REPO / "bindings" / "python"))
    import diffusion

DEFAULT_MODEL = "models/digits"
FALLBACK_MODEL = "Tests/Fixtures/unet/cifar_small"


def write_png(path, pixels: np.ndarray) -> None:
    """Writes uint8 pixels [H, W] or [H, W, C] (C = 1, 2, 3 or 4) as an 8-bit PNG."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # gray, gray+alpha, RGB, RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))  # filter type 0 on each row
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9))
    png += chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def make_grid(images: np.ndarray, cols: int, scale: int, pad: int = 2) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
    n, h, w, c = images.shape
    if c > 4:
        images, c = images[..., :3], 3
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 40, dtype=np.uint8)
    if c in (2, 4):
        grid[..., -1] = 255  # opaque padding
    for i in range(n):
        y, x = divmod(i, cols)
        grid[pad + y * (h + pad) : pad + y * (h + pad) + h, pad + x * (w + pad) : pad + x * (w + pad) + w] = images[i]
    return grid


def resolve_model(path: str, is_default: bool, fallback: str) -> str:
    """A model folder: as given (or relative to the repository), else the fallback when the
    default was not overridden."""
    for candidate in (Path(path), REPO / path):
        if candidate.exists():
            return str(candidate)
    if is_default:
        for candidate in (Path(fallback), REPO / fallback):
            if candidate.exists():
                print(f"note: {path} not found, using {candidate}", file=sys.stderr)
                return str(candidate)
    sys.exit(f"error: model folder {path} not found")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="model folder (same as --model)")
    p.add_argument("--model", default=None,
                   help=f"model folder in the diffusers layout (default {DEFAULT_MODEL}, else --fallback-model)")
    p.add_argument("--fallback-model", default=FALLBACK_MODEL,
                   help=f"used when the default model is absent (default {FALLBACK_MODEL})")
    p.add_argument("--output", "-o", default="generated.png", help="PNG grid to write (default generated.png)")
    p.add_argument("--count", "--batch", "-n", type=int, default=16, dest="count", help="images (default 16)")
    p.add_argument("--steps", type=int, default=None, help="inference steps (default: the scheduler's)")
    p.add_argument("--scheduler", choices=["ddpm", "ddim"], default=None, help="default: the model's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta")
    p.add_argument("--class-label", type=int, nargs="+", default=None,
                   help="class label(s) for a class-conditional model (default 0, 1, 2, ... cycling)")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--size", type=int, default=None, help="image height and width (default: the model's)")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default about sqrt(count))")
    p.add_argument("--scale", type=int, default=None, help="pixel upscaling of the grid (default: to ~128 px)")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)

    given = args.model or args.model_pos
    model_dir = resolve_model(given or DEFAULT_MODEL, given is None, args.fallback_model)

    t0 = time.perf_counter()
    with diffusion.load(model_dir, threads=args.threads) as model:
        labels = args.class_label
        if labels is None and model.num_class_embeds > 0:
            labels = [i % model.num_class_embeds for i in range(args.count)]
        with model.sampler(
            scheduler=args.scheduler, steps=args.steps, seed=args.seed, eta=args.eta, batch=args.count,
            height=args.size, width=args.size, class_label=labels, guidance_scale=args.guidance_scale,
        ) as sampler:
            total = len(sampler.timesteps)
            if not args.quiet:
                print(f"libdiffusion {diffusion.version()} | {model_dir} | {args.count} x {sampler.shape[1:]} "
                      f"| {total} steps", file=sys.stderr)

            def progress(step, total, timestep):
                if not args.quiet and (step == total or step % max(1, total // 20) == 0):
                    print(f"\r  step {step}/{total} (t={timestep:g})", end="", file=sys.stderr, flush=True)

            try:
                sampler.run(progress)
            except KeyboardInterrupt:
                print("\ninterrupted: saving the current (noisy) images", file=sys.stderr)
            images = sampler.images()
    elapsed = time.perf_counter() - t0

    n, h, w, _ = images.shape
    cols = args.cols or math.ceil(math.sqrt(n))
    scale = args.scale or max(1, 128 // max(h, w))
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        os.makedirs(out.parent, exist_ok=True)
    write_png(out, make_grid(images, cols, scale))
    if not args.quiet:
        print(f"\nwrote {out} ({n} images, {elapsed:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
