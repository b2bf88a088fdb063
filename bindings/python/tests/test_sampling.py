"""Sampler: reference sampling runs, stepping, progress, cancellation, images."""

import os
import signal
import threading

import numpy as np
import pytest

import diffusion
from diffusion import Status
import helpers


@pytest.mark.parametrize("case", helpers.sampling_cases())
def test_sampling_matches_diffusers(case):
    run, model_dir, expected = helpers.sampling_run(case)
    with diffusion.load(model_dir) as m:
        with m.sampler(**helpers.sampler_kwargs(run)) as s:
            start = s.latents
            assert start.dtype == np.float32 and start.shape == expected["start"].shape
            err = float(np.max(np.abs(start - expected["start"])))
            assert err <= 1e-6, f"{case}: start noise differs by {err}"
            ts = s.timesteps
            assert len(s) == len(ts) == run["steps"]
            assert np.array_equal(ts.astype(np.int64), expected["timesteps"]), (ts, expected["timesteps"])
            assert np.array_equal(ts, expected["timesteps"].astype(np.float32))
            final = s.run()
            assert final.dtype == np.float32 and final.shape == expected["final"].shape
            assert np.array_equal(final, s.latents)
            err = float(np.max(np.abs(final - expected["final"])))
            assert err <= run["tolerance"], f"{case}: final differs by {err} (tolerance {run['tolerance']})"


def _case_sampler(case):
    run, model_dir, _ = helpers.sampling_run(case)
    m = diffusion.load(model_dir)
    s = m.sampler(**helpers.sampler_kwargs(run))
    m.close()  # freed with the sampler
    return s


@pytest.mark.parametrize("case", ["ddim_eta1", "ddpm_class_cond"])
def test_step_by_step_equals_run(case):
    with _case_sampler(case) as a, _case_sampler(case) as b:
        ran = a.run()
        steps = 0
        more = True
        while more:
            more = b.step()
            steps += 1
        assert steps == len(b.timesteps)
        assert np.array_equal(b.latents, ran)
        with pytest.raises(diffusion.DiffusionError) as ei:
            b.step()
        assert ei.value.status == Status.ERROR_INVALID_STATE


def test_run_after_some_steps(plain):
    kw = dict(scheduler="ddim", steps=6, seed=5, eta=1.0)
    with plain.sampler(**kw) as a, plain.sampler(**kw) as b:
        full = a.run()
        assert b.step() and b.step()
        calls = []
        rest = b.run(lambda step, total, t: calls.append(t))
        assert np.array_equal(rest, full)
        assert calls == list(b.timesteps[2:])


def test_progress_callback(plain):
    with plain.sampler(scheduler="ddim", steps=7, seed=1) as s:
        calls = []
        s.run(lambda step, total, t: calls.append((step, total, t)))  # returns None: goes on
        assert [c[0] for c in calls] == list(range(1, 8))
        assert all(c[1] == 7 for c in calls)
        assert [c[2] for c in calls] == list(s.timesteps)
        assert all(isinstance(c[0], int) and isinstance(c[2], float) for c in calls)


def test_progress_can_read_latents(plain):
    with plain.sampler(scheduler="ddim", steps=4, seed=1) as s:
        seen = []
        final = s.run(lambda step, total, t: seen.append(s.latents))
        assert len(seen) == 4 and np.array_equal(seen[-1], final)
        assert not np.array_equal(seen[0], seen[1])


def test_progress_false_cancels_and_sampler_continues(plain):
    kw = dict(scheduler="ddim", steps=8, seed=2, eta=1.0)
    with plain.sampler(**kw) as ref:
        full = ref.run()
    with plain.sampler(**kw) as s:
        calls = []

        def progress(step, total, t):
            calls.append(t)
            return step < 3

        with pytest.raises(diffusion.DiffusionError) as ei:
            s.run(progress)
        assert ei.value.status == Status.ERROR_CANCELLED
        assert "DIFFUSION_ERROR_CANCELLED" in str(ei.value)
        assert len(calls) == 3
        mid = s.latents  # readable after a cancel
        assert mid.shape == s.shape and np.all(np.isfinite(mid))
        # the same x_t as three plain steps
        with plain.sampler(**kw) as c:
            c.step(), c.step(), c.step()
            assert np.array_equal(c.latents, mid)
        later = []
        out = s.run(lambda step, total, t: later.append(t))
        assert later == list(s.timesteps[3:])
        assert np.array_equal(out, full)


def test_progress_truthy_and_falsy_values(plain):
    with plain.sampler(scheduler="ddim", steps=3) as s:
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.run(lambda *a: 0)
        assert ei.value.status == Status.ERROR_CANCELLED
        s.run(lambda *a: 1)


class Boom(Exception):
    pass


def test_exception_in_callback_is_reraised(plain):
    with plain.sampler(scheduler="ddim", steps=5) as s:
        calls = []

        def progress(step, total, t):
            calls.append(step)
            if step == 2:
                raise Boom("from the callback")

        with pytest.raises(Boom, match="from the callback"):
            s.run(progress)
        assert calls == [1, 2]  # the run stopped at the exception
        assert s.latents.shape == s.shape
        s.run()  # and can go on


