#!/usr/bin/env python3
"""A seeded text-to-image run in both precisions (f32 and bf16) on the same pipeline: the PSNR of the
bf16 image against the f32 one (issue 9's bar: >= 30 dB on the SD1.5-shaped pipeline), and the time
of each run.

  DIFFUSION_LIBRARY=.build/release/libdiffusion.so python3 tools/compare_precisions.py \
      --model bench/.models/sd15-random --steps 20 [--out-dir out/]

Only the library and numpy are needed (bindings/python is put on the path).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bindings" / "python"))
import diffusion  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of uint8 images, in dB (inf when equal)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scheduler", default="euler_a")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", help="also write f32.npy and bf16.npy (uint8 images) here")
    args = ap.parse_args(argv)
    images = {}
    for precision in ("f32", "bf16"):
        model = diffusion.load(args.model, threads=args.threads, precision=precision)
        t = time.perf_counter()
        images[precision] = model.generate(args.prompt, steps=args.steps, seed=args.seed, scheduler=args.scheduler,
                                           guidance_scale=args.guidance)
        native = "" if model.info["precision_native"] else " (emulated)"
        print(f"{precision}{native}: {images[precision].shape[1]}x{images[precision].shape[2]}, {args.steps} steps "
              f"{args.scheduler}, guidance {args.guidance}: {time.perf_counter() - t:.1f} s", flush=True)
        model.close()
        if args.out_dir:
            Path(args.out_dir).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.out_dir) / f"{precision}.npy", images[precision])
    print(f"PSNR bf16 vs f32: {psnr(images['bf16'], images['f32']):.2f} dB")


if __name__ == "__main__":
    main()
