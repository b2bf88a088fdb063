"""Failures carry the library's status and message; bad arguments never crash."""

import json
import shutil

import numpy as np
import pytest

import diffusion
from diffusion import Status
import helpers


def _copy_model(src, dst):
    dst.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def _assert_error(ei, status):
    e = ei.value
    assert e.status == status, f"{e!r}"
    assert isinstance(e.message, str) and e.message, "the library's message should be carried"
    assert status.c_name in str(e) and e.message in str(e)


def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(missing)
    _assert_error(ei, Status.ERROR_IO)
    assert "no_such_model" in ei.value.message


def test_corrupt_weights(tmp_path, plain_dir):
    d = _copy_model(plain_dir, tmp_path / "m")
    (d / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 7 + b"not a safetensors file")
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(d)
    _assert_error(ei, Status.ERROR_INVALID_FILE)


def test_truncated_weights(tmp_path, plain_dir):
    d = _copy_model(plain_dir, tmp_path / "m")
    p = d / "diffusion_pytorch_model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(d)
    _assert_error(ei, Status.ERROR_INVALID_FILE)


def test_corrupt_config(tmp_path, plain_dir):
    d = _copy_model(plain_dir, tmp_path / "m")
    (d / "config.json").write_text('{"in_channels": 3,')
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(d)
    _assert_error(ei, Status.ERROR_INVALID_FILE)


def test_missing_tensor(tmp_path, plain_dir):
    d = _copy_model(plain_dir, tmp_path / "m")
    p = d / "diffusion_pytorch_model.safetensors"
    header, data = helpers.read_safetensors_raw(p)
    dropped = sorted(header)[0]
    tensors = {
        name: (info["dtype"], info["shape"], data[info["data_offsets"][0] : info["data_offsets"][1]])
        for name, info in header.items()
        if name != dropped
    }
    helpers.write_safetensors_raw(p, tensors)
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(d)
    _assert_error(ei, Status.ERROR_MODEL_MISMATCH)
    assert dropped in ei.value.message


def test_unsupported_config(tmp_path, plain_dir):
    d = _copy_model(plain_dir, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    config["act_fn"] = "no_such_activation"
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(d)
    _assert_error(ei, Status.ERROR_UNSUPPORTED)
    assert "act_fn" in ei.value.message


def test_bad_threads(plain_dir):
    with pytest.raises(ValueError):
        diffusion.load(plain_dir, threads=-1)
    with pytest.raises(TypeError):
        diffusion.load(plain_dir, threads=1.5)


def test_error_is_per_call(tmp_path, plain_dir):
    """A failure's message belongs to that failure, not to an earlier one."""
    with pytest.raises(diffusion.DiffusionError) as first:
        diffusion.load(tmp_path / "first_missing")
    with pytest.raises(diffusion.DiffusionError) as second:
        diffusion.load(tmp_path / "second_missing")
    assert "first_missing" in first.value.message
    assert "second_missing" in second.value.message and "first_missing" not in second.value.message


# ---- bad arguments ------------------------------------------------------------------------


def test_predict_bad_shapes(plain):
    with pytest.raises(ValueError):
        plain.predict(np.zeros((3, 16, 16), np.float32), 1)
    with pytest.raises(ValueError):
        plain.predict(np.zeros((1, plain.in_channels + 1, 16, 16), np.float32), 1)
    with pytest.raises(ValueError):
        plain.predict(np.zeros((2, plain.in_channels, 16, 16), np.float32), [1, 2, 3])


def test_predict_empty_batch_is_an_error_not_a_crash(plain):
    with pytest.raises((diffusion.DiffusionError, ValueError)):
        plain.predict(np.zeros((0, plain.in_channels, 16, 16), np.float32), 1)


def test_predict_class_label_out_of_range(class_model):
    x = np.zeros((2, class_model.in_channels, 16, 16), np.float32)
    with pytest.raises(diffusion.DiffusionError) as ei:
        class_model.predict(x, [1, 2], class_labels=[0, class_model.num_class_embeds])
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with pytest.raises(diffusion.DiffusionError) as ei:
        class_model.predict(x, [1, 2], class_labels=[-1, 0])
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with pytest.raises(ValueError):
        class_model.predict(x, [1, 2], class_labels=[2**40, 0])
    with pytest.raises(TypeError):
        class_model.predict(x, [1, 2], class_labels=[0.5, 1.5])


def test_sampler_wrong_latents_shape(plain):
    with plain.sampler(steps=2, batch=2) as s:
        with pytest.raises(ValueError) as ei:
            s.latents = np.zeros((1,) + s.shape[1:], np.float32)
        assert str(s.shape) in str(ei.value)
        with pytest.raises(ValueError):
            s.latents = np.zeros(s.shape[1:], np.float32)


def test_sampler_class_label_out_of_range(class_model):
    n = class_model.num_class_embeds
    with pytest.raises(diffusion.DiffusionError) as ei:
        class_model.sampler(steps=2, class_label=n)
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with pytest.raises(diffusion.DiffusionError) as ei:
        class_model.sampler(steps=2, batch=3, class_label=[0, 1])  # neither 1 nor batch labels
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with class_model.sampler(steps=2) as s:
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_class_label(-1)
        _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)


