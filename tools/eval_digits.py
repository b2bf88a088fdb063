#!/usr/bin/env python3
"""Evaluate the class-conditional digits model (models/digits) with diffusers + scikit-learn.

Usage:
  /work/venv/bin/python tools/eval_digits.py                      # full evaluation, prints a markdown table
  /work/venv/bin/python tools/eval_digits.py --ddim-per-class 20 --ddpm-per-class 0   # quick
  /work/venv/bin/python tools/eval_digits.py --write-fixture      # also (re)writes Tests/Fixtures/digits_classifier.json

Same data split as tools/train_digits.py (`load_split`: stratified 80/20, seed 0); the model was
trained on the 80% only.

Classifiers, all trained on the training split at 8x8 in [-1, 1] scale and scored on the held-out
test split:
  - SVC (RBF, C=10): the judge of "is this sample the digit that was asked for".
  - nearest class mean (10 x 64 means) and multinomial logistic regression (10 x 64 weights + 10
    biases): small enough for a JSON fixture the Swift test suite can use without scikit-learn.

Sampling (as the diffusers pipelines do, plus classifier-free guidance): noise
randn_tensor((N, 1, R, R), generator) from torch.Generator().manual_seed(seed); at each timestep the
batch [x; x] goes through the UNet with labels [c; 10] (10 = the null class), eps = eps_u + s (eps_c - eps_u),
then scheduler.step(eps, t, x, generator=generator[, eta=0]).prev_sample. DDPM-1000 uses
DDPMScheduler.from_config(scheduler_config.json) with 1000 steps, DDIM-50 uses DDIMScheduler with 50
steps (eta 0). Samples are clamped to [-1, 1] (what the pipelines' (x/2+0.5).clamp(0,1) does) and,
for a 16x16 model, average-pooled back to 8x8 before classification and distances.

Metrics per (sampler, guidance scale):
  acc        SVC accuracy w.r.t. the class asked for
  ncm / lin  the same with the nearest-class-mean and logistic-regression classifiers
  diversity  mean over classes of (mean pairwise L2 among the samples of a class) /
             (mean pairwise L2 among the real training images of that class)
  NN-train   mean (and min) over samples of the L2 distance (8x8, [-1,1] scale) to the nearest
             training image; the same statistic for the held-out real test images is the reference
             (a model that copies its training set would score far below it)
  near-copy  fraction of samples closer to their nearest training image than the 5th percentile of
             that distance for held-out real test images (5% for fresh real data; a copier -> 100%)
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import NULL_LABEL, REPO, from_resolution, load_split  # noqa: E402

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

diffusers_logging.set_verbosity_error()


def pairwise_mean(a: np.ndarray) -> float:
    d = np.sqrt(np.maximum(((a[:, None, :] - a[None, :, :]) ** 2).sum(-1), 0))
    n = a.shape[0]
    return float(d.sum() / (n * (n - 1)))


def nn_dist(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d2 = (a ** 2).sum(1)[:, None] + (ref ** 2).sum(1)[None, :] - 2 * a @ ref.T
    return np.sqrt(np.maximum(d2.min(1), 0))


class NearestMean:
    def __init__(self, x, y):
        self.means = np.stack([x[y == c].mean(0) for c in range(10)])

    def predict(self, x):
        d = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return d.argmin(1)


class Linear:
    def __init__(self, w, b):
        self.w, self.b = w, b

    def predict(self, x):
        return (x @ self.w.T + self.b).argmax(1)


@torch.no_grad()
def sample(unet, scheduler, steps, labels, scale, seed, res, eta=None):
    g = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    x = randn_tensor((n, 1, res, res), generator=g, device=torch.device("cpu"), dtype=torch.float32)
    scheduler.set_timesteps(steps)
    null = torch.full_like(labels, NULL_LABEL)
    yy = torch.cat([labels, null])
    for t in scheduler.timesteps:
        out = unet(torch.cat([x, x]), t, class_labels=yy).sample
        eps_c, eps_u = out.chunk(2)
        eps = eps_u + scale * (eps_c - eps_u)
        kw = {"eta": eta} if eta is not None else {}
        x = scheduler.step(eps, t, x, generator=g, **kw).prev_sample
    return x.clamp(-1, 1)


def sample_lib(model, scheduler, steps, labels, scale, seed):
    """The same sampling by libdiffusion (its sampler draws the same torch noise from the seed)."""
    s = model.sampler(scheduler=scheduler, steps=steps, seed=seed, batch=len(labels),
                      class_label=labels.numpy().astype(np.int32), guidance_scale=scale)
    return torch.from_numpy(np.clip(s.run(), -1, 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "digits"))
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 2, 3, 5])
    ap.add_argument("--ddim-per-class", type=int, default=100)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--ddpm-per-class", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clip-sample", choices=["config", "true", "false"], default="config",
                    help="override scheduler_config.json's clip_sample (default: as shipped)")
    ap.add_argument("--json", help="write all numbers here")
    ap.add_argument("--samples-png", help="write a grid of DDIM-50 guidance-3 samples (rows = classes)")
    ap.add_argument("--write-fixture", action="store_true",
                    help="write Tests/Fixtures/digits_classifier.json")
    ap.add_argument("--engine", choices=["diffusers", "libdiffusion"], default="diffusers",
                    help="who samples: diffusers (torch) or libdiffusion (bindings/python; library from "
                         "DIFFUSION_LIBRARY or .build/release)")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32", help="libdiffusion's precision")
    args = ap.parse_args(argv)
    print("args:", json.dumps(vars(args), sort_keys=True), flush=True)
    torch.set_num_threads(args.threads)

    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    x_tr, y_tr, x_te, y_te = load_split()
    f_tr, f_te = x_tr.reshape(len(x_tr), 64), x_te.reshape(len(x_te), 64)
    svc = SVC(C=10, gamma="scale").fit(f_tr, y_tr)
    ncm = NearestMean(f_tr, y_tr)
    lr = LogisticRegression(C=1.0, max_iter=5000).fit(f_tr, y_tr)
    lin = Linear(lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64))
    real = {
        "svc_test_acc": float((svc.predict(f_te) == y_te).mean()),
        "ncm_test_acc": float((ncm.predict(f_te) == y_te).mean()),
        "ncm_train_acc": float((ncm.predict(f_tr) == y_tr).mean()),
        "lin_test_acc": float((lin.predict(f_te) == y_te).mean()),
        "lin_train_acc": float((lin.predict(f_tr) == y_tr).mean()),
        "test_nn_train_dist": float(nn_dist(f_te, f_tr).mean()),
        "test_nn_train_min": float(nn_dist(f_te, f_tr).min()),
        "test_nn_train_q05": float(np.quantile(nn_dist(f_te, f_tr), 0.05)),
        "real_pairwise_per_class": [pairwise_mean(f_tr[y_tr == c]) for c in range(10)],
    }
    print(f"real data: {len(f_tr)} train / {len(f_te)} test images")
    print(f"  SVC test accuracy {real['svc_test_acc']:.4f}; nearest-class-mean test {real['ncm_test_acc']:.4f} "
          f"(train {real['ncm_train_acc']:.4f}); logistic regression test {real['lin_test_acc']:.4f} "
          f"(train {real['lin_train_acc']:.4f})")
    print(f"  held-out test images: mean L2 to nearest training image {real['test_nn_train_dist']:.3f}", flush=True)

    unet = UNet2DModel.from_pretrained(args.model).eval()
    lib_model = None
    if args.engine == "libdiffusion":
        sys.path.insert(0, str(REPO / "bindings" / "python"))
        import diffusion
        lib_model = diffusion.load(args.model, threads=args.threads, precision=args.precision)
        print(f"sampling with libdiffusion {diffusion.version()} ({diffusion.library_path()}), precision "
              f"{lib_model.info['precision']}{'' if lib_model.info['precision_native'] else ' (emulated)'}", flush=True)
        assert args.clip_sample == "config", "--clip-sample needs --engine diffusers"

    cfg = json.loads((Path(args.model) / "config.json").read_text())
    assert cfg.get("_null_class_label") == NULL_LABEL, "config.json lacks _null_class_label = 10"
    res = unet.config.sample_size
    sched_cfg = DDIMScheduler.load_config(args.model)
    if args.clip_sample != "config":
        sched_cfg["clip_sample"] = args.clip_sample == "true"
    print(f"scheduler: clip_sample={sched_cfg.get('clip_sample')}", flush=True)

    settings = []
    if args.ddim_per_class > 0:
        settings.append(("DDIM-%d" % args.ddim_steps, DDIMScheduler, args.ddim_steps, args.ddim_per_class, 0.0))
    if args.ddpm_per_class > 0:
        settings.append(("DDPM-1000", DDPMScheduler, 1000, args.ddpm_per_class, None))

    rows = []
    grid = None
    for name, cls, steps, per_class, eta in settings:
        scheduler = cls.from_config(sched_cfg)
        labels = torch.arange(10).repeat_interleave(per_class)
        for s in args.scales:
            t0 = time.time()
            if lib_model is not None:
                x = sample_lib(lib_model, name.split("-")[0].lower(), steps, labels, s, args.seed)
            else:
                x = sample(unet, scheduler, steps, labels, s, args.seed, res, eta)
            secs = time.time() - t0
            f = from_resolution(x).reshape(len(labels), 64).numpy().astype(np.float64)
            y = labels.numpy()
            if name.startswith("DDIM") and s == 3:
                grid = f
            div = [pairwise_mean(f[y == c]) / real["real_pairwise_per_class"][c] for c in range(10)]
            per_class_acc = [float((svc.predict(f[y == c]) == c).mean()) for c in range(10)]
            row = {
                "sampler": name, "scale": s, "samples": len(y), "seconds": round(secs, 1),
                "acc": float((svc.predict(f) == y).mean()),
                "ncm": float((ncm.predict(f) == y).mean()),
                "lin": float((lin.predict(f) == y).mean()),
                "diversity": float(np.mean(div)),
                "diversity_min_class": float(np.min(div)),
                "nn_train": float(nn_dist(f, f_tr).mean()),
                "nn_train_min": float(nn_dist(f, f_tr).min()),
                "near_copy_rate": float((nn_dist(f, f_tr) < real["test_nn_train_q05"]).mean()),
                "per_class_acc": per_class_acc,
            }
            rows.append(row)
            print(f"{name} s={s:g}: acc {row['acc']:.3f} ncm {row['ncm']:.3f} lin {row['lin']:.3f} "
                  f"div {row['diversity']:.3f} (min class {row['diversity_min_class']:.3f}) "
                  f"NN-train {row['nn_train']:.3f} (min {row['nn_train_min']:.3f}, near-copy {row['near_copy_rate']:.3f})  [{len(y)} samples, {secs:.0f}s]",
                  flush=True)

    table = [
        "| sampler | guidance | samples | accuracy (SVC) | nearest-mean acc | linear acc | diversity vs real "
        "| NN-train L2 mean (real test: %.2f) | NN-train L2 min (real test: %.2f) | closer than 5%% of real test (real: 5%%) |"
        % (real["test_nn_train_dist"], real["test_nn_train_min"]),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(f"| {r['sampler']} | {r['scale']:g} | {r['samples']} | {100 * r['acc']:.1f}% | {100 * r['ncm']:.1f}% "
                     f"| {100 * r['lin']:.1f}% | {100 * r['diversity']:.0f}% | {r['nn_train']:.2f} | {r['nn_train_min']:.2f} | {100 * r['near_copy_rate']:.1f}% |")
    print()
    print("\n".join(table))
    print()
    print(f"Real held-out test data ({len(y_te)} images): SVC {100 * real['svc_test_acc']:.1f}%, "
          f"nearest-mean {100 * real['ncm_test_acc']:.1f}%, linear {100 * real['lin_test_acc']:.1f}%; "
          f"NN-train L2 {real['test_nn_train_dist']:.2f}")

    if args.json:
        Path(args.json).write_text(json.dumps({"real": real, "rows": rows, "table": table}, indent=2) + "\n")

    if args.samples_png and grid is not None:
        try:
            from PIL import Image
            per = args.ddim_per_class
            k = min(per, 16)
            img = np.ones((10 * 9 + 1, k * 9 + 1), dtype=np.float64)
            for c in range(10):
                for j in range(k):
                    img[1 + 9 * c:9 + 9 * c, 1 + 9 * j:9 + 9 * j] = (grid[c * per + j].reshape(8, 8) + 1) / 2
            im = Image.fromarray((255 * (1 - img)).clip(0, 255).astype(np.uint8)).resize(
                (img.shape[1] * 6, img.shape[0] * 6), Image.NEAREST)
            im.save(args.samples_png)
        except ImportError:
            print("PIL not available: no png")

    if args.write_fixture:
        g3 = [r for r in rows if r["sampler"].startswith("DDIM") and r["scale"] == 3]
        fixture = {
            "kind": "linear",
            "note": ("Classifiers for sklearn.datasets.load_digits() 8x8 images in [-1, 1] scale (x/8 - 1), "
                     "pixels row-major (index = 8*row + col). Fitted by tools/eval_digits.py on the training split "
                     "(stratified 80/20, random_state 0, the split models/digits was trained on). "
                     "kind 'linear': predicted class = argmax_k (weights[k] . x + bias[k]), multinomial logistic "
                     "regression (sklearn LogisticRegression C=1, chosen by 5-fold CV on the training split). class_means: per-class mean image of the "
                     "training split; nearest-class-mean predicts argmin_k ||x - class_means[k]||^2. Use the linear "
                     "classifier: nearest-class-mean is weaker (see accuracy)."),
            "resolution": 8,
            "scale": "x/8 - 1",
            "num_classes": 10,
            "weights": [[round(float(v), 7) for v in row] for row in lin.w],
            "bias": [round(float(v), 7) for v in lin.b],
            "class_means": [[round(float(v), 7) for v in row] for row in ncm.means],
            "examples": {
                "note": "the first 10 held-out test images, their true labels and what each classifier above "
                        "predicts for them (to check an implementation of this file)",
                "images": [[round(float(v), 7) for v in row] for row in f_te[:10]],
                "labels": [int(v) for v in y_te[:10]],
                "linear_predictions": [int(v) for v in lin.predict(f_te[:10])],
                "nearest_mean_predictions": [int(v) for v in ncm.predict(f_te[:10])],
            },
            "accuracy": {
                "linear_real_test": real["lin_test_acc"],
                "linear_real_train": real["lin_train_acc"],
                "nearest_mean_real_test": real["ncm_test_acc"],
                "nearest_mean_real_train": real["ncm_train_acc"],
                "svc_real_test": real["svc_test_acc"],
            },
        }
        if g3:
            fixture["accuracy"].update({
                "generated": "models/digits, DDIM-50, guidance 3, seed %d, %d samples" % (args.seed, g3[0]["samples"]),
                "linear_generated": g3[0]["lin"],
                "nearest_mean_generated": g3[0]["ncm"],
                "svc_generated": g3[0]["acc"],
            })
        path = REPO / "Tests" / "Fixtures" / "digits_classifier.json"
        path.write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
