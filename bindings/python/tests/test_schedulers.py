"""Schedulers, bring-your-own denoiser, classifier guidance, img2img, start noise, noise and slerp.

The end-to-end proof of a caller's denoiser is the comparison with the diffusers traces in
Tests/Fixtures/samplers (tools/make_sampler_fixtures.py): the same toy denoiser, seed and scheduler
settings must give diffusers' start noise, timesteps, model inputs and final sample.
"""

import gc
import os
import random
import signal
import threading
import time
import weakref

import numpy as np
import pytest

import diffusion
from diffusion import Status
import helpers

SCHEDULERS = ["ddpm", "ddim", "euler", "euler_a", "heun", "dpmpp_2m", "pndm", "lms", "unipc", "lcm"]
SAMPLER_CASES = helpers.sampler_cases()
AC = helpers.train_alphas_cumprod()  # the default linear schedule's alphas_cumprod (float64)


def toy(x, t):
    """The fixtures' toy denoiser: 0.7*x + 0.3*sin(x) + 0.05*cos(t/100) in float64, rounded to float32."""
    x = x.astype(np.float64)
    return (0.7 * x + 0.3 * np.sin(x) + 0.05 * np.cos(t / 100)).astype(np.float32)


def toy_for(meta, calls=None):
    """The toy denoiser of a fixture (DDPM learned variances append a second channel half), recording
    (x, t) of every call in `calls`."""
    variance = meta["config"].get("variance_type") if meta["scheduler"] == "ddpm" else None

    def fn(x, t):
        if calls is not None:
            calls.append((x.copy(), t))
        eps = toy(x, t)
        x64 = x.astype(np.float64)
        if variance == "learned_range":
            return np.concatenate([eps, np.tanh(x64).astype(np.float32)], axis=1)
        if variance == "learned":
            return np.concatenate([eps, (0.01 * (1 + np.tanh(x64))).astype(np.float32)], axis=1)
        return eps

    return fn


def fixture_sampler(meta, fn):
    return diffusion.Sampler(denoiser=fn, shape=tuple(meta["shape"]), scheduler=meta["scheduler"],
                             steps=meta["steps"], seed=meta["seed"], scheduler_config=meta["overrides"])


def rel_err(got, want, floor=1.0):
    """max |got - want| relative to max(floor, max |want|)."""
    scale = max(floor, float(np.max(np.abs(want))))
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) / scale


# ---- the diffusers traces -----------------------------------------------------------------


def test_sampler_fixtures_present():
    assert len(SAMPLER_CASES) >= 10, f"sampler fixtures not found under {helpers.fixtures_dir()}/samplers"


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_fixture_start_noise_is_diffusion_noise(case):
    """The first draw of the seed's generator is torch.randn: diffusion.noise gives it bit for bit."""
    meta, ts = helpers.sampler_case(case)
    assert np.array_equal(diffusion.noise(meta["seed"], meta["shape"]), ts["start_rng"])


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_fixture_run_matches_diffusers(case):
    meta, ts = helpers.sampler_case(case)
    calls = []
    with fixture_sampler(meta, toy_for(meta, calls)) as s:
        assert s.shape == tuple(meta["shape"]) and s.model is None
        start = s.latents
        if meta["init_noise_sigma"] == 1.0:
            assert np.array_equal(start, ts["start"])
        else:  # start_rng * init_noise_sigma: a float32 product
            assert rel_err(start, ts["start"], floor=0.0) <= 1e-6
        # Fractional (Karras) timesteps may differ from diffusers' in the last float32 bit: torch's
        # and numpy's float32 sqrt/log are not correctly rounded on every CPU. The Swift harness
        # allows 1e-4 absolute too (1 ulp at t ~ 1000 is 6.1e-5).
        assert np.max(np.abs(s.timesteps - ts["timesteps"])) <= 1e-4, (s.timesteps, ts["timesteps"])
        ours = s.timesteps
        assert len(s) == meta["iterations"]
        final = s.run()
        assert len(calls) == meta["iterations"]
        scale = max(1.0, float(np.max(np.abs(ts["final"]))))
        for i, (x, t) in enumerate(calls):
            assert t == float(ours[i]), (i, t)
            assert x.shape == tuple(meta["shape"]) and x.dtype == np.float32
            err = float(np.max(np.abs(x - ts[f"model_input_{i}"])))
            assert err <= 1e-4 * max(scale, float(np.max(np.abs(ts[f"sample_{i}"])))), (i, err)
        err = float(np.max(np.abs(final - ts["final"])))
        assert err <= 1e-4 * scale, f"{case}: final differs by {err} (scale {scale})"


@pytest.mark.parametrize("case", SAMPLER_CASES)
def test_fixture_step_by_step_inputs(case):
    """Teacher-forced: with x_t set to the trace's sample_i before each step, the denoiser gets exactly
    model_input_i at timesteps[i] and the step gives prev_sample_i."""
    meta, ts = helpers.sampler_case(case)
    calls = []
    with fixture_sampler(meta, toy_for(meta, calls)) as s:
        n = meta["iterations"]
        ours = s.timesteps
        for i in range(n):
            s.latents = ts[f"sample_{i}"]
            more = s.step()
            assert more == (i < n - 1)
            assert len(calls) == i + 1
            x, t = calls[-1]
            assert t == float(ours[i]) and abs(t - float(ts["timesteps"][i])) <= 1e-4
            want = ts[f"model_input_{i}"]
            err = float(np.max(np.abs(x - want)))
            assert err <= 1e-6 * max(float(np.max(np.abs(want))), 1e-30), (i, err)
            err = rel_err(s.latents, ts[f"prev_sample_{i}"])
            assert err <= 1e-5, (i, err)


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_runs_a_denoiser(name):
    with diffusion.Sampler(denoiser=toy, shape=(2, 3, 4, 4), scheduler=name, steps=6, seed=1) as s:
        out = s.run()
        assert out.shape == (2, 3, 4, 4) and np.all(np.isfinite(out))
        assert s.remaining == 0


