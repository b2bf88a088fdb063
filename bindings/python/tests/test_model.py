"""Model: loading, config, info and predict against diffusers' reference outputs."""

import json
import threading

import numpy as np
import pytest

import diffusion
import helpers


def test_config_is_a_dict(plain, plain_dir):
    config = plain.config
    assert isinstance(config, dict)
    assert set(config) >= {"unet", "scheduler"}
    assert isinstance(config["unet"], dict) and isinstance(config["scheduler"], dict)
    on_disk = json.loads((plain_dir / "config.json").read_text())
    for key in ("in_channels", "out_channels", "sample_size", "block_out_channels", "layers_per_block",
                "down_block_types", "up_block_types", "norm_num_groups"):
        assert config["unet"][key] == on_disk[key], key
    config["unet"]["in_channels"] = -1  # a fresh dict each time
    assert plain.config["unet"]["in_channels"] == on_disk["in_channels"]


def test_info(plain, class_model):
    assert plain.info == {"in_channels": 3, "out_channels": 3, "sample_size": 16, "num_class_embeds": 0,
                          "sample_width": 16, "null_class_label": -1, "latent_channels": 3, "vae_scale_factor": 1,
                          "context_length": 0, "context_width": 0, "precision": "f32", "precision_native": True}
    assert not plain.is_text_pipeline
    assert class_model.num_class_embeds == 10 and class_model.null_class_label == -1
    with diffusion.load(helpers.unet_dir("class_cond_null")) as m:
        assert (m.num_class_embeds, m.null_class_label) == (11, 10)
    assert (plain.in_channels, plain.out_channels, plain.sample_size) == (3, 3, 16)


def test_in3_out6_info():
    with diffusion.load(helpers.unet_dir("in3_out6")) as m:
        assert (m.in_channels, m.out_channels) == (3, 6)


def test_load_accepts_str_and_pathlike(plain_dir):
    with diffusion.load(str(plain_dir)) as a, diffusion.load(plain_dir) as b:
        assert a.config == b.config
        assert "plain" in repr(a)


@pytest.mark.parametrize("case", helpers.unet_cases())
def test_predict_matches_diffusers(case):
    d = helpers.unet_dir(case)
    io = helpers.read_safetensors(d / "io.safetensors")
    scale = json.loads((d / "case.json").read_text()).get("output_scale", 1.0)
    with diffusion.load(d) as m:
        out = m.predict(io["x"], io["t"], class_labels=io.get("class_labels"))
    assert out.dtype == np.float32 and out.shape == io["out"].shape
    err = float(np.max(np.abs(out - io["out"])))
    assert err <= 1e-4 * max(1.0, scale), f"{case}: max abs error {err} (output scale {scale})"


def test_predict_scalar_t_broadcasts(plain):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = plain.predict(x, 250)
    b = plain.predict(x, np.array([250.0, 250.0]))
    c = plain.predict(x, [250, 250])
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_predict_converts_input(plain):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 16, 16))
    ref = plain.predict(x.astype(np.float32), [3, 700])
    # float64, non-contiguous (a transposed view) and nested lists are all accepted
    assert np.array_equal(plain.predict(x, [3, 700]), ref)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not xt.flags.c_contiguous
    assert np.array_equal(plain.predict(xt, [3, 700]), ref)
    assert np.array_equal(plain.predict(x.astype(np.float32).tolist(), [3, 700]), ref)


def test_predict_batch_items_are_independent(plain):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    t = np.array([10, 500, 990], np.float32)
    together = plain.predict(x, t)
    for i in range(3):
        alone = plain.predict(x[i : i + 1], t[i : i + 1])
        assert np.max(np.abs(alone - together[i : i + 1])) <= 1e-5


def test_predict_class_label_broadcast(class_model):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = class_model.predict(x, 100, class_labels=4)
    b = class_model.predict(x, 100, class_labels=[4, 4])
    c = class_model.predict(x, 100, class_labels=[4, 5])
    assert np.array_equal(a, b)
    assert not np.array_equal(a[1], c[1])


def test_predict_other_sizes(plain):
    # a UNet with two resolutions takes any size divisible by 2
    x = np.zeros((1, 3, 8, 24), np.float32)
    assert plain.predict(x, 5).shape == (1, 3, 8, 24)


def test_threads_give_identical_bytes(plain_dir):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    outs, finals = [], []
    for threads in (1, 2):
        with diffusion.load(plain_dir, threads=threads) as m:
            outs.append(m.predict(x, [17, 801]).tobytes())
            with m.sampler(scheduler="ddim", steps=5, seed=3, batch=2, eta=0.5) as s:
                finals.append(s.run().tobytes())
    assert outs[0] == outs[1]
    assert finals[0] == finals[1]


def test_predict_from_many_threads(plain):
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    expected = [plain.predict(x, 321) for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(3):
            results[i] = plain.predict(xs[i], 321)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, e in zip(results, expected):
        assert np.array_equal(r, e)


def test_pipeline_folder(tmp_path, plain_dir):
    """A diffusers pipeline folder: model_index.json, unet/, scheduler/ (whose class picks the default)."""
    import shutil

    root = tmp_path / "pipeline"
    shutil.copytree(plain_dir, root / "unet", ignore=shutil.ignore_patterns("io.safetensors", "case.json"))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "timestep_spacing": "trailing"}))
    (root / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    with diffusion.load(root) as m, diffusion.load(plain_dir) as ref:
        assert m.config["unet"] == ref.config["unet"]
        assert m.config["scheduler"]["timestep_spacing"] == "trailing"
        x = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
        assert np.array_equal(m.predict(x, 42), ref.predict(x, 42))
        with m.sampler() as s:  # DDIM from the folder's scheduler config: 50 steps, trailing
            assert len(s.timesteps) == 50 and s.timesteps[0] == 999
