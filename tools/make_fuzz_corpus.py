"""Writes the seed corpus of each fuzz target (Tests/fuzz/corpus/<target>/) from the test fixtures.

    python3 tools/make_fuzz_corpus.py

Seeds are valid inputs (and a few near-valid ones) that the fuzzer mutates; see
Tests/fuzz/fuzz_targets.c for what each target feeds them to. The selector byte that some targets
read first picks which file the rest replaces. Deterministic: the same fixtures give the same files.
"""
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from single_file_layout import write_single_file  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "Tests", "Fixtures")
OUT = os.path.join(ROOT, "Tests", "fuzz", "corpus")

PIPELINE_FILES = ["model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                  "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
                  "scheduler/scheduler_config.json"]


def read(*parts):
    with open(os.path.join(FIX, *parts), "rb") as f:
        return f.read()


def write(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def png(width, height, color_type, rows, level, palette=None):
    """A PNG file: rows are the filtered scanlines (filter byte first)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(b"".join(rows), level)) + chunk(b"IEND", b"")


def png_seeds():
    """Every color type, every filter, stored / fixed / dynamic deflate blocks."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
    seeds = {}
    for ct, c in channels.items():
        w, h = 7, 5
        rows = [bytes([y % 5]) + bytes((x * 37 + y * 11 + k * 5) % 256 for x in range(w) for k in range(c)) for y in range(h)]
        pal = bytes(range(48)) if ct == 3 else None
        if ct == 3:
            rows = [bytes([r[0]]) + bytes(b % 16 for b in r[1:]) for r in rows]
        for level in (0, 1, 9):
            seeds[f"ct{ct}_level{level}"] = png(w, h, ct, rows, level, pal)
    big = [bytes([1]) + bytes((x * y) % 256 for x in range(64)) for y in range(64)]
    seeds["gray64_dynamic"] = png(64, 64, 0, big, 9)
    return seeds


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    # safetensors: the target's own weights, and a header-only cut of them.
    w = read("unet", "attn_head_dim4", "diffusion_pytorch_model.safetensors")
    write("safetensors", "attn_head_dim4", w)
    n = int.from_bytes(w[:8], "little")
    write("safetensors", "header_only", w[:8 + n])
    # unet_config: configs of the UNet2DModel fixtures (the weights are attn_head_dim4's).
    for name in sorted(os.listdir(os.path.join(FIX, "unet"))):
        path = os.path.join(FIX, "unet", name, "config.json")
        if os.path.isfile(path):
            write("unet_config", name, read("unet", name, "config.json"))
    # scheduler_config: selector byte (scheduler = byte % 10, steps, eta) + JSON.
    configs = [b"{}", b'{"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"}',
               b'{"use_karras_sigmas": true, "timestep_spacing": "trailing"}',
               b'{"prediction_type": "v_prediction", "rescale_betas_zero_snr": true}',
               b'{"beta_start": 0.1, "beta_end": 0.2, "steps_offset": 1, "solver_order": 3}',
               read("sd", "sd1", "scheduler", "scheduler_config.json")]
    for i, c in enumerate(configs):
        for sel in (i, 10 + 3 * i + 1, 47 + i):
            write("scheduler_config", f"s{sel:03d}", bytes([sel]) + c)
    # pipeline_config: selector byte + each config of the tiny SD pipeline.
    for i, name in enumerate(PIPELINE_FILES):
        write("pipeline_config", name.replace("/", "_"), bytes([i]) + read("sd", "sd1", *name.split("/")))
    # tokenizer: selector + a small vocabulary (the first 400 tokens and the specials), + merges cut.
    vocab = json.loads(read("clip_vocab", "vocab.json"))
    small = {k: v for k, v in vocab.items() if v < 400 or k.startswith("<|")}
    write("tokenizer", "vocab_small", bytes([0]) + json.dumps(small, ensure_ascii=False).encode())
    merges = read("clip_vocab", "merges.txt").split(b"\n")
    write("tokenizer", "merges_small", bytes([1]) + b"\n".join(merges[:200]) + b"\n")
    # prompt: ordinary and odd prompts.
    prompts = ["a photograph of an astronaut riding a horse", "", " ", "<|startoftext|><|endoftext|>",
               "don't STOP 123,456 é ü 日本語 🤖", "a" * 300, "(masterpiece:1.2), [blue], {x|y}", "\t\n\r"]
    for i, p in enumerate(prompts):
        write("prompt", f"p{i}", p.encode())
    # single_file: the tiny pipelines as original-layout checkpoints, header only (every tensor
    # empty, so loading ends at the first shape check, after the key maps), and the standalone
    # VAE's keys (unprefixed: refused as a whole checkpoint).
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("sd1", "sd2", "vae"):
            path = os.path.join(tmp, kind + ".safetensors")
            write_single_file(os.path.join(FIX, "sd", "sd1" if kind == "vae" else kind), path, kind)
            with open(path, "rb") as f:
                data = f.read()
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            empty = {k: {"dtype": v["dtype"], "shape": [0], "data_offsets": [0, 0]}
                     for k, v in header.items() if k != "__metadata__"}
            body = json.dumps(empty).encode()
            write("single_file", kind + "_keys", struct.pack("<Q", len(body)) + body)
    # png: the CLI's decoder (init images and masks).
    for name, data in png_seeds().items():
        write("png", name, data)
    print("corpus written to", os.path.relpath(OUT, ROOT))


if __name__ == "__main__":
    main()