def test_learned_variance_needs_twice_the_channels():
    cfg = {"variance_type": "learned_range"}
    with diffusion.Sampler(denoiser=toy, shape=(1, 2, 4, 4), scheduler="ddpm", steps=4, scheduler_config=cfg) as s:
        with pytest.raises(ValueError, match=r"\(1, 4, 4, 4\)"):
            s.step()
        assert s.steps_done == 0

    def both(x, t):
        return np.concatenate([toy(x, t), np.tanh(x)], axis=1)

    with diffusion.Sampler(denoiser=both, shape=(1, 2, 4, 4), scheduler="ddpm", steps=4, scheduler_config=cfg) as s:
        assert np.all(np.isfinite(s.run()))


# ---- the denoiser API ---------------------------------------------------------------------


def test_denoiser_equals_model_sampler(plain):
    """A model's predict as a denoiser gives the model's own sampler, bit for bit."""
    kw = dict(scheduler="ddim", steps=5, seed=3, eta=0.5)
    with plain.sampler(batch=2, **kw) as a:
        with diffusion.Sampler(denoiser=lambda x, t: plain.predict(x, t), shape=(2, 3, 16, 16), **kw) as b:
            assert np.array_equal(a.latents, b.latents)
            assert np.array_equal(a.timesteps, b.timesteps)
            assert np.array_equal(a.run(), b.run())
            assert np.array_equal(a.images(), b.images())


def test_denoiser_sampler_basics():
    calls = []

    def fn(x, t):
        calls.append(t)
        return toy(x, t)

    s = diffusion.Sampler(denoiser=fn, shape=(2, 1, 3, 5), scheduler="ddim", steps=4, seed=9)
    assert s.model is None and s.denoiser is fn
    assert s.shape == (2, 1, 3, 5) and (s.batch, s.channels, s.height, s.width) == (2, 1, 3, 5)
    assert "denoiser" in repr(s)
    assert s.timesteps.tolist() == [750, 500, 250, 0]
    assert np.array_equal(s.latents, diffusion.noise(9, (2, 1, 3, 5)))
    assert s.step() and calls == [750.0]
    assert all(isinstance(t, float) for t in calls)
    seen = []
    final = s.run(lambda step, total, t: seen.append((step, total, t)))
    assert seen == [(2, 4, 500.0), (3, 4, 250.0), (4, 4, 0.0)]
    assert calls == [750.0, 500.0, 250.0, 0.0]
    assert final.shape == s.shape and s.images().shape == (2, 3, 5, 1)
    s.close()
    assert s.closed and "closed" in repr(s)
    with pytest.raises(ValueError, match="closed"):
        s.step()


def test_denoiser_gets_a_private_copy():
    def fn(x, t):
        assert x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable
        out = toy(x, t)
        x[...] = 1e6  # scribbling on x changes nothing in the sampler
        return out

    kw = dict(shape=(1, 2, 4, 4), scheduler="ddim", steps=3, seed=4)
    with diffusion.Sampler(denoiser=fn, **kw) as a, diffusion.Sampler(denoiser=toy, **kw) as b:
        assert np.array_equal(a.run(), b.run())


def test_denoiser_output_dtypes():
    kw = dict(shape=(1, 2, 4, 4), scheduler="ddim", steps=3, seed=4)
    with diffusion.Sampler(denoiser=toy, **kw) as ref:
        want = ref.run()
    with diffusion.Sampler(denoiser=lambda x, t: toy(x, t).astype(np.float64), **kw) as s:
        assert np.array_equal(s.run(), want)  # float64 is converted
    with diffusion.Sampler(denoiser=lambda x, t: toy(x, t).tolist(), **kw) as s:
        assert np.array_equal(s.run(), want)  # so is a nested list of floats
    for bad, match in [
        (lambda x, t: np.zeros((1, 2, 4, 4), np.int32), "int32"),
        (lambda x, t: np.zeros((1, 2, 4, 4), bool), "bool"),
        (lambda x, t: np.zeros((1, 2, 4, 4), np.complex64), "complex"),
        (lambda x, t: None, "shape"),
        (lambda x, t: np.zeros((2, 4, 4), np.float32), r"shape \(2, 4, 4\)"),
        (lambda x, t: np.zeros((1, 2, 4, 4, 1), np.float32), "shape"),
        (lambda x, t: np.full((1, 2, 4, 4), np.nan, np.float32), "non-finite"),
        (lambda x, t: np.full((1, 2, 4, 4), 1e300), "non-finite"),  # overflows float32
    ]:
        with diffusion.Sampler(denoiser=bad, **kw) as s:
            start = s.latents
            with pytest.raises(ValueError, match=match):
                s.step()
            assert np.array_equal(s.latents, start) and s.steps_done == 0
            with pytest.raises(ValueError, match=match):
                s.run()


class Boom(Exception):
    pass


