"""Stable Diffusion pipelines through the Python API, against diffusers' references in Tests/Fixtures/sd
(tiny random pipelines sd1, sd2, sd1_inpaint, sd1_legacy; see that folder's README.md)."""

import sys
import types

import numpy as np
import pytest

import diffusion
from diffusion import Status
import helpers

TEXT_PIPELINES = ["sd1", "sd2", "sd1_legacy"]  # the ones with their own text / VAE references
FORWARD_TOLERANCE = 1e-4  # DESIGN.md section 3: a forward pass, relative to the output's scale


@pytest.fixture(scope="module")
def sd1():
    with diffusion.load(helpers.sd_pipeline("sd1")) as p:
        yield p


def _assert_error(ei, status, *words):
    e = ei.value
    assert e.status == status, repr(e)
    assert e.message, "the library's message should be carried"
    for w in words:
        assert w in e.message, e.message


# ---- info, tokenizer, text encoder, VAE, UNet ---------------------------------------------


@pytest.mark.parametrize("name, in_channels, width", [("sd1", 4, 32), ("sd2", 4, 48), ("sd1_inpaint", 9, 32),
                                                      ("sd1_legacy", 4, 32)])
def test_info(name, in_channels, width):
    with diffusion.load(helpers.sd_pipeline(name)) as p:
        info = p.info
        assert (info["in_channels"], info["out_channels"], info["latent_channels"]) == (in_channels, 4, 4)
        assert (info["vae_scale_factor"], info["context_length"], info["context_width"]) == (8, 77, width)
        assert p.is_text_pipeline and p.context_width == width and p.vae_scale_factor == 8
        if name != "sd1_legacy":  # (diffusers patches the legacy UNet's sample_size; the runs pass 64)
            assert (p.sample_size, p.sample_width) == (64, 64)  # pixels: the UNet's 8 x the VAE's 8


@pytest.mark.parametrize("name", TEXT_PIPELINES)
def test_tokenize_matches_clip_tokenizer(name):
    prompts = helpers.sd_text_json(name)["prompts"]
    want = helpers.sd_refs(name, "text")["ids"]
    with diffusion.load(helpers.sd_pipeline(name)) as p:
        ids = p.tokenize(prompts)
        assert ids.dtype == np.int64 and ids.shape == (len(prompts), 77)
        assert np.array_equal(ids, want)
        one = p.tokenize(prompts[0])
        assert one.shape == (1, 77) and np.array_equal(one[0], want[0])
        assert np.array_equal(p.tokenize(tuple(prompts[:2])), want[:2])


@pytest.mark.parametrize("name", TEXT_PIPELINES)
@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_encode_prompt_matches_diffusers(name, clip_skip):
    prompts = helpers.sd_text_json(name)["prompts"]
    refs = helpers.sd_refs(name, "text")
    want = refs["embeds" if clip_skip is None else f"embeds_clip_skip_{clip_skip}"]
    with diffusion.load(helpers.sd_pipeline(name)) as p:
        got = p.encode_prompt(prompts, clip_skip=clip_skip)
        assert got.dtype == np.float32 and got.shape == want.shape == (len(prompts), 77, p.context_width)
        err = helpers.max_rel_err(got, want)
        assert err <= FORWARD_TOLERANCE, f"{name} clip_skip={clip_skip}: relative error {err}"
        assert np.array_equal(p.encode_prompt(prompts[2], clip_skip=clip_skip)[0], got[2])


@pytest.mark.parametrize("name", TEXT_PIPELINES)
def test_vae_encode_decode_match_diffusers(name):
    refs = helpers.sd_refs(name, "vae")
    sf = helpers.sd_scaling_factor(name)
    with diffusion.load(helpers.sd_pipeline(name)) as p:
        mean = p.encode(refs["image"])
        assert mean.dtype == np.float32 and mean.shape == (1, 4, 8, 8)
        assert helpers.max_rel_err(mean, refs["mean"] * sf) <= FORWARD_TOLERANCE
        sampled = p.encode(refs["image"], seed=int(refs["sample_seed"][0]))
        assert helpers.max_rel_err(sampled, refs["sampled"] * sf) <= FORWARD_TOLERANCE
        decoded = p.decode(refs["z"] * sf)
        assert decoded.dtype == np.float32 and decoded.shape == (1, 3, 64, 64)
        assert helpers.max_rel_err(decoded, refs["decoded"]) <= FORWARD_TOLERANCE
        # float64 input is converted; a batch of two is two independent images
        two = p.decode(np.concatenate([refs["z"], refs["z"]]).astype(np.float64) * sf)
        assert np.array_equal(two[0], two[1]) and helpers.max_rel_err(two[:1], refs["decoded"]) <= FORWARD_TOLERANCE


