#!/usr/bin/env python3
"""Write a diffusers SD pipeline folder as an ORIGINAL-LAYOUT single-file checkpoint (pure Python, stdlib only).

Usage:  python3 tools/single_file_layout.py FOLDER OUT --kind {sd1,sd2,vae}
From Python:  write_single_file(folder, out, kind)

  sd1  model.diffusion_model.* (UNet), first_stage_model.* (VAE; mid-block attention q/k/v/proj_out as 1x1 convs
       [C, C, 1, 1]), cond_stage_model.transformer.text_model.* (CLIPTextModel), plus the extra keys real files carry:
       the 12 LDM DDPM schedule buffers (F32 [1000]), model_ema.decay (F32 []), model_ema.num_updates (I32 []),
       model_ema.diffusion_modelinput_blocks00weight (random, conv_in's shape and dtype), position_ids (I64 [1, 77]).
  sd2  UNet and VAE as sd1; the text encoder in OpenCLIP layout under cond_stage_model.model. (in_proj = cat(q, k, v)
       along dim 0, ln_1/ln_2, mlp.c_fc/c_proj, ln_final) with ONE EXTRA final resblock (random: real SD2 files hold
       24 blocks where diffusers uses 23), text_projection [hidden, 32] and logit_scale [] (random), DDPM buffers.
  vae  the folder's VAE alone, layout of vae-ft-mse-840000-ema-pruned.safetensors (no prefix).

Every stored weight keeps the folder's dtype and bytes (keys renamed; VAE attention shapes changed; q/k/v bytes
concatenated). The random extras come from random.Random(seed) and are deterministic: a rerun writes identical
bytes. The key mapping is the inverse of diffusers' loaders/single_file_utils.py converters;
tools/make_single_file_fixtures.py checks it against diffusers' from_single_file (bitwise).
"""

import argparse
import json
import math
import random
import re
import struct
from pathlib import Path

KINDS = ("sd1", "sd2", "vae")
SEED = 1234
DTYPE_SIZE = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class Tensor:
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype: str, shape: list, data: bytes):
        n = DTYPE_SIZE[dtype] * math.prod(shape)
        if len(data) != n:
            raise ValueError(f"{dtype} {shape}: {len(data)} bytes, expected {n}")
        self.dtype, self.shape, self.data = dtype, list(shape), data


# ----------------------------------------------------------------------------------------------
# safetensors I/O