def test_denoiser_exception_is_reraised_and_the_step_can_be_retried():
    kw = dict(shape=(1, 2, 4, 4), scheduler="ddpm", steps=6, seed=5)  # ddpm: noise drawn in the steps
    with diffusion.Sampler(denoiser=toy, **kw) as ref:
        want = ref.run()
    fail_at = {2, 4}
    calls = []

    def flaky(x, t):
        calls.append(t)
        if len(calls) in fail_at:
            raise Boom(f"call {len(calls)}")
        return toy(x, t)

    with diffusion.Sampler(denoiser=flaky, **kw) as s:
        assert s.step()
        before = s.latents
        with pytest.raises(Boom, match="call 2"):
            s.step()
        assert s.steps_done == 1 and np.array_equal(s.latents, before)  # unchanged
        assert s.step()  # the retry
        with pytest.raises(Boom, match="call 4"):
            s.run()
        assert s.steps_done == 2
        assert np.array_equal(s.run(), want)  # the failed calls drew no noise


def test_denoiser_keyboard_interrupt():
    def fn(x, t):
        if t < 500:
            raise KeyboardInterrupt
        return toy(x, t)

    with diffusion.Sampler(denoiser=fn, shape=(1, 1, 2, 2), scheduler="ddim", steps=10) as s:
        with pytest.raises(KeyboardInterrupt):
            s.run()
        assert s.steps_done == 5


def _stepped(kw, k):
    """Latents of a clean toy sampler after k steps."""
    with diffusion.Sampler(denoiser=toy, **kw) as ref:
        for _ in range(k):
            ref.step()
        return ref.latents


def test_sigint_during_a_denoiser_run():
    """Ctrl-C while a denoiser sampler runs (from another thread, arriving whenever) stops the run after a
    complete step and raises KeyboardInterrupt: no step is ever taken with an unfinished denoiser output."""
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def slow(x, t):
        time.sleep(0.002)
        return toy(x, t)

    kw = dict(shape=(1, 2, 4, 4), scheduler="ddpm", steps=1000, seed=3)
    for delay in (0.05, 0.1, 0.13):
        with diffusion.Sampler(denoiser=slow, **kw) as s:
            timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    s.run()
            finally:
                timer.cancel()
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
            k = s.steps_done
            assert 1 <= k < 1000
            assert np.array_equal(s.latents, _stepped(kw, k))
    kw["steps"] = 30
    with diffusion.Sampler(denoiser=slow, **kw) as s, diffusion.Sampler(denoiser=toy, **kw) as ref:
        timer = threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                s.run()
        finally:
            timer.cancel()
        assert np.array_equal(s.run(), ref.run())  # and it continues to the same end


def test_sigint_inside_the_denoiser_during_step():
    calls = []

    def fn(x, t):
        calls.append(t)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled while the denoiser runs
            time.sleep(0.01)
        return toy(x, t)

    kw = dict(shape=(1, 2, 4, 4), scheduler="ddim", steps=5, seed=3)
    with diffusion.Sampler(denoiser=fn, **kw) as s:
        with pytest.raises(KeyboardInterrupt):
            s.step()
        assert s.steps_done == 1 and len(calls) == 1  # the step was completed with the real output
        assert np.array_equal(s.latents, _stepped(kw, 1))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert s.step()  # no cancel is left pending


def test_denoiser_error_is_error_callback_in_c():
    """Underneath, the failed step returns DIFFUSION_ERROR_CALLBACK (the package turns it back into the
    Python exception the callback kept)."""
    with diffusion.Sampler(denoiser=lambda x, t: 1 / 0, shape=(1, 1, 2, 2), scheduler="ddim", steps=2) as s:
        lib = diffusion._lib.library()
        status = lib.sampler_step(s._handle, None)
        assert status == Status.ERROR_CALLBACK == 11
        assert "denoiser" in lib.last_error().decode()
        assert [type(e) for e in s._callback_errors] == [ZeroDivisionError]
        with pytest.raises(ZeroDivisionError):
            s.step()
        assert s.steps_done == 0


def test_denoiser_constructor_errors(plain):
    shape = (1, 2, 4, 4)
    with pytest.raises(TypeError, match="exactly one"):
        diffusion.Sampler()
    with pytest.raises(TypeError, match="exactly one"):
        diffusion.Sampler(plain, denoiser=toy, shape=shape)
    with pytest.raises(TypeError, match="callable"):
        diffusion.Sampler(denoiser=3, shape=shape)
    with pytest.raises(TypeError, match="shape"):
        diffusion.Sampler(denoiser=toy)
    with pytest.raises(ValueError, match="shape"):
        diffusion.Sampler(denoiser=toy, shape=(2, 4, 4))
    with pytest.raises(TypeError):
        diffusion.Sampler(denoiser=toy, shape="1244")
    with pytest.raises(TypeError, match="shape"):
        diffusion.Sampler(denoiser=toy, shape=(1.0, 2, 4, 4))
    with pytest.raises(ValueError):
        diffusion.Sampler(denoiser=toy, shape=(1, 2, 4, -4))
    with pytest.raises(TypeError, match="batch"):
        diffusion.Sampler(denoiser=toy, shape=shape, batch=2)
    with pytest.raises(TypeError, match="batch"):
        diffusion.Sampler(denoiser=toy, shape=shape, height=8)
    with pytest.raises(TypeError, match="model"):
        diffusion.Sampler(denoiser=toy, shape=shape, guidance_scale=3.0)
    with pytest.raises(TypeError, match="model"):
        diffusion.Sampler(denoiser=toy, shape=shape, class_label=1)
    with pytest.raises(TypeError, match="shape is for a denoiser"):
        diffusion.Sampler(plain, shape=shape)
    for bad in [(0, 2, 4, 4), (1, 0, 4, 4), (1, 2, 0, 4)]:
        with pytest.raises(diffusion.DiffusionError) as ei:
            diffusion.Sampler(denoiser=toy, shape=bad)
        assert ei.value.status == Status.ERROR_INVALID_ARGUMENT
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.Sampler(denoiser=toy, shape=shape, scheduler="nope")
    assert ei.value.status == Status.ERROR_INVALID_ARGUMENT