@pytest.mark.parametrize("name", helpers.SD_PIPELINES)
def test_unet_predict_matches_diffusers(name):
    refs = helpers.sd_refs(name, "unet")
    with diffusion.load(helpers.sd_pipeline(name)) as p:
        for x, t, out in (("x", "t", "out"), ("x_frac", "t_frac", "out_frac")):
            got = p.predict(refs[x], refs[t], context=refs["context"])
            assert got.dtype == np.float32 and got.shape == refs[out].shape
            err = helpers.max_rel_err(got, refs[out])
            assert err <= FORWARD_TOLERANCE, f"{name} {x}: relative error {err}"
        # one [77, D] context for every image
        one = p.predict(refs["x"][:1], refs["t"][:1], context=refs["context"][0])
        assert helpers.max_rel_err(one, refs["out"][:1]) <= FORWARD_TOLERANCE


# ---- end-to-end runs -----------------------------------------------------------------------


@pytest.mark.parametrize("case", helpers.SD_RUNS)
def test_run_matches_diffusers(case):
    run, pipeline, want = helpers.sd_run(case)
    with diffusion.load(pipeline) as p:
        with p.sampler(**helpers.sd_sampler_kwargs(run, want)) as s:
            assert s.shape == want["final_latents"].shape
            assert s.image_shape == want["image"].shape
            ts = s.timesteps
            assert ts.shape == want["timesteps"].shape and np.allclose(ts, want["timesteps"], rtol=0, atol=1e-3), (
                ts, want["timesteps"])
            final = s.run()
            err = float(np.abs(final.astype(np.float64) - want["final_latents"]).max())
            assert np.isfinite(err) and err <= run["tolerance"], f"{case}: final latents off by {err} (tolerance {run['tolerance']})"
            images = s.images()
            assert images.dtype == np.uint8 and images.shape == want["image"].shape
            diff = int(np.abs(images.astype(np.int16) - want["image"]).max())
            assert diff <= 1, f"{case}: images off by {diff} of 255"


def test_generate_equals_sampler_images(sd1):
    run, _, want = helpers.sd_run("sd1/txt2img_euler_a_negative")
    kw = helpers.sd_sampler_kwargs(run, want)
    prompt = kw.pop("prompt")
    images = sd1.generate(prompt, **kw)
    with sd1.sampler(prompt=prompt, **kw) as s:
        s.run()
        assert np.array_equal(images, s.images())
    assert int(np.abs(images.astype(np.int16) - want["image"]).max()) <= 1


def _final(p, **kw):
    with p.sampler(**kw) as s:
        return s.run()


def test_prompt_list_equals_prompt_embeds(sd1):
    run, _, want = helpers.sd_run("sd1/txt2img_dpmpp_2m_batch4")
    kw = helpers.sd_sampler_kwargs(run, want)
    prompts = kw.pop("prompt")
    by_text = _final(sd1, prompt=prompts, **kw)
    by_embeds = _final(sd1, prompt_embeds=sd1.encode_prompt(prompts), **kw)
    assert by_text.shape == (len(prompts) * kw["batch"], 4, 8, 8)
    assert np.array_equal(by_text, by_embeds)
    # negative_prompt_embeds of the empty prompt = no negative prompt
    with_negative = _final(sd1, prompt_embeds=sd1.encode_prompt(prompts), negative_prompt_embeds=sd1.encode_prompt(""),
                           **kw)
    assert np.array_equal(by_text, with_negative)


def test_one_prompt_string_equals_a_list_of_one(sd1):
    # a str goes to the library in the sampler's params; a list is encoded here (set_prompt_embeddings)
    run, _, want = helpers.sd_run("sd1/txt2img_euler_a_negative")
    kw = helpers.sd_sampler_kwargs(run, want)
    prompt, negative = kw.pop("prompt"), kw.pop("negative_prompt")
    kw["batch"] = 2
    a = _final(sd1, prompt=prompt, negative_prompt=negative, **kw)
    b = _final(sd1, prompt=[prompt], negative_prompt=[negative], **kw)
    c = _final(sd1, prompt=[prompt], negative_prompt=negative, **kw)
    assert a.shape == (2, 4, 8, 8) and np.array_equal(a, b) and np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # two images of one prompt: different noise