def read_safetensors(path: Path) -> dict:
    """{name: Tensor} of a safetensors file (symlinks followed), bytes as stored."""
    raw = Path(path).resolve().read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = memoryview(raw)[8 + n:]
    return {k: Tensor(v["dtype"], v["shape"], bytes(data[v["data_offsets"][0]:v["data_offsets"][1]]))
            for k, v in header.items()}


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Tensors laid out contiguously (largest element size first, then by name), header padded to 8 bytes."""
    order = sorted(tensors, key=lambda k: (-DTYPE_SIZE[tensors[k].dtype], k))
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    for k in order:
        t = tensors[k]
        header[k] = {"dtype": t.dtype, "shape": t.shape, "data_offsets": [off, off + len(t.data)]}
        off += len(t.data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for k in order:
            f.write(tensors[k].data)


def pack(dtype: str, shape: list, values) -> Tensor:
    fmt = {"F32": "f", "F16": "e", "I32": "i", "I64": "q"}[dtype]
    values = list(values)
    return Tensor(dtype, shape, struct.pack(f"<{len(values)}{fmt}", *values))


def rand_tensor(rng: random.Random, dtype: str, shape: list, offset: float = 0.0) -> Tensor:
    """offset + uniform [-0.1, 0.1]."""
    return pack(dtype, shape, (offset + rng.uniform(-0.1, 0.1) for _ in range(math.prod(shape))))


# ----------------------------------------------------------------------------------------------
# diffusers -> original key mapping

# ResnetBlock2D (diffusers) -> ResBlock (LDM openaimodel.py)
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_key(k: str, layers: int, up_types: list) -> str:
    """diffusers UNet2DConditionModel key -> LDM UNetModel key (without `model.diffusion_model.`).

    Transformer2DModel and SpatialTransformer share all inner names (norm, proj_in, transformer_blocks.N.{norm1,
    attn1.to_q/k/v/out.0, norm2, attn2..., norm3, ff.net.0.proj, ff.net.2}, proj_out), so attentions only move.
    """
    n = layers + 1  # LDM sequential slots per resolution level: `layers` resnets + 1 down/up sampler
    mod, _, leaf = k.rpartition(".")
    if mod in UNET_TOP:
        return f"{UNET_TOP[mod]}.{leaf}"

    def resnet(rest):
        sub, _, leaf = rest.rpartition(".")
        return f"{UNET_RESNET[sub]}.{leaf}"

    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k)
    if m:
        slot = 1 + int(m[1]) * n + int(m[3])
        return f"input_blocks.{slot}.0.{resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{slot}.1.{m[4]}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", k)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * n}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", k)
    if m:
        return f"middle_block.{2 * int(m[1])}.{resnet(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", k)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", k)
    if m:
        slot = int(m[1]) * n + int(m[3])
        return f"output_blocks.{slot}.0.{resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{slot}.1.{m[4]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", k)
    if m:
        b = int(m[1])
        pos = 2 if "CrossAttn" in up_types[b] else 1  # after the resnet (and the attention, if any)
        return f"output_blocks.{b * n + layers}.{pos}.conv.{m[2]}"
    raise ValueError(f"unmapped UNet key {k}")


VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_key(k: str, num_up: int) -> str:
    """diffusers AutoencoderKL key -> LDM AutoencoderKL key (no `first_stage_model.`)."""

    def resnet(rest):
        sub, _, leaf = rest.rpartition(".")
        return f"{'nin_shortcut' if sub == 'conv_shortcut' else sub}.{leaf}"

    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", k)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", k):
        return k
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", k)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", k)
    if m:  # LDM numbers decoder levels from the lowest resolution up: diffusers up_blocks.i = up.(n-1-i)
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", k)
    if m:
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", k)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)", k)
    if m:
        return f"{m[1]}.mid.attn_1.{VAE_ATTN[m[2]]}.{m[3]}"
    raise ValueError(f"unmapped VAE key {k}")


def rename(sd: dict, fn, prefix: str, what: str) -> dict:
    out = {prefix + fn(k): v for k, v in sd.items()}
    if len(out) != len(sd):
        raise ValueError(f"{what} mapping not injective")
    return out


def vae_to_ldm(sd: dict, num_up: int, prefix: str) -> dict:
    out = rename(sd, lambda k: vae_key(k, num_up), prefix, "VAE")
    for k, t in out.items():
        if ".mid.attn_1." in k and k.endswith("weight") and not k.endswith("norm.weight"):
            if len(t.shape) != 2 or t.shape[0] != t.shape[1]:
                raise ValueError(f"{k} {t.shape}")
            out[k] = Tensor(t.dtype, t.shape + [1, 1], t.data)  # LDM AttnBlock's q/k/v/proj_out: Conv2d(C, C, 1)
    return out


def unet_to_ldm(sd: dict, config: dict) -> dict:
    layers, up = config["layers_per_block"], config["up_block_types"]
    return rename(sd, lambda k: unet_key(k, layers, up), "model.diffusion_model.", "UNet")


def clip_to_ldm(sd: dict) -> dict:
    """transformers CLIPTextModel -> SD1 `cond_stage_model.transformer.text_model.*` (+ I64 position_ids)."""
    p = "cond_stage_model.transformer.text_model."
    out = {p + k.removeprefix("text_model."): v for k, v in sd.items()}
    out[p + "embeddings.position_ids"] = pack("I64", [1, 77], range(77))
    return out


CLIP_TO_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def clip_to_openclip(sd: dict, num_layers: int, hidden: int, rng: random.Random) -> dict:
    """CLIPTextModel -> OpenCLIP `cond_stage_model.model.*`, plus the extra resblock, text_projection, logit_scale."""
    p = "cond_stage_model.model."
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out = {
        p + "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        p + "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        p + "ln_final.weight": sd.pop("final_layer_norm.weight"),
        p + "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    for i in range(num_layers):
        lp, rp = f"encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            # nn.MultiheadAttention packs q, k, v along dim 0: in_proj_weight [3D, D], in_proj_bias [3D]
            q, k, v = (sd.pop(lp + f"self_attn.{x}_proj.{leaf}") for x in ("q", "k", "v"))
            if not (q.dtype == k.dtype == v.dtype and q.shape == k.shape == v.shape):
                raise ValueError(f"{lp}self_attn q/k/v {leaf}: dtype/shape mismatch")
            out[rp + f"attn.in_proj_{leaf}"] = Tensor(q.dtype, [3 * q.shape[0]] + q.shape[1:], q.data + k.data + v.data)
            for d, o in CLIP_TO_OPENCLIP_LAYER.items():
                out[rp + f"{o}.{leaf}"] = sd.pop(lp + f"{d}.{leaf}")
    if sd:
        raise ValueError(f"unmapped CLIP keys {sorted(sd)}")

    # the extra final resblock (SD2 files: 24 blocks, LDM's FrozenOpenCLIPEmbedder runs 23 = layer "penultimate")
    dt = out[p + "token_embedding.weight"].dtype
    b0 = f"{p}transformer.resblocks.0."
    for leaf in sorted(k[len(b0):] for k in out if k.startswith(b0)):
        one = 1.0 if leaf.startswith("ln_") and leaf.endswith("weight") else 0.0
        out[f"{p}transformer.resblocks.{num_layers}.{leaf}"] = rand_tensor(rng, dt, out[b0 + leaf].shape, one)
    # OpenCLIP's text_projection is [width, embed_dim] (x @ P); diffusers reads width from its shape[0]
    out[p + "text_projection"] = rand_tensor(rng, dt, [hidden, 32])
    out[p + "logit_scale"] = rand_tensor(rng, dt, [], math.log(1 / 0.07))
    return out


def ddpm_buffers(beta_start=0.00085, beta_end=0.012, n=1000) -> dict:
    """LDM's DDPM.register_schedule("linear" = diffusers' scaled_linear, v_posterior 0) buffers: float64 as LDM's
    numpy code (np.linspace(sqrt(b0), sqrt(b1), n) ** 2, cumprod, ...), stored F32 [n]."""
    s0, s1 = math.sqrt(beta_start), math.sqrt(beta_end)
    step = (s1 - s0) / (n - 1)
    lin = [i * step + s0 for i in range(n - 1)] + [s1]  # as np.linspace
    betas = [x * x for x in lin]
    alphas = [1.0 - b for b in betas]
    ac, acc = [], 1.0
    for a in alphas:
        acc *= a
        ac.append(acc)
    ac_prev = [1.0] + ac[:-1]
    post_var = [b * (1.0 - p) / (1.0 - c) for b, p, c in zip(betas, ac_prev, ac)]
    bufs = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": [math.sqrt(c) for c in ac],
        "sqrt_one_minus_alphas_cumprod": [math.sqrt(1.0 - c) for c in ac],
        "log_one_minus_alphas_cumprod": [math.log(1.0 - c) for c in ac],
        "sqrt_recip_alphas_cumprod": [math.sqrt(1.0 / c) for c in ac],
        "sqrt_recipm1_alphas_cumprod": [math.sqrt(1.0 / c - 1) for c in ac],
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": [math.log(max(v, 1e-20)) for v in post_var],
        "posterior_mean_coef1": [b * math.sqrt(p) / (1.0 - c) for b, p, c in zip(betas, ac_prev, ac)],
        "posterior_mean_coef2": [(1.0 - p) * math.sqrt(a) / (1.0 - c) for p, a, c in zip(ac_prev, alphas, ac)],
    }
    return {k: pack("F32", [n], v) for k, v in bufs.items()}


# ----------------------------------------------------------------------------------------------


def _weights(d: Path, stem: str) -> dict:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (d / name).exists():
            return read_safetensors(d / name)
    raise FileNotFoundError(f"{d}/{stem}[.fp16].safetensors not found")


def _config(d: Path, name: str = "config.json") -> dict:
    return json.loads((d / name).resolve().read_text())


def _merge(*parts: dict) -> dict:
    out = {}
    for part in parts:
        dup = set(out) & set(part)
        if dup:
            raise ValueError(f"duplicate keys {sorted(dup)[:5]}")
        out.update(part)
    return out


def build(folder: Path, kind: str) -> dict:
    """{original-layout key: Tensor} for `kind` in KINDS."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    folder = Path(folder)
    vae_up = len(_config(folder / "vae")["up_block_types"])
    vae_sd = _weights(folder / "vae", "diffusion_pytorch_model")
    if kind == "vae":
        return vae_to_ldm(vae_sd, vae_up, "")
    unet = unet_to_ldm(_weights(folder / "unet", "diffusion_pytorch_model"), _config(folder / "unet"))
    vae = vae_to_ldm(vae_sd, vae_up, "first_stage_model.")
    text_sd = _weights(folder / "text_encoder", "model")
    if kind == "sd1":
        rng = random.Random(SEED)
        conv_in = unet["model.diffusion_model.input_blocks.0.0.weight"]
        ema = {
            "model_ema.decay": pack("F32", [], [0.9999]),  # LitEma buffers: 0-dim f32 / int32
            "model_ema.num_updates": pack("I32", [], [470000]),
            # LitEma flattens `diffusion_model.input_blocks.0.0.weight` by dropping the dots
            "model_ema.diffusion_modelinput_blocks00weight": rand_tensor(rng, conv_in.dtype, conv_in.shape),
        }
        return _merge(unet, vae, clip_to_ldm(text_sd), ema, ddpm_buffers())
    tcfg = _config(folder / "text_encoder")
    text = clip_to_openclip(text_sd, tcfg["num_hidden_layers"], tcfg["hidden_size"], random.Random(SEED + 1))
    return _merge(unet, vae, text, ddpm_buffers())


def write_single_file(folder: Path, out: Path, kind: str) -> Path:
    """Write the pipeline folder `folder` as an original-layout single file `out` ("sd1", "sd2" or "vae")."""
    out = Path(out)
    write_safetensors(out, build(folder, kind), metadata={"format": "pt"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="diffusers pipeline folder (unet/, vae/, text_encoder/)")
    ap.add_argument("out", type=Path, help="output .safetensors")
    ap.add_argument("--kind", choices=KINDS, required=True)
    args = ap.parse_args()
    write_single_file(args.folder, args.out, args.kind)
    print(f"{args.out}: {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