def test_denoiser_defaults_to_ddpm():
    with diffusion.Sampler(denoiser=toy, shape=(1, 1, 2, 2)) as s:
        assert len(s) == 1000 and s.timesteps[0] == 999


def test_denoiser_sampler_has_no_model_settings():
    with diffusion.Sampler(denoiser=toy, shape=(1, 1, 2, 2), scheduler="ddim", steps=2) as s:
        s.set_guidance_scale(1.0)  # 1 = none: fine
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_guidance_scale(3.0)
        assert ei.value.status == Status.ERROR_NO_UNCONDITIONAL
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_class_label(1)
        assert ei.value.status == Status.ERROR_INVALID_ARGUMENT


def test_denoiser_cannot_step_or_change_the_sampler():
    inner = []
    holder = {}

    def fn(x, t):
        s = holder["s"]
        inner.append(s.latents.shape)  # reading is fine
        for op in (s.step, lambda: setattr(s, "latents", x), lambda: s.set_start_noise(x),
                   lambda: s.set_classifier_guidance(None)):
            try:
                op()
            except diffusion.DiffusionError as e:
                inner.append(e.status)
        return toy(x, t)

    with diffusion.Sampler(denoiser=fn, shape=(1, 1, 2, 2), scheduler="ddim", steps=2) as s:
        holder["s"] = s
        s.step()
        assert inner == [(1, 1, 2, 2)] + [Status.ERROR_INVALID_STATE] * 4
    holder.clear()


def test_close_inside_the_denoiser():
    holder = {}

    def fn(x, t):
        if t < 600:
            holder["s"].close()
        return toy(x, t)

    s = holder["s"] = diffusion.Sampler(denoiser=fn, shape=(1, 1, 2, 2), scheduler="ddim", steps=10)
    with pytest.raises(diffusion.DiffusionError) as ei:
        s.run()
    assert ei.value.status == Status.ERROR_CANCELLED
    assert s.closed
    s = holder["s"] = diffusion.Sampler(denoiser=fn, shape=(1, 1, 2, 2), scheduler="ddim", steps=10)
    for _ in range(4):
        s.step()
    assert s.step() is True  # the step finishes, then the sampler is freed
    assert s.closed
    holder.clear()


def test_cancel_a_denoiser_run_from_the_denoiser():
    holder = {}

    def fn(x, t):
        if t == 500:
            holder["s"].cancel()
        return toy(x, t)

    with diffusion.Sampler(denoiser=fn, shape=(1, 1, 2, 2), scheduler="ddim", steps=10) as s:
        holder["s"] = s
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.run()
        assert ei.value.status == Status.ERROR_CANCELLED
        assert s.steps_done == 5  # the step in progress completes
        s.run()
    holder.clear()


def test_denoiser_sampler_is_freed_without_gc():
    s = diffusion.Sampler(denoiser=toy, shape=(1, 1, 2, 2), scheduler="ddim", steps=2)
    ref = weakref.ref(s)
    del s
    assert ref() is None  # no reference cycle through the callback


def test_denoiser_samplers_in_parallel_threads():
    helpers.assert_parallel_runs_match(
        lambda **kw: diffusion.Sampler(denoiser=toy, **kw),
        [dict(shape=(1, 2, 4, 4), scheduler="ddpm", steps=20, seed=i) for i in range(3)])


def test_params_channels_default():
    lib = diffusion._lib.library()
    p = diffusion._new_params(diffusion._lib.SamplerParams, lib.sampler_params_init)
    assert p.channels == 0


# ---- classifier guidance ------------------------------------------------------------------


MU = np.linspace(-1.5, 1.5, 16).reshape(1, 1, 4, 4)  # the class mean mu_y


def analytic_eps(x, t):
    """The exact eps prediction for data ~ N(0, I): E[eps | x_t] = sqrt(1 - abar_t) x_t."""
    return np.sqrt(1 - AC[int(round(t))]) * x


def gaussian_classifier_grad(x, t):
    """grad of log p(y | x_t) = -|x_t - sqrt(abar_t) mu_y|^2 / 2."""
    return -(x - np.sqrt(AC[int(round(t))]) * MU)


