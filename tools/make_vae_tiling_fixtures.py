#!/usr/bin/env python3
"""Reference outputs of diffusers' tiled VAE decode and encode (AutoencoderKL with use_tiling).

Usage (see tools/README.md):  .venv/bin/python tools/make_vae_tiling_fixtures.py [--out PATH]

Loads the tiny random VAE of Tests/Fixtures/sd/sd1/vae (written by make_sd_fixtures.py) with
AutoencoderKL.from_pretrained, shrinks the tiles so that small inputs cross many tile borders, and writes
Tests/Fixtures/sd/refs/sd1/vae_tiled.safetensors (f32):

  z           [1, 4, 10, 13]   latents (the decoder's input: already divided by scaling_factor)
  decoded     [1, 3, 80, 104]  vae.decode(z).sample with use_tiling (diffusers' tiled_decode)
  image       [1, 3, 80, 104]  a smooth pattern in [-1, 1]
  mean        [1, 4, 10, 13]   vae.encode(image).latent_dist.mean with use_tiling (diffusers' _tiled_encode)
  logvar      [1, 4, 10, 13]   .logvar (clamped to [-30, 20] after blending)
  tile_sample_min_size, tile_latent_min_size  i64 [1]   the tile sizes used (32 and 4)

Tiles: tile_sample_min_size 32, tile_latent_min_size 4 (= 32 / 2^(4 levels - 1)), tile_overlap_factor 0.25
(diffusers' default): latent tiles start every int(4 * 0.75) = 3 and overlap by int(32 * 0.25) = 8 pixels of
blending; image tiles start every int(32 * 0.75) = 24 pixels and blend int(4 * 0.25) = 1 latent row / column.
10 x 13 latents and 80 x 104 images end in a 1-latent / 8-pixel tile, so the edge cases (blend extents
limited by a small tile, crops shorter than row_limit) are exercised. The script checks that tiling
actually changes the result (vs the plain decode / encode), i.e. that the blend is tested.

One thread, float32; a rerun on the same machine writes byte-identical files.
"""

import argparse
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffusers import AutoencoderKL

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
VAE_DIR = ROOT / "Tests/Fixtures/sd/sd1/vae"
OUT = ROOT / "Tests/Fixtures/sd/refs/sd1/vae_tiled.safetensors"


def smooth_image(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    u, v = xx / (w - 1), yy / (h - 1)
    r = torch.sin(2 * math.pi * (1.3 * u + 0.4 * v))
    g = torch.cos(math.pi * (3 * v - u)) * 0.9
    b = torch.tanh(4 * (u - 0.4)) * torch.cos(3 * math.pi * v * u)
    return torch.stack([r, g, b]).unsqueeze(0).to(torch.float32).clamp(-1, 1)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    vae = AutoencoderKL.from_pretrained(str(VAE_DIR), torch_dtype=torch.float32).eval()
    levels = len(vae.config.block_out_channels)
    plain_z = torch.randn((1, 4, 10, 13), generator=torch.Generator().manual_seed(7))
    image = smooth_image(80, 104)
    plain_decoded = vae.decode(plain_z).sample
    plain_moments = vae.encode(image).latent_dist

    # diffusers 0.42.1: AutoencoderKL.__init__ sets these three from the config; enable_tiling() sets use_tiling.
    vae.tile_sample_min_size = 32
    vae.tile_latent_min_size = 32 // 2 ** (levels - 1)
    assert vae.tile_latent_min_size == 4 and vae.tile_overlap_factor == 0.25
    vae.enable_tiling()
    assert vae.use_tiling

    decoded = vae.decode(plain_z).sample
    dist = vae.encode(image).latent_dist
    assert decoded.shape == (1, 3, 80, 104) and dist.mean.shape == (1, 4, 10, 13), (decoded.shape, dist.mean.shape)
    # The tiled results must differ from the plain ones, or the test would not see the blending.
    d_dec = float((decoded - plain_decoded).abs().max())
    d_mean = float((dist.mean - plain_moments.mean).abs().max())
    assert d_dec > 1e-2 and d_mean > 1e-2, (d_dec, d_mean)
    # ... and match diffusers' tiled_decode when called directly.
    assert torch.equal(vae.tiled_decode(plain_z).sample, decoded)

    tensors = {"z": plain_z, "decoded": decoded, "image": image, "mean": dist.mean, "logvar": dist.logvar,
               "tile_sample_min_size": torch.tensor([vae.tile_sample_min_size], dtype=torch.int64),
               "tile_latent_min_size": torch.tensor([vae.tile_latent_min_size], dtype=torch.int64)}
    for k, v in tensors.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(args.out),
              metadata={"format": "pt"})
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): max|decoded| {float(decoded.abs().max()):.4f}, "
          f"tiled vs plain decode {d_dec:.4f}, tiled vs plain mean {d_mean:.4f}, "
          f"logvar [{float(dist.logvar.min()):.3f}, {float(dist.logvar.max()):.3f}]")


if __name__ == "__main__":
    main()