def test_clip_skip_applies_to_the_prompt_only(sd1):
    kw = dict(steps=4, seed=3, height=64, width=64, negative_prompt="blurry")
    prompt = "a photo of a cat"
    skipped = _final(sd1, prompt=prompt, clip_skip=1, **kw)
    assert not np.array_equal(skipped, _final(sd1, prompt=prompt, **kw))
    negative = kw.pop("negative_prompt")
    by_embeds = _final(sd1, prompt_embeds=sd1.encode_prompt(prompt, clip_skip=1),
                       negative_prompt_embeds=sd1.encode_prompt(negative), **kw)
    assert np.array_equal(skipped, by_embeds)
    by_list = _final(sd1, prompt=[prompt], clip_skip=1, negative_prompt=negative, **kw)
    assert np.array_equal(skipped, by_list)


def _inpaint_final(p, mask, **extra):
    run, _, want = helpers.sd_run("sd1/inpaint_4ch_ddim")
    kw = helpers.sd_sampler_kwargs(run, want)
    kw.update(mask=mask, steps=3, **extra)
    return _final(p, **kw), want


def test_mask_forms(sd1):
    plane = helpers.sd_run("sd1/inpaint_4ch_ddim")[2]["mask"]
    base, _ = _inpaint_final(sd1, plane)
    # HWC grey, HWC with alpha, one plane per image, bool
    for form in (np.repeat(plane[..., None], 3, axis=2), np.dstack([plane, plane, plane, np.zeros_like(plane)]),
                 plane[None], plane[..., None], plane >= 128):
        got, _ = _inpaint_final(sd1, form)
        assert np.array_equal(got, base)
    # colour -> grey as PIL's convert("L"), then binarised at 128 by the library
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, size=plane.shape + (3,), dtype=np.uint8)
    grey = diffusion._images.grey(colour)
    got, _ = _inpaint_final(sd1, colour)
    assert np.array_equal(got, _inpaint_final(sd1, grey)[0])
    # 127 keeps, 128 repaints
    assert np.array_equal(_inpaint_final(sd1, np.where(plane >= 128, 128, 127).astype(np.uint8))[0], base)


def test_grey_is_pils_convert_l():
    # PIL: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for these colours
    cases = {(255, 0, 0): 76, (0, 255, 0): 150, (0, 0, 255): 29, (255, 255, 255): 255, (0, 0, 0): 0,
             (128, 128, 128): 128, (10, 200, 30): 124}
    rgb = np.array(list(cases), dtype=np.uint8)
    assert diffusion._images.grey(rgb).tolist() == list(cases.values())


class _FakePILImage:
    """Stands in for PIL.Image.Image (PIL is not a dependency): an RGB image convertible to "RGB" / "L"."""

    def __init__(self, rgb):
        self.rgb = rgb
        self.converted = []

    def convert(self, mode):
        self.converted.append(mode)
        return self.rgb if mode == "RGB" else diffusion._images.grey(self.rgb)


@pytest.fixture
def fake_pil(monkeypatch):
    image_module = types.ModuleType("PIL.Image")
    image_module.Image = _FakePILImage
    pil = types.ModuleType("PIL")
    pil.Image = image_module
    monkeypatch.setitem(sys.modules, "PIL", pil)
    monkeypatch.setitem(sys.modules, "PIL.Image", image_module)


def test_pil_images_when_pil_is_installed(sd1, fake_pil):
    run, _, want = helpers.sd_run("sd1/inpaint_4ch_ddim")
    rgb_mask = np.repeat(want["mask"][..., None], 3, axis=2)
    image, mask = _FakePILImage(want["init_image"]), _FakePILImage(rgb_mask)
    base, _ = _inpaint_final(sd1, want["mask"])
    kw = helpers.sd_sampler_kwargs(run, want)
    kw.update(init_image=image, mask=mask, steps=3)
    assert np.array_equal(_final(sd1, **kw), base)
    assert image.converted == ["RGB"] and mask.converted == ["L"]