@pytest.mark.parametrize("scheduler, steps", [("ddim", 50), ("ddpm", 100)])
def test_classifier_guidance_moves_the_mean(scheduler, steps):
    ratio, dist = {}, {}
    for scale in (0.0, 1.0, 4.0):
        with diffusion.Sampler(denoiser=analytic_eps, shape=(64, 1, 4, 4), scheduler=scheduler, steps=steps, seed=7,
                               scheduler_config={"clip_sample": False}) as s:
            s.set_classifier_guidance(gaussian_classifier_grad, scale)
            x = s.run().astype(np.float64)
        mean = x.mean(axis=0, keepdims=True)
        ratio[scale] = float((mean * MU).sum() / (MU * MU).sum())  # the mean's component along mu_y
        dist[scale] = float(np.sqrt(((mean - MU) ** 2).mean()))
    # unguided: the data mean 0 (64 samples: the mean's noise is ~1/8 per pixel)
    assert abs(ratio[0.0]) < 0.3 and dist[0.0] > 0.75
    assert ratio[1.0] > ratio[0.0] + 0.3 and ratio[4.0] > ratio[1.0] + 0.2
    assert dist[1.0] < dist[0.0] - 0.3 and dist[4.0] < dist[1.0] - 0.15
    if scheduler == "ddim":  # eps-form guidance of a linear model: the mean lands on s/(1+s) mu_y
        assert abs(ratio[1.0] - 0.5) < 0.1 and abs(ratio[4.0] - 0.8) < 0.1


def test_classifier_guidance_gets_the_model_input():
    seen = []

    def grad(x, t):
        seen.append((x.copy(), t))
        return np.zeros_like(x)

    kw = dict(shape=(2, 1, 3, 3), scheduler="ddim", steps=4, seed=2)
    dn = []
    with diffusion.Sampler(denoiser=lambda x, t: dn.append((x.copy(), t)) or toy(x, t), **kw) as s, \
            diffusion.Sampler(denoiser=toy, **kw) as ref:
        s.set_classifier_guidance(grad, 2.0)
        assert np.array_equal(s.run(), ref.run())  # a zero gradient changes nothing
    assert len(seen) == 4
    for (gx, gt), (dx, dt) in zip(seen, dn):
        assert gt == dt and np.array_equal(gx, dx)


def test_classifier_guidance_off_and_replaced():
    kw = dict(shape=(1, 1, 3, 3), scheduler="ddim", steps=4, seed=2)
    with diffusion.Sampler(denoiser=toy, **kw) as ref:
        plain_run = ref.run()
    push = lambda x, t: np.ones_like(x)  # noqa: E731
    with diffusion.Sampler(denoiser=toy, **kw) as a:
        a.set_classifier_guidance(push, 1.0)
        guided = a.run()
    assert not np.array_equal(guided, plain_run)
    for off in [(None, 1.0), (push, 0.0), (None, 0)]:
        with diffusion.Sampler(denoiser=toy, **kw) as s:
            s.set_classifier_guidance(push, 1.0)
            s.set_classifier_guidance(*off)
            assert np.array_equal(s.run(), plain_run)
    with diffusion.Sampler(denoiser=toy, **kw) as s:  # replaced by another function
        s.set_classifier_guidance(lambda x, t: -np.ones_like(x), 5.0)
        s.set_classifier_guidance(push, 1.0)
        gc.collect()
        assert np.array_equal(s.run(), guided)


def test_classifier_guidance_errors():
    kw = dict(shape=(1, 1, 3, 3), scheduler="ddpm", steps=5, seed=2)
    with diffusion.Sampler(denoiser=toy, **kw) as s:
        with pytest.raises(TypeError):
            s.set_classifier_guidance(42, 1.0)
        with pytest.raises(TypeError):
            s.set_classifier_guidance(lambda x, t: x, "1")
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_classifier_guidance(lambda x, t: x, float("inf"))
        assert ei.value.status == Status.ERROR_INVALID_ARGUMENT
        start = s.latents
        for bad, exc, match in [
            (lambda x, t: x[:, :, :2], ValueError, "shape"),
            (lambda x, t: np.zeros(9, np.float32), ValueError, "shape"),
            (lambda x, t: x * np.nan, ValueError, "non-finite"),
            (lambda x, t: np.zeros(x.shape, np.int64), ValueError, "int64"),
            (lambda x, t: {}[t], KeyError, None),
        ]:
            s.set_classifier_guidance(bad, 1.0)
            with pytest.raises(exc, match=match):
                s.step()
            with pytest.raises(exc, match=match):
                s.run()
            assert s.steps_done == 0 and np.array_equal(s.latents, start)
        s.set_classifier_guidance(lambda x, t: -x, 1.0)
        assert np.all(np.isfinite(s.run()))


def test_classifier_guidance_with_a_model(plain):
    kw = dict(scheduler="ddim", steps=3, seed=1)
    with plain.sampler(**kw) as a, plain.sampler(**kw) as b:
        shapes = []
        b.set_classifier_guidance(lambda x, t: shapes.append(x.shape) or np.ones_like(x), 1.0)
        ra, rb = a.run(), b.run()
        assert shapes == [(1, 3, 16, 16)] * 3
        assert not np.array_equal(ra, rb) and np.all(np.isfinite(rb))


# ---- img2img ------------------------------------------------------------------------------


def _img2img_sampler(**kw):
    args = dict(denoiser=toy, shape=(2, 3, 4, 4), scheduler="ddim", steps=10, seed=11)
    args.update(kw)
    return diffusion.Sampler(**args)


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.2, 0.3, 0.7])
def test_img2img_latents(strength):
    x0 = np.random.default_rng(1).uniform(-1, 1, (2, 3, 4, 4)).astype(np.float32)
    with _img2img_sampler() as full, _img2img_sampler() as s:
        s.set_init_image(x0, strength)
        ts = s.timesteps
        n = int(10 * strength)
        assert len(ts) == len(s) == n and s.remaining == n
        assert np.array_equal(ts, full.timesteps[10 - n:])
        a = AC[int(ts[0])]
        want = np.sqrt(a) * x0 + np.sqrt(1 - a) * diffusion.noise(11, (2, 3, 4, 4))
        assert np.max(np.abs(s.latents - want)) <= 5e-5
        seen = []
        out = s.run(lambda step, total, t: seen.append((step, total, t)))
        assert [v[0] for v in seen] == list(range(1, n + 1)) and all(v[1] == n for v in seen)
        assert [v[2] for v in seen] == ts.tolist()
        assert np.all(np.isfinite(out))


