"""examples/python/generate.py end to end, and the package's build."""

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np

import helpers

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent
EXAMPLE = PACKAGE.parent.parent / "examples" / "python" / "generate.py"
MORPH = EXAMPLE.with_name("morph.py")
DIGITS = PACKAGE.parent.parent / "models" / "digits"


def read_png(path):
    """(width, height, color type, uint8 rows) of a non-interlaced 8-bit PNG with filter 0 rows."""
    blob = Path(path).read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(blob):
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        kind, data = blob[pos + 4 : pos + 8], blob[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", blob[pos + 8 + n : pos + 12 + n])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF, kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    w, h, depth, color, _, _, interlace = ihdr
    assert depth == 8 and interlace == 0
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * channels)
    assert np.all(raw[:, 0] == 0)
    return w, h, color, raw[:, 1:].reshape(h, w, channels)


def _run_example(*args, script=EXAMPLE, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE))
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_generate_png(tmp_path):
    out = tmp_path / "grid.png"
    r = _run_example("--model", helpers.unet_dir("class_cond"), "--scheduler", "ddim", "--steps", 4, "--count", 6,
                     "--cols", 3, "--scale", 2, "--output", out)
    assert r.returncode == 0, r.stderr
    w, h, color, pixels = read_png(out)
    assert color == 2  # RGB
    # 3 x 2 images of 16x16 upscaled 2x, 2 px padding
    assert (w, h) == (3 * (32 + 2) + 2, 2 * (32 + 2) + 2)
    assert pixels.std() > 0


def test_generate_gray_and_positional_model(tmp_path):
    out = tmp_path / "g.png"
    r = _run_example(helpers.unet_dir("in1_out1"), "--steps", 2, "-n", 1, "--scale", 1, "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    w, h, color, _ = read_png(out)
    assert color == 0 and (w, h) == (20, 20)


def test_generate_missing_model_fails(tmp_path):
    r = _run_example("--model", tmp_path / "absent", "-o", tmp_path / "x.png")
    assert r.returncode != 0 and "not found" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_morph_png(tmp_path):
    out = tmp_path / "strip.png"
    r = _run_example("--model", DIGITS, "--steps", 5, "-n", 4, "--seeds", 1, 2, "--digit", 3, "--scale", 2,
                     "--output", out, script=MORPH)
    assert r.returncode == 0, r.stderr
    w, h, color, pixels = read_png(out)
    assert color == 0  # gray (1 channel)
    assert (w, h) == (4 * (16 + 2) + 2, 16 + 2 + 2)  # 4 images of 8x8 upscaled 2x in one row, 2 px padding
    frames = [pixels[2:18, 2 + i * 18 : 18 + i * 18, 0][::2, ::2] for i in range(4)]
    assert all(f.std() > 0 for f in frames)
    assert not np.array_equal(frames[0], frames[3])
    # the end frames are what each seed gives alone
    import diffusion

    with diffusion.load(DIGITS) as m:
        for seed, frame in ((1, frames[0]), (2, frames[3])):
            with m.sampler(scheduler="ddim", steps=5, seed=seed, class_label=3, guidance_scale=3.0) as s:
                s.run()
                alone = s.images()[0, :, :, 0].astype(int)
            assert np.max(np.abs(alone - frame)) <= 1, seed


def test_morph_defaults(tmp_path):
    """Default model (models/digits, found from any folder) and output out/morph.png: 8 images upscaled to 128 px."""
    r = _run_example("--steps", 3, "-q", script=MORPH, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    w, h, color, pixels = read_png(tmp_path / "out" / "morph.png")
    assert (w, h, color) == (8 * (128 + 2) + 2, 128 + 4, 0)
    assert pixels.std() > 0


def test_morph_model_without_guidance(tmp_path):
    out = tmp_path / "m.png"
    r = _run_example(helpers.unet_dir("class_cond"), "--steps", 2, "-n", 3, "--scale", 1, "-o", out, script=MORPH)
    assert r.returncode == 0, r.stderr
    assert "no unconditional class" in r.stderr
    w, h, color, _ = read_png(out)
    assert color == 2 and (w, h) == (3 * 18 + 2, 20)


def test_morph_missing_model_fails(tmp_path):
    r = _run_example("--model", tmp_path / "absent", "-o", tmp_path / "x.png", script=MORPH)
    assert r.returncode != 0 and "not found" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_pip_install(tmp_path):
    """`pip install ./bindings/python` (as a user runs it: build isolation, setuptools from the index)
    gives an importable package that finds the library."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info",
                                                                 "libdiffusion.so*"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (target / "diffusion" / "__init__.py").is_file() and (target / "diffusion" / "_lib.py").is_file()
    assert not list((target / "diffusion").glob("*.so"))  # pure Python unless a library is vendored
    code = "import diffusion, sys; print(diffusion.__file__); print(diffusion.version())"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(target)))
    assert r.returncode == 0, r.stderr
    where, version = r.stdout.split()
    assert Path(where).is_relative_to(target)
    assert version == __import__("diffusion").version()