def test_without_pil_a_non_array_is_refused(sd1, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL -> ImportError
    with pytest.raises((TypeError, ValueError)):
        sd1.sampler(prompt="x", height=64, width=64, init_image=object())


def test_img2img_strength_default_and_timesteps(sd1):
    run, _, want = helpers.sd_run("sd1/img2img_ddim")
    kw = helpers.sd_sampler_kwargs(run, want)
    kw.pop("strength")
    with sd1.sampler(**kw) as s:  # default 0.8: int(10 * 0.8) = 8 steps
        assert len(s.timesteps) == 8
    kw["strength"] = 0.3
    with sd1.sampler(**kw) as s:
        assert len(s.timesteps) == 3


def test_images_need_a_finished_run_previews_do_not(sd1):
    with sd1.sampler(prompt="a cat", steps=3, height=64, width=64) as s:
        s.step()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.images()
        assert ei.value.status == Status.ERROR_INVALID_STATE
        preview = s.preview_images()
        assert preview.dtype == np.uint8 and preview.shape == (1, 64, 64, 3)
        s.run()
        assert s.images().shape == (1, 64, 64, 3)


def test_guidance_default_is_7_5_for_text_pipelines(sd1):
    kw = dict(prompt="a photo of a cat", steps=3, seed=5, height=64, width=64)
    assert np.array_equal(_final(sd1, **kw), _final(sd1, guidance_scale=7.5, **kw))
    assert not np.array_equal(_final(sd1, **kw), _final(sd1, guidance_scale=1.0, **kw))


def test_default_size_is_the_models_sample_size(sd1):
    with sd1.sampler(prompt="x", steps=2) as s:
        assert s.image_shape == (1, 64, 64, 3) and s.shape == (1, 4, 8, 8)
    with sd1.sampler(prompt="x", steps=2, height=128, width=64, batch=3) as s:
        assert s.image_shape == (3, 128, 64, 3) and s.shape == (3, 4, 16, 8)


def test_prefer_fp16():
    refs = helpers.sd_refs("sd1_legacy", "unet")
    outs = []
    for name, prefer in (("sd1_legacy", False), ("sd1_legacy", True), ("sd1", True)):
        with diffusion.load(helpers.sd_pipeline(name), prefer_fp16=prefer) as p:
            outs.append(p.predict(refs["x"], refs["t"], context=refs["context"]))
    # sd1_legacy has only fp16 files (read either way); sd1 has none (plain files despite prefer_fp16);
    # the UNet weights are the same F16 values in both folders
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_sampler_outlives_its_closed_model():
    p = diffusion.load(helpers.sd_pipeline("sd1"))
    s = p.sampler(prompt="a cat", steps=2, height=64, width=64)
    p.close()
    for call in (lambda: p.tokenize("x"), lambda: p.encode_prompt("x"), lambda: p.sampler(prompt="x"),
                 lambda: p.generate("x"), lambda: p.decode(np.zeros((1, 4, 8, 8), np.float32)),
                 lambda: p.encode(np.zeros((1, 3, 64, 64), np.float32)),
                 lambda: p.predict(np.zeros((1, 4, 8, 8), np.float32), 1, context=np.zeros((77, 32), np.float32))):
        with pytest.raises(ValueError, match="closed"):
            call()
    s.set_guidance_scale(3.0)  # the sampler keeps the model alive
    s.set_guidance_rescale(0.5)
    assert s.run().shape == (1, 4, 8, 8) and s.images().shape == (1, 64, 64, 3)
    s.close()


# ---- errors --------------------------------------------------------------------------------


def test_size_not_a_multiple_of_8(sd1):
    with pytest.raises(diffusion.DiffusionError) as ei:
        sd1.sampler(prompt="x", height=64, width=60)
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT, "multiple")
    with pytest.raises(diffusion.DiffusionError) as ei:
        sd1.encode(np.zeros((1, 3, 64, 60), np.float32))
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT, "multiple")


def test_prompts_with_nul_are_refused_before_the_library(sd1):
    # A NUL would cut the C string short: refused with ValueError, nothing reaches the library.
    bad = "a cat\0 and a dog"
    for call in (lambda: sd1.tokenize(bad), lambda: sd1.encode_prompt(["ok", bad]),
                 lambda: sd1.sampler(prompt=bad), lambda: sd1.sampler(prompt=["ok", bad]),
                 lambda: sd1.sampler(prompt="ok", negative_prompt=bad), lambda: sd1.generate(bad)):
        with pytest.raises(ValueError, match="NUL"):
            call()
    # A str is always valid Unicode, but a lone surrogate has no UTF-8 form (UnicodeEncodeError, a ValueError).
    with pytest.raises(UnicodeEncodeError):
        sd1.tokenize("\ud800")


def test_bad_prompt_types(sd1):
    for bad in (b"bytes", 3, [], ["ok", 3], None):
        with pytest.raises(TypeError):
            sd1.tokenize(bad)
    with pytest.raises(TypeError):
        sd1.sampler(prompt=b"bytes")


def test_conflicting_options(sd1):
    embeds = sd1.encode_prompt("x")
    with pytest.raises(TypeError, match="prompt_embeds"):
        sd1.sampler(prompt="x", prompt_embeds=embeds)
    with pytest.raises(TypeError, match="negative_prompt_embeds"):
        sd1.sampler(prompt="x", negative_prompt="y", negative_prompt_embeds=embeds)
    with pytest.raises(TypeError, match="clip_skip"):
        sd1.sampler(prompt_embeds=embeds, clip_skip=1)
    with pytest.raises(TypeError, match="init_image"):
        sd1.sampler(prompt="x", mask=np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match="init_image"):
        sd1.sampler(prompt="x", strength=0.5)
    with pytest.raises(ValueError, match="negative prompts"):
        sd1.sampler(prompt=["a", "b", "c"], negative_prompt=["x", "y"])