def test_img2img_one_latent_for_the_batch():
    x0 = np.random.default_rng(2).uniform(-1, 1, (3, 4, 4))
    with _img2img_sampler() as s:
        s.set_init_image(x0, 0.5)  # float64: converted
        a = AC[int(s.timesteps[0])]
        want = np.sqrt(a) * x0[None] + np.sqrt(1 - a) * diffusion.noise(11, (2, 3, 4, 4))
        assert np.max(np.abs(s.latents - want)) <= 5e-5


@pytest.mark.parametrize("one", [False, True])
def test_img2img_pixels(one):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 4, 4, 3) if one else (2, 4, 4, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 128, 255)
    with _img2img_sampler() as s:
        s.set_init_image(pixels if not one else pixels[0], 0.5)
        x0 = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255 * 2 - 1)
        x0 = np.broadcast_to(x0[:1], (2, 3, 4, 4)) if one else x0
        a = AC[int(s.timesteps[0])]
        want = np.sqrt(a) * x0 + np.sqrt(1 - a) * diffusion.noise(11, (2, 3, 4, 4))
        assert np.max(np.abs(s.latents - want)) <= 5e-5
    # pixels -> the same start as their latents
    with _img2img_sampler() as p, _img2img_sampler() as q:
        p.set_init_image(pixels[:2] if not one else pixels[0], 0.3)
        lat = pixels.transpose(0, 3, 1, 2).astype(np.float32) / 255 * 2 - 1
        q.set_init_image(lat[:2] if not one else lat[0], 0.3)
        assert np.max(np.abs(p.latents - q.latents)) <= 1e-6


def test_img2img_with_a_model(plain):
    with plain.sampler(scheduler="ddim", steps=10, seed=1, batch=2) as s:
        s.set_init_image(np.full((16, 16, 3), 200, np.uint8), 0.4)
        assert len(s.timesteps) == 4
        assert s.run().shape == (2, 3, 16, 16)


def test_img2img_twice_before_a_step():
    x0 = np.zeros((3, 4, 4), np.float32)
    with _img2img_sampler() as s:
        s.set_init_image(x0, 0.5)
        s.set_init_image(x0, 0.2)
        assert len(s.timesteps) == 2


def test_img2img_errors():
    x0 = np.zeros((2, 3, 4, 4), np.float32)
    with _img2img_sampler() as s:
        for strength in (0, 0.0, -0.5, 1.5, float("nan"), float("inf")):
            with pytest.raises((ValueError, diffusion.DiffusionError)) as ei:
                s.set_init_image(x0, strength)
            if isinstance(ei.value, diffusion.DiffusionError):
                assert ei.value.status == Status.ERROR_INVALID_ARGUMENT
        with pytest.raises(TypeError):
            s.set_init_image(x0, "0.5")
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_init_image(x0, 0.05)  # int(10 * 0.05) = 0 steps
        assert ei.value.status == Status.ERROR_INVALID_ARGUMENT
        with pytest.raises(ValueError, match="shape"):
            s.set_init_image(np.zeros((2, 4, 4, 3), np.float32), 0.5)  # float = latents, NCHW
        with pytest.raises(ValueError, match="shape"):
            s.set_init_image(np.zeros((2, 3, 4, 4), np.uint8), 0.5)  # uint8 = pixels, NHWC
        with pytest.raises(ValueError, match="shape"):
            s.set_init_image(np.zeros((1, 3, 4, 4), np.float32), 0.5)  # neither the batch nor one image
        with pytest.raises(TypeError, match="uint8"):
            s.set_init_image(np.zeros((2, 4, 4, 3), np.int64), 0.5)
        assert len(s.timesteps) == 10  # nothing changed
        s.step()
        for image in (x0, np.zeros((2, 4, 4, 3), np.uint8)):
            with pytest.raises(diffusion.DiffusionError) as ei:
                s.set_init_image(image, 0.5)
            assert ei.value.status == Status.ERROR_INVALID_STATE


# ---- noise and slerp ----------------------------------------------------------------------


def test_noise_is_the_start_latents(plain):
    with diffusion.Sampler(denoiser=toy, shape=(3, 2, 5, 7), scheduler="ddim", seed=123) as s:
        assert np.array_equal(s.latents, diffusion.noise(123, (3, 2, 5, 7)))
    with plain.sampler(scheduler="ddim", steps=2, seed=77, batch=2) as s:
        assert np.array_equal(s.latents, diffusion.noise(77, s.shape))