def test_unknown_scheduler(plain):
    with pytest.raises(diffusion.DiffusionError) as ei:
        plain.sampler(scheduler="no_such_scheduler", steps=2)
    assert ei.value.status in (Status.ERROR_INVALID_ARGUMENT, Status.ERROR_UNSUPPORTED)
    assert "no_such_scheduler" in ei.value.message


def test_malformed_scheduler_config(plain):
    with pytest.raises(diffusion.DiffusionError) as ei:
        plain.sampler(steps=2, scheduler_config='{"clip_sample": fals')
    assert ei.value.status in (Status.ERROR_INVALID_ARGUMENT, Status.ERROR_INVALID_FILE)
    assert ei.value.message
    with pytest.raises(TypeError):
        plain.sampler(steps=2, scheduler_config=42)


def test_bad_scheduler_config_value(plain):
    with pytest.raises(diffusion.DiffusionError) as ei:
        plain.sampler(scheduler="ddim", steps=2, scheduler_config={"timestep_spacing": "sideways"})
    assert ei.value.status in (Status.ERROR_INVALID_ARGUMENT, Status.ERROR_UNSUPPORTED)
    assert "timestep_spacing" in ei.value.message


def test_nul_in_strings(plain, plain_dir):
    with pytest.raises(ValueError, match="NUL"):
        diffusion.load(str(plain_dir) + "\0/elsewhere")
    with pytest.raises(ValueError, match="NUL"):
        plain.sampler(scheduler="ddim\0x")
    with pytest.raises(ValueError, match="NUL"):
        plain.sampler(scheduler_config='{"clip_sample": false}\0')


def test_bad_sampler_numbers(plain):
    with pytest.raises(diffusion.DiffusionError):
        plain.sampler(batch=0)
    with pytest.raises(ValueError):
        plain.sampler(seed=-1)
    with pytest.raises(ValueError):
        plain.sampler(steps=2**31)
    with pytest.raises(TypeError):
        plain.sampler(steps="10")


def test_guidance_without_unconditional(plain, class_model):
    with pytest.raises(diffusion.DiffusionError) as ei:
        plain.sampler(steps=2, guidance_scale=3.0)
    _assert_error(ei, Status.ERROR_NO_UNCONDITIONAL)
    # classes but no null class (config.json has no _null_class_label): no unconditional input either
    with pytest.raises(diffusion.DiffusionError) as ei:
        class_model.sampler(steps=2, guidance_scale=3.0, class_label=1)
    _assert_error(ei, Status.ERROR_NO_UNCONDITIONAL)
    with plain.sampler(steps=2, guidance_scale=1.0) as s:  # 1 = no guidance: fine
        s.run()


def test_step_after_the_last(plain):
    with plain.sampler(scheduler="ddim", steps=2) as s:
        s.run()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.step()
        _assert_error(ei, Status.ERROR_INVALID_STATE)
        # run() "runs the remaining steps": none is left, so it only returns x_0 again
        assert np.array_equal(s.run(), s.latents)


# ---- use after close ----------------------------------------------------------------------


def test_model_use_after_close(plain_dir):
    m = diffusion.load(plain_dir)
    m.close()
    m.close()  # idempotent
    assert m.closed
    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="closed"):
        m.predict(x, 1)
    with pytest.raises(ValueError, match="closed"):
        m.config
    with pytest.raises(ValueError, match="closed"):
        m.sampler()
    assert "closed" in repr(m)
    assert m.in_channels == 3  # cached info stays readable