def test_wrong_shapes(sd1):
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="mask"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=image, mask=np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="mask"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=image, mask=np.zeros((3, 64, 64), np.uint8), batch=2)
    with pytest.raises(TypeError, match="mask"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=image, mask=np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="image"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="image"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=np.zeros((32, 32, 3), np.uint8), mask=image[..., 0])
    with pytest.raises(ValueError, match="prompt_embeds"):
        sd1.sampler(prompt_embeds=np.zeros((2, 77, 31), np.float32))
    with pytest.raises(ValueError, match="strength"):
        sd1.sampler(prompt="x", height=64, width=64, init_image=image, strength=0)
    with sd1.sampler(prompt="x", steps=2, height=64, width=64, batch=2) as s:
        with pytest.raises(ValueError, match="embeddings"):
            s.set_prompt_embeddings(np.zeros((3, 77, 32), np.float32))
        s.set_prompt_embeddings(sd1.encode_prompt("y")[0])  # one [77, D] for both images
    with pytest.raises(ValueError, match="3"):
        sd1.encode(np.zeros((1, 4, 64, 64), np.float32))
    with pytest.raises(ValueError, match="4"):
        sd1.decode(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="context"):
        sd1.predict(np.zeros((2, 4, 8, 8), np.float32), 1, context=np.zeros((3, 77, 32), np.float32))


def test_library_refusals_carry_its_message(sd1):
    with pytest.raises(diffusion.DiffusionError) as ei:
        sd1.encode_prompt("x", clip_skip=50)
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with pytest.raises(diffusion.DiffusionError) as ei:
        sd1.sampler(prompt="x", guidance_rescale=2.0)
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with pytest.raises(diffusion.DiffusionError) as ei:  # the UNet's context width is 32
        sd1.predict(np.zeros((1, 4, 8, 8), np.float32), 1, context=np.zeros((77, 16), np.float32))
    _assert_error(ei, Status.ERROR_INVALID_ARGUMENT)
    with sd1.sampler(prompt="x", steps=2, height=64, width=64, init_image=np.zeros((64, 64, 3), np.uint8)) as s:
        s.step()
        with pytest.raises(diffusion.DiffusionError) as ei:  # after a step
            s.set_mask(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.uint8))
        _assert_error(ei, Status.ERROR_INVALID_STATE)


def test_text_calls_on_a_pixel_model(plain):
    for call in (lambda: plain.tokenize("x"), lambda: plain.encode_prompt("x"),
                 lambda: plain.encode(np.zeros((1, 3, 16, 16), np.float32)),
                 lambda: plain.decode(np.zeros((1, 3, 2, 2), np.float32))):
        with pytest.raises(diffusion.DiffusionError) as ei:
            call()
        _assert_error(ei, Status.ERROR_UNSUPPORTED)
    with plain.sampler(steps=2) as s:
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_mask(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8))
        _assert_error(ei, Status.ERROR_UNSUPPORTED)
    for kw in (dict(prompt=["a", "b"]), dict(prompt="a"), dict(negative_prompt="b"), dict(clip_skip=1),
               dict(prompt_embeds=np.zeros((77, 32), np.float32))):
        with pytest.raises(TypeError, match="text pipeline"):
            plain.sampler(**kw)
    # pixel models keep their default, no guidance (this one has no unconditional input: guidance would fail)
    with plain.sampler(steps=2) as s:
        s.run()


def test_run_reports_stages_and_cancels_in_text_encoding(sd1):
    seen = []
    with sd1.sampler(prompt="a cat", steps=2, scheduler="ddim", height=64, width=64) as s:
        with pytest.raises(diffusion.DiffusionError) as info:
            s.run(stage=lambda name, done, total: seen.append((name, done, total)) or name != "text_encoding")
        assert info.value.status == diffusion.Status.ERROR_CANCELLED
        assert seen == [("text_encoding", 0, 1)] and s.steps_done == 0
        seen.clear()
        s.run(stage=lambda *a: seen.append(a))
        assert seen == [("text_encoding", 0, 1), ("text_encoding", 1, 1), ("denoising", 1, 2), ("denoising", 2, 2)]
        assert s.images().shape == (1, 64, 64, 3)
        with pytest.raises(TypeError, match="stage"):
            s.run(stage=3)
