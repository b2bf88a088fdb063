#!/usr/bin/env python3
"""Render a strip of images morphing between two seeds with libdiffusion, and save it as a PNG.

    python3 examples/python/morph.py                          # models/digits, digit 3, seeds 1 -> 2, 8 images
    python3 examples/python/morph.py --digit 7 --seeds 4 9 -n 12 -o out/morph7.png
    python3 examples/python/morph.py path/to/model -o strip.png

Image i starts from slerp(noise(seed A), noise(seed B), i / (n - 1)): the spherical interpolation of
the two seeds' start noise, which (unlike a linear mix) keeps the noise's norm, so every frame is a
plausible start. The frames are sampled together as one batch with DDIM (deterministic, eta 0), so
neighbouring frames stay close. The end frames are exactly what seed A and seed B give alone.

Needs numpy and the `diffusion` package (pip install ./bindings/python, or PYTHONPATH=bindings/python)
and the library (set DIFFUSION_LIBRARY=.build/release/libdiffusion.so if it is not installed).
No Pillow: the PNG is written with zlib + struct (the helpers of generate.py, next to this file).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
try:
    import diffusion
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(REPO / "bindings" / "python"))
    import diffusion
sys.path.insert(0, str(HERE))
from generate import make_grid, resolve_model, write_png  # noqa: E402

DEFAULT_MODEL = "models/digits"


def morph_noise(seed_a: int, seed_b: int, count: int, shape) -> np.ndarray:
    """[count, C, H, W] start noise: the slerp of the two seeds' noise at count evenly spaced t."""
    a = diffusion.noise(seed_a, (1, *shape))
    b = diffusion.noise(seed_b, (1, *shape))
    ts = np.linspace(0.0, 1.0, count) if count > 1 else np.zeros(1)
    return np.concatenate([diffusion.slerp(a, b, float(t)) for t in ts])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_pos", nargs="?", metavar="MODEL", help="model folder (same as --model)")
    p.add_argument("--model", default=None, help=f"model folder in the diffusers layout (default {DEFAULT_MODEL})")
    p.add_argument("--output", "-o", default="out/morph.png", help="PNG strip to write (default out/morph.png)")
    p.add_argument("--count", "-n", type=int, default=8, help="images in the strip (default 8)")
    p.add_argument("--seeds", type=int, nargs=2, default=[1, 2], metavar=("A", "B"),
                   help="the seeds to morph between (default 1 2)")
    p.add_argument("--digit", "--class-label", type=int, default=3, dest="label",
                   help="class label of a class-conditional model (default 3)")
    p.add_argument("--scheduler", default="ddim", help="default ddim (deterministic: smooth morphs)")
    p.add_argument("--steps", type=int, default=50, help="inference steps (default 50)")
    p.add_argument("--guidance-scale", "--guidance", type=float, default=3.0, dest="guidance",
                   help="classifier-free guidance (default 3; needs a model with a null class)")
    p.add_argument("--scale", type=int, default=None, help="pixel upscaling (default: to ~128 px per image)")
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--quiet", "-q", action="store_true")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")

    model_dir = resolve_model(args.model or args.model_pos or DEFAULT_MODEL, False, "")
    t0 = time.perf_counter()
    with diffusion.load(model_dir, threads=args.threads) as model:
        label = args.label if model.num_class_embeds > 0 else None
        guidance = args.guidance
        if guidance != 1 and model.null_class_label < 0:
            print(f"note: {model_dir} has no unconditional class; sampling without guidance", file=sys.stderr)
            guidance = None
        with model.sampler(scheduler=args.scheduler, steps=args.steps, seed=args.seeds[0], batch=args.count,
                           class_label=label, guidance_scale=guidance) as sampler:
            sampler.set_start_noise(morph_noise(*args.seeds, args.count, sampler.shape[1:]))
            if not args.quiet:
                print(f"libdiffusion {diffusion.version()} | {model_dir} | seeds {args.seeds[0]} -> {args.seeds[1]} "
                      f"| {args.count} x {sampler.shape[1:]} | {len(sampler)} steps", file=sys.stderr)

            def progress(step, total, timestep):
                if not args.quiet and (step == total or step % max(1, total // 20) == 0):
                    print(f"\r  step {step}/{total} (t={timestep:g})", end="", file=sys.stderr, flush=True)

            sampler.run(progress)
            images = sampler.images()
    elapsed = time.perf_counter() - t0

    n, h, w, _ = images.shape
    scale = args.scale or max(1, 128 // max(h, w))
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        os.makedirs(out.parent, exist_ok=True)
    write_png(out, make_grid(images, n, scale))
    if not args.quiet:
        print(f"\nwrote {out} ({n} images, {elapsed:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