def test_cancel_before_step(plain):
    with plain.sampler(scheduler="ddim", steps=3, seed=4) as s:
        before = s.latents
        s.cancel()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.step()
        assert ei.value.status == Status.ERROR_CANCELLED
        assert np.array_equal(s.latents, before)  # nothing was stepped
        assert s.step()  # the cancel was consumed


def test_cancel_before_run(plain):
    with plain.sampler(scheduler="ddim", steps=3, seed=4) as s:
        s.cancel()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.run()
        assert ei.value.status == Status.ERROR_CANCELLED
        s.run()  # the cancel was consumed


def test_cancel_from_another_thread(plain):
    with plain.sampler(scheduler="ddim", steps=20, seed=6) as s:
        first_step = threading.Event()
        cancelled = threading.Event()
        calls = []

        def canceller():
            assert first_step.wait(30)
            s.cancel()
            cancelled.set()

        def progress(step, total, t):
            calls.append(step)
            if step == 1:
                first_step.set()
                assert cancelled.wait(30)  # hold the run until the other thread has cancelled

        th = threading.Thread(target=canceller)
        th.start()
        with pytest.raises(diffusion.DiffusionError) as ei:
            s.run(progress)
        th.join()
        assert ei.value.status == Status.ERROR_CANCELLED
        assert 1 <= len(calls) < 20
        assert s.latents.shape == s.shape
        s.run()


def test_cancel_from_another_thread_without_callback(plain):
    # A long run (1000 DDPM steps on 64x64, many seconds), cancelled by a timer inside the C call.
    with plain.sampler(scheduler="ddpm", steps=1000, seed=0, height=64, width=64) as s:
        timer = threading.Timer(0.1, s.cancel)
        timer.start()
        try:
            with pytest.raises(diffusion.DiffusionError) as ei:
                s.run()
        finally:
            timer.cancel()
        assert ei.value.status == Status.ERROR_CANCELLED
        assert s.steps_done < 1000
        assert np.all(np.isfinite(s.latents))


def test_sigint_cancels_run(plain):
    """Ctrl-C during run() (no progress callback given) cancels it and raises KeyboardInterrupt."""
    assert threading.current_thread() is threading.main_thread(), "signals reach only the main thread"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with plain.sampler(scheduler="ddpm", steps=1000, seed=0, height=64, width=64) as s:
        timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                s.run()
        finally:
            timer.cancel()
        assert s.steps_done < 1000
        assert np.all(np.isfinite(s.latents))
        assert s.step()  # usable afterwards


def test_close_from_another_thread_during_run(plain):
    s = plain.sampler(scheduler="ddim", steps=30, seed=6)
    started = threading.Event()
    errors = []

    def runner():
        try:
            s.run(lambda *a: started.set())
        except diffusion.DiffusionError as e:
            errors.append(e)

    th = threading.Thread(target=runner)
    th.start()
    assert started.wait(30)
    s.close()  # cancels the run and waits for it
    th.join(30)
    assert not th.is_alive()
    assert s.closed
    assert [e.status for e in errors] in ([], [Status.ERROR_CANCELLED])


def test_close_inside_callback(plain):
    s = plain.sampler(scheduler="ddim", steps=5)
    with pytest.raises(diffusion.DiffusionError) as ei:
        s.run(lambda step, total, t: s.close())
    assert ei.value.status == Status.ERROR_CANCELLED
    assert s.closed


def test_no_stepping_inside_callback(plain):
    with plain.sampler(scheduler="ddim", steps=3) as s:
        inner = []

        def progress(step, total, t):
            try:
                s.step()
            except diffusion.DiffusionError as e:
                inner.append(e.status)

        s.run(progress)
        assert inner == [Status.ERROR_INVALID_STATE] * 3


def test_images_shape_and_mapping(plain):
    with plain.sampler(scheduler="ddim", steps=2, batch=2, height=8, width=16) as s:
        assert s.shape == (2, 3, 8, 16)
        img = s.preview_images()
        assert img.dtype == np.uint8 and img.shape == (2, 8, 16, 3)
        with pytest.raises(diffusion.DiffusionError, match="not finished"):
            s.images()  # only the preview call gives images before the last step
        values = np.array([-1.0, 0.0, 1.0, 2.0, -3.0, 0.5, -0.5, 1e9], np.float32)
        lat = np.resize(values, s.shape).astype(np.float32)
        s.latents = lat
        assert np.array_equal(s.latents, lat)
        img = s.preview_images()
        nhwc = lat.transpose(0, 2, 3, 1)
        expect = {-1.0: 0, 0.0: 128, 1.0: 255, 2.0: 255, -3.0: 0, 0.5: 191, -0.5: 64, 1e9: 255}
        for v, p in expect.items():
            assert np.all(img[nhwc == np.float32(v)] == p), (v, p)


