"""Python bindings for libdiffusion (CPU diffusion-model image generation).

A thin ctypes + numpy layer over the C API in ``include/diffusion.h``::

    import diffusion

    with diffusion.load("models/digits") as model:
        with model.sampler(scheduler="ddim", steps=50, seed=1, batch=4) as s:
            x0 = s.run()            # float32 [N, C, H, W], as the scheduler left it
            pixels = s.images()     # uint8 [N, H, W, C]

Stable Diffusion 1.x / 2.x pipeline folders (diffusers layout, safetensors weights) load the same
way and add text and latent steps::

    with diffusion.load("stable-diffusion-v1-5") as p:
        images = p.generate("a photo of a cat", steps=20, seed=1)    # uint8 [1, 512, 512, 3]
        with p.sampler(prompt=["a cat", "a dog"], batch=2, guidance_scale=7.5, seed=1) as s:
            latents = s.run()       # float32 [4, 4, 64, 64]: each prompt's 2 images in a row
            images = s.images()     # decoded by the VAE

- :meth:`Model.tokenize`, :meth:`Model.encode_prompt` (CLIP ids and text states, clip_skip),
  :meth:`Model.encode` / :meth:`Model.decode` (the VAE), :meth:`Model.predict` with ``context=``;
- :meth:`Model.sampler` options: prompt / negative_prompt (str or lists), prompt_embeds,
  clip_skip, guidance_rescale, init_image + strength (img2img), init_image + mask (inpainting);
  images are uint8 numpy arrays, or PIL images when PIL is installed (it is not required).

Beyond a loaded model:

- bring your own denoiser: ``diffusion.Sampler(denoiser=fn, shape=(N, C, H, W), scheduler="ddim",
  steps=50, seed=1)`` runs any scheduler around a Python function ``fn(x, t)`` (the network);
- :meth:`Sampler.set_classifier_guidance` (a gradient function), :meth:`Sampler.set_init_image`
  (img2img from pixels or latents with a strength), :meth:`Sampler.set_start_noise`;
- :func:`scheduler_names`, :func:`scheduler_info`, :func:`noise` (a seed's start noise) and
  :func:`slerp` (spherical interpolation, e.g. to morph between seeds).

Callbacks (progress, denoiser, classifier gradient) run on the thread that called
:meth:`Sampler.step` / :meth:`Sampler.run`; an exception raised in one is kept and re-raised from
that call (nothing propagates into C), and the sampler stays usable.

The shared library is found, in this order, at ``$DIFFUSION_LIBRARY`` (a path), as
``libdiffusion.so`` next to this package, then through the system loader
(``ctypes.util.find_library("diffusion")``, ``libdiffusion.so.0``, ``libdiffusion.so``). It is
loaded on first use; :func:`library_path` says which file was picked.

Lifetimes: a :class:`Model` and a :class:`Sampler` own a C handle each and free it on
``close()`` (idempotent), on leaving a ``with`` block, or when garbage-collected. A sampler keeps
its model alive: ``model.close()`` while samplers made from it are still open only marks the model
closed (no new predictions or samplers) and the C model is freed when the last of those samplers
is closed. Using a closed object raises :class:`ValueError`; it never reaches the C library.

Threads: ctypes releases the GIL during every C call, so predictions and sampling run in
parallel with other Python threads. A model may be shared by any number of threads. A sampler
serialises its own calls (a second thread's call waits for the running one), except
:meth:`Sampler.cancel`, which any thread may call at any time; ``close()`` from another thread
during ``step()`` or ``run()`` cancels the run and waits for it to stop. A sampler's callbacks may
read it (``latents``, ``timesteps``) but not step or change it (ERROR_INVALID_STATE).
"""

from __future__ import annotations

import ctypes
import json
import math

import numpy as np

from ._args import _c_string, _f32p, _float, _int, _new_params, _shape  # noqa: F401 (_new_params: tests)
from ._errors import DiffusionError, _check
from ._lib import LibraryNotFoundError, Status, library
from ._model import Model
from ._sampler import Sampler

for _cls in (DiffusionError, Model, Sampler):
    _cls.__module__ = __name__  # shown as diffusion.Model etc., as before the split
del _cls

__version__ = "0.3.0"

