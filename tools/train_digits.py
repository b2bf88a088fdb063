#!/usr/bin/env python3
"""Train a small class-conditional diffusers UNet2DModel on scikit-learn's handwritten digits.

Usage (see tools/README.md and models/digits/README.md):
  /work/venv/bin/python tools/train_digits.py                 # writes models/digits/
  /work/venv/bin/python tools/train_digits.py --steps 2000 --out /tmp/d   # a quick try

Data: sklearn.datasets.load_digits() (1,797 8x8 images, values 0..16, labels 0..9), scaled to
[-1, 1] as x/8 - 1. A fixed stratified split (see `load_split`, shared with tools/eval_digits.py)
keeps 20% of the images out of training so that the evaluation can compare generated samples
with real images the model never saw.

Objective: DDPM (Ho et al. 2020, Algorithm 1): t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1-abar_t) eps,
MSE between eps and the network's prediction. Class conditioning through diffusers'
`num_class_embeds = 11`: labels 0..9 are the digits and label 10 is the unconditional ("null")
class; each training label is replaced by 10 with probability --p-uncond, so one network gives
both the conditional and the unconditional prediction for classifier-free guidance.

AdamW with linear warm-up then cosine decay, an exponential moving average of the weights (the
EMA weights are what is saved), fixed seed, 2 threads. The output folder holds config.json (with
the extra key "_null_class_label": 10, which diffusers ignores), diffusion_pytorch_model.safetensors
(float32), scheduler_config.json (a DDIMScheduler config with the training betas, so that the
library's default sampler is DDIM) and train_log.json (args, loss curve, wall time).
"""

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

diffusers_logging.set_verbosity_error()