def test_noise_arguments():
    a = diffusion.noise(5, 10)
    assert a.shape == (10,) and a.dtype == np.float32
    assert np.array_equal(a, diffusion.noise(5, [10]))
    assert np.array_equal(diffusion.noise(5, (2, 5)).ravel(), a)
    assert not np.array_equal(a, diffusion.noise(6, 10))
    assert diffusion.noise(5, (0, 3)).shape == (0, 3)
    assert diffusion.noise(2**64 - 1, 3).shape == (3,)
    big = diffusion.noise(0, 100_000)
    assert abs(float(big.mean())) < 0.02 and abs(float(big.std()) - 1) < 0.02
    with pytest.raises(ValueError, match="2\\*\\*32"):
        diffusion.noise(1, (2**31 - 1, 2**31 - 1))  # refused before allocating
    with pytest.raises(ValueError):
        diffusion.noise(-1, 3)
    with pytest.raises(ValueError):
        diffusion.noise(1, (2, -1))
    with pytest.raises(TypeError):
        diffusion.noise(1, "3")
    with pytest.raises(TypeError):
        diffusion.noise(1, 2.5)
    with pytest.raises(TypeError):
        diffusion.noise(1.5, 3)


def _slerp_ref(a, b, t):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a @ b / np.sqrt((a @ a) * (b @ b))
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    th = np.arccos(cos)
    return (np.sin((1 - t) * th) * a + np.sin(t * th) * b) / np.sin(th)