def test_images_layout_is_nhwc(plain):
    with plain.sampler(scheduler="ddim", steps=2, batch=2) as s:
        rng = np.random.default_rng(7)
        lat = rng.uniform(-1.2, 1.2, s.shape).astype(np.float32)
        s.latents = lat
        img = s.preview_images().astype(int)
        ref = np.round(np.clip(lat / 2 + 0.5, 0, 1) * 255).transpose(0, 2, 3, 1)
        assert np.max(np.abs(img - ref)) <= 1  # rounding ties may differ by one
        assert np.mean(img == ref) > 0.99


def test_run_returns_unclamped_sample(plain):
    with plain.sampler(scheduler="ddpm", steps=50, scheduler_config={"clip_sample": False, "num_train_timesteps": 50,
                                                                        "variance_type": "fixed_large"}) as s:
        out = s.run()
        assert np.max(np.abs(out)) > 1.0  # clip_sample off: values leave [-1, 1] and stay so


def test_set_latents_replaces_x_t(plain):
    kw = dict(scheduler="ddim", steps=3, seed=0)
    with plain.sampler(**kw) as a, plain.sampler(**kw, batch=1) as b:
        other = np.random.default_rng(8).standard_normal(a.shape).astype(np.float32)
        a.latents = other
        b.latents = other.astype(np.float64)  # converted
        assert np.array_equal(a.run(), b.run())
        assert a.timesteps.tolist() == b.timesteps.tolist()


def test_seed_changes_noise(plain):
    with plain.sampler(seed=1) as a, plain.sampler(seed=1) as b, plain.sampler(seed=2) as c:
        assert np.array_equal(a.latents, b.latents)
        assert not np.array_equal(a.latents, c.latents)
        assert a.latents.shape == (1, 3, 16, 16)


def test_defaults(plain):
    with plain.sampler() as s:  # the model has no scheduler_config.json: ddpm, all 1000 steps
        assert len(s.timesteps) == 1000 and s.timesteps[0] == 999 and s.timesteps[-1] == 0
    with plain.sampler(scheduler="ddim") as s:  # ddim's pipeline default: 50 steps
        assert len(s.timesteps) == 50


def test_scheduler_config_as_json_string(plain):
    with plain.sampler(scheduler="ddim", steps=10, scheduler_config='{"timestep_spacing": "trailing"}') as a:
        with plain.sampler(scheduler="ddim", steps=10, scheduler_config={"timestep_spacing": "trailing"}) as b:
            assert a.timesteps.tolist() == b.timesteps.tolist()
            assert a.timesteps[0] == 999


def test_class_label_sequence_and_broadcast(class_model):
    with class_model.sampler(scheduler="ddim", steps=3, batch=2, class_label=5) as a:
        with class_model.sampler(scheduler="ddim", steps=3, batch=2, class_label=[5, 5]) as b:
            with class_model.sampler(scheduler="ddim", steps=3, batch=2, class_label=np.array([5, 6])) as c:
                ra, rb, rc = a.run(), b.run(), c.run()
                assert np.array_equal(ra, rb)
                assert np.array_equal(ra[0], rc[0]) and not np.array_equal(ra[1], rc[1])


def test_sampler_keeps_model_alive(plain_dir):
    import gc

    s = diffusion.load(plain_dir).sampler(scheduler="ddim", steps=2)  # no reference to the model kept
    gc.collect()
    assert s.run().shape == s.shape
    assert s.model.closed is False
    s.close()


def test_keyboard_interrupt_cancels_run(plain):
    # Simulates Ctrl-C arriving while the progress callback runs.
    with plain.sampler(scheduler="ddim", steps=5) as s:
        def progress(step, total, t):
            if step == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            s.run(progress)
        s.run()


def test_images_after_run_match_the_final_sample(plain):
    with plain.sampler(scheduler="ddim", steps=5, batch=2, seed=3) as s:
        final = s.run().astype(np.float64)
        ref = np.round(np.clip(final / 2 + 0.5, 0, 1) * 255).transpose(0, 2, 3, 1)
        assert np.max(np.abs(s.images().astype(int) - ref)) <= 1


def test_samplers_in_parallel_threads(plain):
    """Many samplers run concurrently on one model, each giving what it gives alone."""
    helpers.assert_parallel_runs_match(plain.sampler, [dict(scheduler="ddim", steps=6, seed=i, eta=0.5) for i in range(3)])


def test_guidance_set_later_equals_constructor():
    with diffusion.load(helpers.unet_dir("class_cond_null")) as m:
        kw = dict(scheduler="ddim", steps=4, seed=2, batch=2, class_label=[3, 7])
        with m.sampler(guidance_scale=1.5, **kw) as a, m.sampler(**kw) as b, m.sampler(**kw) as c:
            b.set_guidance_scale(1.5)
            ga, gb, plain_run = a.run(), b.run(), c.run()
            assert np.array_equal(ga, gb)
            assert not np.array_equal(ga, plain_run)


def test_steps_done_and_remaining(plain):
    with plain.sampler(scheduler="ddim", steps=4) as s:
        assert (s.steps_done, s.remaining) == (0, 4)
        assert s.step() is True
        assert (s.steps_done, s.remaining) == (1, 3)
        s.run()
        assert (s.steps_done, s.remaining) == (4, 0)
