"""Single-file checkpoints (original SD 1.x / 2.x layout) loaded with config_from: the tiny pipelines of
Tests/Fixtures/sd written as single files at test time by tools/single_file_layout.py (which
tools/make_single_file_fixtures.py checks against diffusers' from_single_file: bitwise the folders' weights). Same weights, same code: the file must
give the folder's outputs exactly. Then hostile variants: unknown, missing and unused keys, wrong configs."""

import atexit
import json
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import diffusion
from diffusion import Status
import helpers

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools"))
from single_file_layout import write_single_file  # noqa: E402

_TMP = Path(tempfile.mkdtemp(prefix="libdiffusion-single-file-"))
atexit.register(shutil.rmtree, _TMP, True)
RUN = dict(steps=2, seed=11, height=64, width=64, guidance_scale=5.0, negative_prompt="blurry")


def single_file(name):
    """sd1 / sd2 / vae .safetensors, written once per session from the fixture folders."""
    kind = name.removesuffix(".safetensors")
    path = _TMP / name
    if not path.is_file():
        write_single_file(helpers.sd_pipeline("sd1" if kind == "vae" else kind), path, kind)
    return path


def _error(fn, status, *words):
    with pytest.raises(diffusion.DiffusionError) as ei:
        fn()
    assert ei.value.status == status, repr(ei.value)
    for w in words:
        assert w in ei.value.message, ei.value.message
    return ei.value.message


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_single_file_equals_folder(name):
    folder = helpers.sd_pipeline(name)
    with diffusion.load(folder) as p:
        want_text = p.encode_prompt("a photo of a cat")
        want = p.generate("a photo of a cat", **RUN)
        info = dict(p.info)
    with diffusion.load(single_file(f"{name}.safetensors"), config_from=folder) as q:
        assert {k: v for k, v in q.info.items() if k != "config"} == {k: v for k, v in info.items() if k != "config"}
        got_text = q.encode_prompt("a photo of a cat")
        assert got_text.tobytes() == want_text.tobytes(), "text states differ"
        got = q.generate("a photo of a cat", **RUN)
    assert got.dtype == np.uint8 and got.shape == want.shape
    assert np.array_equal(got, want), f"{name}: images differ by {int(np.abs(got.astype(int) - want).max())}"


def test_single_file_bf16_unet_loads(tmp_path):
    # The UNet stored as BF16 (its F16 values rounded to nearest even): a loading test, so its output is
    # compared with the folder's loosely (other weights, slightly).
    tensors = _tensors(single_file("sd1.safetensors"))
    for key, (dtype, shape, raw) in tensors.items():
        if key.startswith("model.diffusion_model.") and dtype == "F16":
            bits = np.frombuffer(raw, np.float16).astype(np.float32).view(np.uint32)
            tensors[key] = ("BF16", shape, ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16).tobytes())
    path = tmp_path / "sd1_bf16.safetensors"
    _save(path, tensors)
    folder = helpers.sd_pipeline("sd1")
    with diffusion.load(folder) as p:
        want = p.generate("a cat", **RUN)
    with diffusion.load(path, config_from=folder) as q:
        got = q.generate("a cat", **RUN)
    assert got.shape == want.shape and not np.array_equal(got, want), "BF16 weights should change the output a little"
    assert np.abs(got.astype(int) - want).mean() < 8, "BF16 UNet weights far from the F16 ones"


def test_single_file_needs_config_from():
    _error(lambda: diffusion.load(single_file("sd1.safetensors")), Status.ERROR_UNSUPPORTED, "config_from")
    _error(lambda: diffusion.load(helpers.sd_pipeline("sd1"), config_from=helpers.sd_pipeline("sd1")),
           Status.ERROR_INVALID_ARGUMENT, "single-file")
    _error(lambda: diffusion.load(single_file("sd1.safetensors"), config_from=helpers.sd_pipeline("sd1") / "unet"),
           Status.ERROR_IO, "model_index.json")


def test_single_file_with_the_wrong_config():
    # sd1's weights described by sd2's configs: shapes differ (text width 32 vs 48).
    _error(lambda: diffusion.load(single_file("sd1.safetensors"), config_from=helpers.sd_pipeline("sd2")),
           Status.ERROR_MODEL_MISMATCH, "sd1.safetensors")


# ---- hostile variants, written from sd1.safetensors -----------------------------------------


