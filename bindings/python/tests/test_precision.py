"""precision="bf16" (issue 9): accepted and reported, refused when unknown, the same bytes whether
the CPU runs vdpbf16ps or the library emulates it, and a seeded Stable Diffusion run stays close to
the f32 one. (The shipped digits model's bf16 accuracy is in test_digits.py.)"""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import diffusion
import helpers

SD1 = helpers.fixtures_dir() / "sd" / "sd1"
CIFAR = helpers.fixtures_dir() / "unet" / "cifar_small"


def test_precision_is_reported():
    with diffusion.load(CIFAR) as m:
        assert m.precision == "f32" and m.info["precision_native"] is True
    with diffusion.load(CIFAR, precision="bf16") as m:
        assert m.precision == "bf16"
        assert isinstance(m.info["precision_native"], bool)


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of 'f32', 'bf16', got 'fp8'"):
        diffusion.load(CIFAR, precision="fp8")


def test_bf16_differs_from_f32_within_its_error():
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with diffusion.load(CIFAR) as m32, diffusion.load(CIFAR, precision="bf16") as m16:
        a, b = m32.predict(x, [10, 900]), m16.predict(x, [10, 900])
    error = np.abs(a - b).max() / np.abs(a).max()
    # Measured 1.2e-2 (bf16 keeps 8 bits); > 1e-4 shows the bf16 kernels ran.
    assert 1e-4 < error <= 3e-2, error


_HASH_SCRIPT = """
import hashlib, sys, numpy as np, diffusion
m = diffusion.load(sys.argv[1], threads=int(sys.argv[2]), precision="bf16")
x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
y = m.predict(x, [500, 10, 999])
print(m.info["precision_native"], hashlib.sha256(y.tobytes()).hexdigest())
"""


def _bf16_hash(threads, emulate):
    env = dict(os.environ)
    env.pop("DIFFUSION_NO_BF16_INSTRUCTIONS", None)
    if emulate:
        env["DIFFUSION_NO_BF16_INSTRUCTIONS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(helpers.repo_root() / "bindings" / "python"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, str(CIFAR), str(threads)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", out[1]


def test_bf16_bytes_are_the_same_emulated_or_native_and_for_any_thread_count():
    native1, h1 = _bf16_hash(1, emulate=False)
    native2, h2 = _bf16_hash(2, emulate=False)
    emulated, h3 = _bf16_hash(2, emulate=True)
    assert not emulated
    assert h1 == h2 == h3
    if not native1:
        print("this CPU has no AVX512-BF16: both runs were emulated")


def test_seeded_sd_run_stays_close_to_f32():
    sys.path.insert(0, str(helpers.repo_root() / "tools"))
    from compare_precisions import psnr
    images = {}
    for precision in ("f32", "bf16"):
        with diffusion.load(SD1, precision=precision) as m:
            images[precision] = m.generate("a photograph of an astronaut riding a horse", steps=20, seed=1,
                                           scheduler="euler_a", guidance_scale=7.5)
    value = psnr(images["bf16"], images["f32"])
    # The bar is 30 dB (issue 9); measured 49 dB on this tiny pipeline, ~XX dB on the SD1.5-shaped one.
    assert 30 <= value < float("inf"), value