__all__ = [
    "DiffusionError",
    "LibraryNotFoundError",
    "Model",
    "Sampler",
    "Status",
    "library_path",
    "load",
    "noise",
    "scheduler_info",
    "scheduler_names",
    "slerp",
    "version",
    "version_number",
]


# ---- module functions ---------------------------------------------------------------------


def version() -> str:
    """The version string of the loaded library, "MAJOR.MINOR.PATCH"."""
    return library().version_string().decode()


def version_number() -> int:
    """MAJOR * 10000 + MINOR * 100 + PATCH of the loaded library."""
    return int(library().version_number())


def library_path() -> str:
    """The path of the libdiffusion that was loaded (loads it if needed)."""
    return library().path


def load(path, threads: int | None = None, *, prefer_fp16: bool = False, memory_limit: int | None = None,
         precision: str = "f32", config_from=None, vae=None) -> "Model":
    """Loads a model or pipeline folder (diffusers layout), e.g. a UNet2DModel folder or a Stable
    Diffusion 1.x / 2.x pipeline, or a single-file SD checkpoint with ``config_from`` (a pipeline
    folder giving its configs), optionally with a standalone ``vae`` file; see :class:`Model`."""
    return Model(path, threads=threads, prefer_fp16=prefer_fp16, memory_limit=memory_limit, precision=precision,
                 config_from=config_from, vae=vae)


def scheduler_names() -> list:
    """The scheduler names a sampler accepts, in the library's order: ddpm, ddim, euler, euler_a,
    heun, dpmpp_2m, pndm, lms, unipc, lcm. (Aliases such as "dpmpp_2m_karras" and diffusers class
    names are accepted too; :func:`scheduler_info` resolves them.)"""
    arr = library().scheduler_names()
    names = []
    if arr:
        i = 0
        while arr[i] is not None:
            names.append(arr[i].decode("utf-8"))
            i += 1
    return names


def scheduler_info(name: str) -> dict:
    """What a scheduler name, alias or diffusers class name means: {"name", "diffusers_class",
    "implied" (settings the alias sets, e.g. {"algorithm_type": "sde-dpmsolver++"} for
    "dpmpp_2m_sde"), "settings" (the diffusers keys it reads), "defaults", "default_steps"}.
    An unknown name raises DiffusionError (ERROR_INVALID_ARGUMENT) listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    out = ctypes.c_char_p()
    _check(library().scheduler_info_json(_c_string("name", name), ctypes.byref(out)))
    return json.loads(out.value.decode("utf-8"))


def noise(seed: int, shape) -> np.ndarray:
    """The start noise of a seed: float32 values of ``torch.randn(shape, generator=
    torch.Generator().manual_seed(seed))`` on the CPU, i.e. what a sampler with that seed and shape
    draws first (its start latents before the scheduler's init_noise_sigma). ``shape`` is an int or
    a sequence of ints."""
    seed = _int("seed", seed, 0, 2**64 - 1)
    shape = _shape("shape", shape)
    count = math.prod(shape)
    if count > 2**32:
        raise ValueError(f"shape {shape} has {count} values, at most 2**32")
    out = np.empty(shape, dtype=np.float32)
    if out.size:
        _check(library().noise(seed, out.ctypes.data_as(_f32p), out.size))
    return out


def slerp(a, b, t: float) -> np.ndarray:
    """Spherical interpolation of two same-shape arrays at t in [0, 1] (t = 0 gives a, 1 gives b):
    with theta the angle between them (as flat vectors), (sin((1-t) theta) a + sin(t theta) b) /
    sin(theta), linear when they are nearly parallel. Computed in double; returns float32 of their
    shape. Interpolating the start noise of two seeds keeps it looking like noise (a linear mix
    would shrink it); pass the result to :meth:`Sampler.set_start_noise` to morph between seeds."""
    a = np.asarray(a, dtype=np.float32, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    b = np.asarray(b, dtype=np.float32, order="C")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    t = _float("t", t)
    out = np.empty(a.shape, dtype=np.float32)
    if out.size:
        _check(library().slerp(a.ctypes.data_as(_f32p), b.ctypes.data_as(_f32p), out.size, t,
                               out.ctypes.data_as(_f32p)))
    return out