def test_slerp():
    shape = (1, 2, 8, 8)
    a, b = diffusion.noise(1, shape), diffusion.noise(2, shape)
    assert np.array_equal(diffusion.slerp(a, b, 0.0), a)
    assert np.array_equal(diffusion.slerp(a, b, 1.0), b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    for t in np.linspace(0, 1, 9):
        m = diffusion.slerp(a, b, t)
        assert m.shape == shape and m.dtype == np.float32
        assert np.max(np.abs(m.ravel() - _slerp_ref(a, b, t))) <= 1e-5
        # nearly orthogonal noise: the norm stays between the two (a linear mix would shrink it ~30%)
        assert 0.98 * min(na, nb) <= np.linalg.norm(m) <= 1.02 * max(na, nb)
    assert np.linalg.norm((a + b) / 2) < 0.8 * min(na, nb)
    # nearly parallel: linear
    assert np.allclose(diffusion.slerp(a, 2 * a, 0.5), 1.5 * a, atol=1e-6)
    # float64 and lists are converted; 0-d works
    assert np.array_equal(diffusion.slerp(a.astype(np.float64), b.tolist(), 0.25), diffusion.slerp(a, b, 0.25))
    assert diffusion.slerp(1.0, 2.0, 0.5).shape == ()


def test_slerp_errors():
    a = diffusion.noise(1, (2, 3))
    with pytest.raises(ValueError, match="same shape"):
        diffusion.slerp(a, a.ravel(), 0.5)
    with pytest.raises(TypeError):
        diffusion.slerp(a, a, "0.5")
    with pytest.raises(TypeError):
        diffusion.slerp(a, a, None)
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.slerp(a, a, float("nan"))
    assert ei.value.status == Status.ERROR_INVALID_ARGUMENT


def test_set_start_noise_with_slerp():
    shape = (1, 2, 4, 4)
    kw = dict(shape=shape, scheduler="ddim", steps=5)
    mid = diffusion.slerp(diffusion.noise(1, shape), diffusion.noise(2, shape), 0.5)
    with diffusion.Sampler(denoiser=toy, seed=1, **kw) as s1, diffusion.Sampler(denoiser=toy, seed=2, **kw) as s2:
        r1, r2 = s1.run(), s2.run()
    with diffusion.Sampler(denoiser=toy, seed=1, **kw) as s:
        s.set_start_noise(mid)
        assert np.array_equal(s.latents, mid)  # ddim: init_noise_sigma 1
        rm = s.run()
        assert not np.array_equal(rm, r1) and not np.array_equal(rm, r2)
    # the seed's own noise changes nothing; the other seed's gives that seed's run
    with diffusion.Sampler(denoiser=toy, seed=1, **kw) as s:
        s.set_start_noise(diffusion.noise(1, shape))
        assert np.array_equal(s.run(), r1)
    with diffusion.Sampler(denoiser=toy, seed=1, **kw) as s:
        s.set_start_noise(diffusion.noise(2, shape).astype(np.float64))
        assert np.array_equal(s.run(), r2)


def test_set_start_noise_with_img2img():
    shape = (2, 3, 4, 4)
    n = diffusion.noise(42, shape)
    x0 = np.random.default_rng(5).uniform(-1, 1, shape).astype(np.float32)
    for order in ("noise first", "image first"):
        with _img2img_sampler() as s:
            if order == "noise first":
                s.set_start_noise(n)
                s.set_init_image(x0, 0.5)
            else:
                s.set_init_image(x0, 0.5)
                s.set_start_noise(n)
            a = AC[int(s.timesteps[0])]
            assert np.max(np.abs(s.latents - (np.sqrt(a) * x0 + np.sqrt(1 - a) * n))) <= 5e-5, order


def test_set_start_noise_errors():
    with _img2img_sampler() as s:
        with pytest.raises(ValueError, match="shape"):
            s.set_start_noise(np.zeros((1, 3, 4, 4), np.float32))
        s.step()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.set_start_noise(np.zeros(s.shape, np.float32))
        assert ei.value.status == Status.ERROR_INVALID_STATE


# ---- names and info -----------------------------------------------------------------------


def test_scheduler_names():
    assert diffusion.scheduler_names() == SCHEDULERS


def test_scheduler_info():
    info = diffusion.scheduler_info("dpmpp_2m_sde")
    assert info["name"] == "dpmpp_2m" and info["diffusers_class"] == "DPMSolverMultistepScheduler"
    assert info["implied"] == {"algorithm_type": "sde-dpmsolver++"}
    assert "algorithm_type" in info["settings"]
    assert info["default_steps"] == 50
    assert diffusion.scheduler_info("dpmpp_2m_karras")["implied"] == {"use_karras_sigmas": True}
    ddim = diffusion.scheduler_info("DDIMScheduler")
    assert ddim["name"] == "ddim" and ddim["implied"] == {} and ddim["default_steps"] == 50
    assert ddim["defaults"]["beta_schedule"] == "linear" and ddim["defaults"]["num_train_timesteps"] == 1000
    assert diffusion.scheduler_info("ddpm")["default_steps"] == 1000
    assert diffusion.scheduler_info("lcm")["default_steps"] == 4
    for name in SCHEDULERS:
        info = diffusion.scheduler_info(name)
        assert info["name"] == name and info["implied"] == {}
        assert set(info) >= {"name", "diffusers_class", "implied", "settings", "defaults", "default_steps"}


def test_scheduler_info_errors():
    with pytest.raises(diffusion.DiffusionError) as ei:
        diffusion.scheduler_info("dpm_fast")
    assert ei.value.status == Status.ERROR_INVALID_ARGUMENT
    assert "dpm_fast" in ei.value.message and "ddim" in ei.value.message  # lists the known names
    with pytest.raises(TypeError):
        diffusion.scheduler_info(None)
    with pytest.raises(ValueError, match="NUL"):
        diffusion.scheduler_info("ddim\0")


def test_alias_and_class_name_in_a_sampler():
    kw = dict(denoiser=toy, shape=(1, 1, 2, 2), steps=7)
    with diffusion.Sampler(scheduler="ddim", **kw) as a, diffusion.Sampler(scheduler="DDIMScheduler", **kw) as b:
        assert np.array_equal(a.timesteps, b.timesteps)
        assert np.array_equal(a.run(), b.run())


# ---- hostile settings ---------------------------------------------------------------------

_HOSTILE_VALUES = {
    "num_train_timesteps": [1, 2, 10, 999, 1000, 4000],
    "beta_start": [1e-6, 0.0001, 0.00085, 0.5, 0.9999, 1.0, 2.0, -0.1],
    "beta_end": [0.0, 0.012, 0.02, 0.2, 0.999, 1.0],
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "prediction_type": ["epsilon", "v_prediction", "sample"],
    "timestep_spacing": ["leading", "trailing", "linspace"],
    "steps_offset": [0, 1, 999, 1000],
    "use_karras_sigmas": [True, False],
    "final_sigmas_type": ["zero", "sigma_min"],
    "solver_order": [0, 1, 2, 3, 4],
    "algorithm_type": ["dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"],
    "solver_type": ["midpoint", "heun", "bh1", "bh2"],
    "lower_order_final": [True, False],
    "euler_at_final": [True, False],
    "lambda_min_clipped": [-5.1, 5.0],
    "predict_x0": [True, False],
    "skip_prk_steps": [True, False],
    "set_alpha_to_one": [True, False],
    "clip_sample": [True, False],
    "thresholding": [True, False],
    "variance_type": ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"],
    "interpolation_type": ["linear", "log_linear"],
    "original_inference_steps": [1, 50, 5000],
    "timestep_scaling": [0.0, 1e6],
    "sigma_min": [None, 0.0, 0.002, 100.0],
    "sigma_max": [None, 0.1, 1e6],
    "timestep_type": ["discrete", "continuous"],
    "disable_corrector": [[], [0, 1], [100]],
    "trained_betas": [None, [0.5] * 10, [0.0] * 1000],
}


def test_hostile_settings_fail_cleanly():
    """Random combinations of every scheduler setting (many invalid, some numerically absurd), steps
    and img2img strengths: each either runs to a finite sample or fails with a DiffusionError /
    ValueError. A crash would take the test process down. (A fuzzer run of 2,400 such cases found
    beta schedules with alphas_cumprod outside (0, 1) trapping in the schedule construction.)"""
    rng = random.Random(2026)
    names = diffusion.scheduler_names() + ["dpmpp_2m_sde_karras", "plms", "ddim_trailing", "uni_pc_bh2"]
    ran = failed = 0
    for case in range(250):
        name = rng.choice(names)
        cfg = {k: rng.choice(v) for k, v in _HOSTILE_VALUES.items() if rng.random() < 0.3}
        steps = rng.choice([0, 1, 2, 3, 5, 10, 61, 999, 1000, 1001])
        strength = rng.choice([None, None, 0.01, 0.5, 1.0])
        learned = name == "ddpm" and str(cfg.get("variance_type", "")).startswith("learned")

        def denoise(x, t):
            out = (0.7 * x + 0.3 * np.sin(x)).astype(np.float32)
            return np.concatenate([out, np.full_like(out, 0.1)], axis=1) if learned else out

        try:
            with diffusion.Sampler(denoiser=denoise, shape=(2, 1, 2, 2), scheduler=name, steps=steps, seed=case,
                                   scheduler_config=cfg) as s:
                if strength is not None:
                    s.set_init_image(np.zeros((1, 2, 2), np.float32), strength)
                x = s.run()
            assert np.isfinite(x).all(), (name, steps, strength, cfg)
            ran += 1
        except (diffusion.DiffusionError, ValueError):
            failed += 1
    assert ran > 50 and failed > 50  # both paths were exercised