def test_sampler_use_after_close(plain):
    s = plain.sampler(scheduler="ddim", steps=2)
    s.close()
    s.close()
    assert s.closed
    for op in (lambda: s.latents, s.step, s.run, s.images, lambda: s.timesteps,
               lambda: setattr(s, "latents", np.zeros(s.shape, np.float32)), lambda: s.set_guidance_scale(1.0)):
        with pytest.raises(ValueError, match="closed"):
            op()
    s.cancel()  # a no-op once closed


def test_model_close_with_live_sampler(plain_dir):
    m = diffusion.load(plain_dir)
    s = m.sampler(scheduler="ddim", steps=3)
    m.close()
    assert m.closed and m._handle is not None  # freed only when the sampler is done
    with pytest.raises(ValueError):
        m.sampler()
    out = s.run()  # the sampler still works
    assert out.shape == s.shape
    s.close()
    assert m._handle is None


def test_garbage_collected_sampler_releases_model(plain_dir):
    import gc

    m = diffusion.load(plain_dir)
    m.sampler(steps=2)  # dropped at once
    gc.collect()
    assert m._users == 0
    m.close()
    assert m._handle is None


def test_context_managers(plain_dir):
    with diffusion.load(plain_dir) as m:
        with m.sampler(scheduler="ddim", steps=2) as s:
            s.run()
        assert s.closed
    assert m.closed and m._handle is None


def _poison(path, tensor, value):
    """Overwrites the first float32 of `tensor` in a safetensors file with `value`."""
    import struct

    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    entry = header[tensor]
    assert entry["dtype"] == "F32"
    start = 8 + n + entry["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def test_non_finite_weights_fail_the_step_not_the_image(tmp_path, plain_dir):
    """A NaN in the weights loads (values are not scanned) but the first step reports it instead of
    producing NaN images; x_t stays as it was."""
    model_dir = tmp_path / "m"
    _copy_model(plain_dir, model_dir)
    _poison(model_dir / "diffusion_pytorch_model.safetensors", "conv_out.bias", float("nan"))
    with diffusion.load(model_dir) as m, m.sampler(scheduler="ddim", steps=3, seed=1) as s:
        before = s.latents
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.step()
        _assert_error(ei, Status.ERROR_INVALID_FILE)
        assert "not finite" in ei.value.message
        assert np.array_equal(s.latents, before) and s.steps_done == 0


def test_predict_refuses_non_finite_weights_and_inputs(tmp_path, plain_dir):
    """predict behaves like a step: NaN weights give INVALID_FILE, not NaN output; a non-finite
    input or context is refused."""
    model_dir = tmp_path / "m"
    _copy_model(plain_dir, model_dir)
    x = np.zeros((1, 3, 16, 16), np.float32)
    with diffusion.load(plain_dir) as m:
        assert np.isfinite(m.predict(x, 10)).all()
        bad = x.copy()
        bad[0, 1, 2, 3] = np.nan
        with pytest.raises(diffusion.DiffusionError) as ei:
            m.predict(bad, 10)
        _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
        assert "non-finite" in ei.value.message
    _poison(model_dir / "diffusion_pytorch_model.safetensors", "conv_out.bias", float("nan"))
    with diffusion.load(model_dir) as m:
        with pytest.raises(diffusion.DiffusionError) as ei:
            m.predict(x, 10)
        _assert_error(ei, Status.ERROR_INVALID_FILE)
        assert "not finite" in ei.value.message


def test_non_finite_latents_are_refused_at_the_step(plain):
    with plain.sampler(scheduler="ddim", steps=3, seed=1) as s:
        x = s.latents
        x[0, 0, 0, 0] = np.inf
        s.latents = x
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.step()
        _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
        assert "non-finite" in ei.value.message


def test_memory_limit(plain_dir):
    """memory_limit refuses weights larger than it at load, and work over it with the numbers."""
    size = (plain_dir / "diffusion_pytorch_model.safetensors").stat().st_size
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.load(plain_dir, memory_limit=size // 2)
    _assert_error(ei, Status.ERROR_OUT_OF_MEMORY)
    assert "memory_limit" in ei.value.message and "weights" in ei.value.message
    with pytest.raises(ValueError):
        diffusion.load(plain_dir, memory_limit=-1)
    with diffusion.load(plain_dir, memory_limit=size + (8 << 20)) as m:
        m.predict(np.zeros((1, 3, 16, 16), np.float32), 10)
        with pytest.raises(diffusion.DiffusionError) as ei:
            m.sampler(batch=64, height=256, width=256)
        _assert_error(ei, Status.ERROR_OUT_OF_MEMORY)
        assert "memory_limit" in ei.value.message and "batch of 64 at 256x256" in ei.value.message