REPO = Path(__file__).resolve().parent.parent
NULL_LABEL = 10
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_split():
    """(x_train, y_train, x_test, y_test): images as float32 [N, 8, 8] in [-1, 1], labels int64.

    Stratified 80/20 split with a fixed seed; tools/eval_digits.py uses the same function."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return x_tr, y_tr, x_te, y_te


def to_resolution(x: torch.Tensor, res: int) -> torch.Tensor:
    """[N,1,8,8] -> [N,1,res,res] (bilinear, align_corners=False); identity at 8."""
    if res == 8:
        return x
    return F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False)


def from_resolution(x: torch.Tensor) -> torch.Tensor:
    """[N,1,res,res] -> [N,1,8,8] by average pooling (identity at 8)."""
    res = x.shape[-1]
    if res == 8:
        return x
    return F.avg_pool2d(x, kernel_size=res // 8)


def build_unet(args) -> UNet2DModel:
    ch = tuple(args.channels)
    levels = len(ch)
    down = ["DownBlock2D"] + ["AttnDownBlock2D"] * (levels - 1)
    up = ["AttnUpBlock2D"] * (levels - 1) + ["UpBlock2D"]
    if args.no_attention:
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
    return UNet2DModel(
        sample_size=args.res,
        in_channels=1,
        out_channels=1,
        block_out_channels=ch,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        mid_block_type="UNetMidBlock2D",
        layers_per_block=args.layers,
        norm_num_groups=args.groups,
        attention_head_dim=args.head_dim,
        resnet_time_scale_shift=args.time_shift,
        num_class_embeds=NUM_CLASSES + 1,
        act_fn="silu",
        time_embedding_type="positional",
        dropout=args.dropout,
    )


def scheduler_kwargs(args) -> dict:
    # clip_sample is off: DDIMScheduler.step clips the predicted x0 but keeps the unclipped eps for
    # the "direction to x_t" term, and with classifier-free guidance (|eps| > 1 often) that mismatch
    # wrecks the samples (measured: DDIM-50 at guidance 3 gave ~1% accuracy with clipping, 100% without).
    kw = dict(num_train_timesteps=args.timesteps, beta_schedule=args.schedule, clip_sample=False,
              prediction_type="epsilon")
    if args.schedule == "linear":
        kw.update(beta_start=1e-4, beta_end=0.02)
    return kw


def augment(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """With probability p per image, shift by one pixel in x and/or y (zero = -1 padding)."""
    if p <= 0:
        return x
    n = x.shape[0]
    do = torch.rand(n, generator=g) < p
    dx = torch.randint(-1, 2, (n,), generator=g)
    dy = torch.randint(-1, 2, (n,), generator=g)
    out = x.clone()
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    h, w = x.shape[-2:]
    for i in torch.nonzero(do).flatten().tolist():
        oy, ox = 1 + int(dy[i]), 1 + int(dx[i])
        out[i] = padded[i, :, oy:oy + h, ox:ox + w]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "models" / "digits"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--res", type=int, default=8, choices=[8, 16])
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--time-shift", default="scale_shift", choices=["default", "scale_shift"])
    ap.add_argument("--no-attention", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--schedule", default="squaredcos_cap_v2", choices=["linear", "squaredcos_cap_v2"])
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.15)
    ap.add_argument("--augment", type=float, default=0.0, help="probability of a random 1-pixel shift per image")
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-minutes", type=float, default=28.0, help="stop early (and save) past this wall time")
    args = ap.parse_args(argv)
    print("args:", json.dumps(vars(args), sort_keys=True), flush=True)
    print("command: " + " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])), flush=True)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    x_tr, y_tr, _, _ = load_split()
    data = to_resolution(torch.from_numpy(x_tr)[:, None], args.res).contiguous()
    labels = torch.from_numpy(y_tr)
    n = data.shape[0]
    print(f"data: {n} training images, {tuple(data.shape[1:])}, range [{data.min():.2f}, {data.max():.2f}]", flush=True)

    unet = build_unet(args)
    ema = copy.deepcopy(unet).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    ema_params = list(ema.parameters())
    live_params = list(unet.parameters())
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"unet: {n_params:,} parameters ({n_params * 4 / 2**20:.2f} MiB float32)", flush=True)

    sched = DDPMScheduler(**scheduler_kwargs(args))
    abar = sched.alphas_cumprod.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))

    log = []
    t0 = time.time()
    run_loss, run_n = 0.0, 0
    perm = torch.randperm(n, generator=g)
    pos = 0
    step = 0
    stopped_early = False
    unet.train()
    for step in range(args.steps):
        if pos + args.batch > n:
            perm = torch.randperm(n, generator=g)
            pos = 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        x0 = augment(data[idx], g, args.augment)
        y = labels[idx].clone()
        drop = torch.rand(y.shape[0], generator=g) < args.p_uncond
        y[drop] = NULL_LABEL
        t = torch.randint(0, args.timesteps, (y.shape[0],), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        pred = unet(xt, t, class_labels=y).sample
        loss = F.mse_loss(pred, eps)

        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_params, decay)
            torch._foreach_add_(ema_params, live_params, alpha=1 - decay)

        run_loss += loss.item()
        run_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            el = time.time() - t0
            entry = {"step": step + 1, "loss": run_loss / run_n, "lr": lr_at(step), "seconds": round(el, 1)}
            log.append(entry)
            print(f"step {step + 1:6d}  loss {entry['loss']:.4f}  lr {entry['lr']:.2e}  {el:7.1f}s", flush=True)
            run_loss, run_n = 0.0, 0
            if el > args.max_minutes * 60 and step + 1 < args.steps:
                print(f"stopping early at step {step + 1}: past --max-minutes {args.max_minutes}", flush=True)
                stopped_early = True
                break
    wall = time.time() - t0
    print(f"trained {step + 1} steps in {wall:.1f}s ({wall / 60:.1f} min)", flush=True)

    # Save the EMA weights (float32) and the configs.
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ema.save_pretrained(str(out), safe_serialization=True)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["_null_class_label"] = NULL_LABEL
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    DDIMScheduler(**scheduler_kwargs(args)).save_config(str(out))
    (out / "train_log.json").write_text(json.dumps({
        "args": vars(args), "steps_done": step + 1, "stopped_early": stopped_early,
        "wall_seconds": round(wall, 1), "parameters": n_params, "train_images": n,
        "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
        "loss": log}, indent=2) + "\n")

    # Check that diffusers reloads the folder (extra "_" key included) to the same network.
    re = UNet2DModel.from_pretrained(str(out))
    xt = torch.randn((3, 1, args.res, args.res), generator=torch.Generator().manual_seed(1))
    tt = torch.tensor([10, 500, 999])
    yy = torch.tensor([3, 7, NULL_LABEL])
    with torch.no_grad():
        d = (re(xt, tt, class_labels=yy).sample - ema(xt, tt, class_labels=yy).sample).abs().max().item()
    assert d == 0.0, f"reloaded model differs by {d}"
    print(f"saved to {out} (reload check ok)", flush=True)


if __name__ == "__main__":
    main()
