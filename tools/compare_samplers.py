#!/usr/bin/env python3
"""Compare samplers on the shipped digits model: libdiffusion's samples judged by an SVC, wall time
of libdiffusion and of diffusers for the same work.

Usage:
  /work/venv/bin/python tools/compare_samplers.py                     # 100 per class, guidance 3
  /work/venv/bin/python tools/compare_samplers.py --per-class 20 --no-diffusers

Samplers (issue 4's comparison): DDIM-50, DPM-Solver++(2M)-20, Euler-ancestral-30 (plus any given
with --sampler NAME:STEPS). Every sampler gets the same labels, seed and guidance scale; the
scheduler settings are the model's scheduler_config.json read by the target class (what
Cls.from_config does), so DPM-Solver++ and Euler-a use its squaredcos_cap_v2 betas.

Judge: the RBF SVC of tools/eval_digits.py (trained on the same 80% training split the model was
trained on, 99.4% on the held-out real digits). Diversity and nearest-training-image distance as
there. Wall time: one libdiffusion sampler of the whole batch (batch = 10 x per-class, guidance as
one batch of two) on --threads threads; diffusers the same loop (torch, same threads) as
eval_digits.sample. Needs the built library (make build) and the venv with torch, diffusers, sklearn.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "bindings" / "python"))
os.environ.setdefault("DIFFUSION_LIBRARY", str(REPO / ".build" / "release" / "libdiffusion.so"))

import diffusion  # noqa: E402
from eval_digits import nn_dist, pairwise_mean  # noqa: E402
from train_digits import NULL_LABEL, from_resolution, load_split  # noqa: E402

# ours -> diffusers class name (for the diffusers timing)
DIFFUSERS = {"ddim": "DDIMScheduler", "dpmpp_2m": "DPMSolverMultistepScheduler",
             "euler_a": "EulerAncestralDiscreteScheduler", "euler": "EulerDiscreteScheduler",
             "unipc": "UniPCMultistepScheduler", "heun": "HeunDiscreteScheduler", "lms": "LMSDiscreteScheduler",
             "pndm": "PNDMScheduler", "ddpm": "DDPMScheduler", "lcm": "LCMScheduler"}


def diffusers_seconds(model_dir, name, steps, labels, scale, seed, threads):
    import diffusers
    import torch
    from diffusers import UNet2DModel
    from diffusers.utils.torch_utils import randn_tensor

    torch.set_num_threads(threads)
    unet = UNet2DModel.from_pretrained(model_dir).eval()
    cls = getattr(diffusers, DIFFUSERS[name])
    sched = cls.from_config(cls.load_config(model_dir))
    y = torch.tensor(labels)
    t0 = time.perf_counter()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        res = unet.config.sample_size
        sched.set_timesteps(steps)  # first: init_noise_sigma depends on the schedule (as in the pipelines)
        x = randn_tensor((len(y), 1, res, res), generator=g) * sched.init_noise_sigma
        yy = torch.cat([y, torch.full_like(y, NULL_LABEL)])
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            eps_c, eps_u = unet(torch.cat([xin, xin]), t, class_labels=yy).sample.chunk(2)
            eps = eps_u + scale * (eps_c - eps_u)
            kw = {"generator": g} if "generator" in sched.step.__code__.co_varnames else {}
            x = sched.step(eps, t, x, **kw).prev_sample
    return time.perf_counter() - t0, x.clamp(-1, 1).numpy()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "digits"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", action="append", help="NAME:STEPS (default: ddim:50 dpmpp_2m:20 euler_a:30)")
    ap.add_argument("--no-diffusers", action="store_true", help="skip the diffusers timing")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    samplers = [(s.split(":")[0], int(s.split(":")[1])) for s in (args.sampler or ["ddim:50", "dpmpp_2m:20", "euler_a:30"])]

    from sklearn.svm import SVC

    x_tr, y_tr, x_te, y_te = load_split()
    f_tr, f_te = x_tr.reshape(len(x_tr), 64), x_te.reshape(len(x_te), 64)
    svc = SVC(C=10, gamma="scale").fit(f_tr, y_tr)
    real_pairwise = [pairwise_mean(f_tr[y_tr == c]) for c in range(10)]
    print(f"judge: SVC, {100 * float((svc.predict(f_te) == y_te).mean()):.1f}% on {len(y_te)} held-out real digits; "
          f"held-out mean L2 to nearest training image {nn_dist(f_te, f_tr).mean():.2f}", flush=True)

    labels = np.repeat(np.arange(10), args.per_class).astype(np.int32)
    rows = []
    with diffusion.load(args.model, threads=args.threads) as model:
        for name, steps in samplers:
            t0 = time.perf_counter()
            with model.sampler(scheduler=name, steps=steps, seed=args.seed, batch=len(labels),
                               guidance_scale=args.scale, class_label=labels) as s:
                evaluations = len(s.timesteps)
                x = s.run()
            secs = time.perf_counter() - t0
            import torch

            f = from_resolution(torch.from_numpy(np.clip(x, -1, 1))).reshape(len(labels), 64).numpy().astype(np.float64)
            div = [pairwise_mean(f[labels == c]) / real_pairwise[c] for c in range(10)]
            row = {"sampler": f"{name}-{steps}", "evaluations": evaluations, "samples": len(labels),
                   "accuracy": float((svc.predict(f) == labels).mean()), "diversity": float(np.mean(div)),
                   "nn_train": float(nn_dist(f, f_tr).mean()), "seconds": secs}
            if not args.no_diffusers:
                dsecs, dx = diffusers_seconds(args.model, name, steps, labels, args.scale, args.seed, args.threads)
                row["diffusers_seconds"] = dsecs
                row["max_abs_diff_vs_diffusers"] = float(np.abs(np.clip(x, -1, 1) - dx).max())
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n| sampler | network evaluations | accuracy (SVC) | diversity vs real | NN-train L2 | libdiffusion s"
          f"{'' if args.no_diffusers else ' | diffusers s | ratio | max |diff| vs diffusers'} |")
    print("| --- | --- | --- | --- | --- | ---" + ("" if args.no_diffusers else " | --- | --- | ---") + " |")
    for r in rows:
        line = (f"| {r['sampler']} | {r['evaluations']} x 2 | {100 * r['accuracy']:.1f}% | {100 * r['diversity']:.0f}% | "
                f"{r['nn_train']:.2f} | {r['seconds']:.2f}")
        if "diffusers_seconds" in r:
            line += (f" | {r['diffusers_seconds']:.2f} | {r['seconds'] / r['diffusers_seconds']:.2f}x | "
                     f"{r['max_abs_diff_vs_diffusers']:.1e}")
        print(line + " |")
    print(f"({len(labels)} images, guidance {args.scale}, seed {args.seed}, {args.threads} threads)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