def _tensors(path):
    """{name: (dtype, shape, raw bytes)} of a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


def _save(path, tensors):
    header, chunks, offset = {}, [], 0
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"".join(chunks))


def _variant(tmp_path, edit):
    tensors = _tensors(single_file("sd1.safetensors"))
    edit(tensors)
    out = tmp_path / "variant.safetensors"
    _save(out, tensors)
    return out


def _load(path):
    return lambda: diffusion.load(path, config_from=helpers.sd_pipeline("sd1")).close()


def test_unknown_key_is_named(tmp_path):
    def add(t):
        t["model.diffusion_model.input_blocks.1.0.mystery.weight"] = t["model.diffusion_model.out.2.bias"]
    _error(_load(_variant(tmp_path, add)), Status.ERROR_MODEL_MISMATCH, "input_blocks.1.0.mystery.weight")

    def foreign(t):
        t["lora_unet_down_blocks_0.alpha"] = t["model.diffusion_model.out.2.bias"]
    _error(_load(_variant(tmp_path, foreign)), Status.ERROR_MODEL_MISMATCH, "lora_unet_down_blocks_0.alpha")


def test_missing_key_is_named(tmp_path):
    _error(_load(_variant(tmp_path, lambda t: t.pop("first_stage_model.decoder.mid.attn_1.q.weight"))),
           Status.ERROR_MODEL_MISMATCH, "decoder.mid_block.attentions.0.to_q.weight")
    _error(_load(_variant(tmp_path, lambda t: t.pop("model.diffusion_model.output_blocks.2.1.conv.weight"))),
           Status.ERROR_MODEL_MISMATCH, "up_blocks.0.upsamplers.0.conv.weight")


def test_unused_key_is_named(tmp_path):
    # A resnet of a level the config does not have: it maps to a name, but the model never reads it.
    def extra(t):
        t["model.diffusion_model.input_blocks.40.0.in_layers.0.weight"] = t["model.diffusion_model.out.0.weight"]
    _error(_load(_variant(tmp_path, extra)), Status.ERROR_MODEL_MISMATCH, "input_blocks.40.0.in_layers.0.weight",
           "not used")


def test_not_a_checkpoint(tmp_path):
    tensors = _tensors(single_file("sd1.safetensors"))
    path = tmp_path / "vae_only.safetensors"
    _save(path, {k: v for k, v in tensors.items() if k.startswith("first_stage_model.")})
    _error(_load(path), Status.ERROR_MODEL_MISMATCH, "model.diffusion_model")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{]}xx")
    _error(_load(tmp_path / "garbage.safetensors"), Status.ERROR_INVALID_FILE, "garbage.safetensors")


# ---- a standalone VAE file replacing a pipeline's VAE ----------------------------------------


def test_standalone_vae_replaces_the_pipelines():
    # sd1's own VAE as a vae-ft-mse-style file: the images are the folder's, bitwise; on sd2 (same VAE
    # shapes, other weights) it changes the decoded images, so the file's weights are the ones used.
    vae = single_file("vae.safetensors")
    with diffusion.load(helpers.sd_pipeline("sd1")) as p:
        want = p.generate("a cat", **RUN)
    with diffusion.load(helpers.sd_pipeline("sd1"), vae=vae) as p:
        assert np.array_equal(p.generate("a cat", **RUN), want)
    with diffusion.load(single_file("sd1.safetensors"), config_from=helpers.sd_pipeline("sd1"), vae=vae) as p:
        assert np.array_equal(p.generate("a cat", **RUN), want)
    with diffusion.load(helpers.sd_pipeline("sd2")) as p:
        own = p.generate("a cat", **RUN)
    with diffusion.load(helpers.sd_pipeline("sd2"), vae=vae) as p:
        assert not np.array_equal(p.generate("a cat", **RUN), own)


def test_standalone_vae_errors(tmp_path):
    _error(lambda: diffusion.load(helpers.unet_dir("plain"), vae=single_file("vae.safetensors")),
           Status.ERROR_INVALID_ARGUMENT, "has no VAE")
    # A whole checkpoint given as the VAE: its keys carry prefixes a VAE file does not have.
    _error(lambda: diffusion.load(helpers.sd_pipeline("sd1"), vae=single_file("sd1.safetensors")),
           Status.ERROR_MODEL_MISMATCH, "whole Stable Diffusion checkpoint")
    tensors = _tensors(single_file("vae.safetensors"))
    tensors.pop("decoder.up.0.block.1.conv2.weight")
    _save(tmp_path / "vae_missing.safetensors", tensors)
    _error(lambda: diffusion.load(helpers.sd_pipeline("sd1"), vae=tmp_path / "vae_missing.safetensors"),
           Status.ERROR_MODEL_MISMATCH, "decoder.up_blocks.3.resnets.1.conv2.weight")


def test_mixed_text_encoders_are_refused(tmp_path):
    def both(t):
        t["cond_stage_model.model.token_embedding.weight"] = t["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"]
    _error(_load(_variant(tmp_path, both)), Status.ERROR_MODEL_MISMATCH, "both a CLIP", "OpenCLIP")


def test_layers_per_block_list_in_config_from(tmp_path):
    # The original layout numbers blocks for one layers_per_block: a list of equal values works, unequal is refused.
    folder = tmp_path / "sd1"
    shutil.copytree(helpers.sd_pipeline("sd1"), folder)
    config_path = folder / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    levels = len(config["block_out_channels"])
    config["layers_per_block"] = [2] * levels
    config_path.write_text(json.dumps(config))
    with diffusion.load(single_file("sd1.safetensors"), config_from=folder) as q:
        assert q.info["in_channels"] == 4
    config["layers_per_block"] = [2] * (levels - 1) + [1]
    config_path.write_text(json.dumps(config))
    _error(lambda: diffusion.load(single_file("sd1.safetensors"), config_from=folder).close(),
           Status.ERROR_UNSUPPORTED, "layers_per_block")
    config["layers_per_block"] = -3
    config_path.write_text(json.dumps(config))
    _error(lambda: diffusion.load(single_file("sd1.safetensors"), config_from=folder).close(),
           Status.ERROR_INVALID_FILE, "config.json", "layers_per_block")
