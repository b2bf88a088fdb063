"""Locating libdiffusion and declaring its C API (include/diffusion.h) for ctypes.

Nothing here is public; the package's ``__init__`` wraps it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
import threading

__all__ = ["Status", "load_library", "library", "library_path"]


class Status(enum.IntEnum):
    """``diffusion_status`` from diffusion.h (append-only)."""

    OK = 0
    ERROR_INVALID_ARGUMENT = 1
    ERROR_IO = 2
    ERROR_INVALID_FILE = 3
    ERROR_UNSUPPORTED = 4
    ERROR_MODEL_MISMATCH = 5
    ERROR_CANCELLED = 6
    ERROR_NO_UNCONDITIONAL = 7
    ERROR_OUT_OF_MEMORY = 8
    ERROR_INVALID_STATE = 9
    ERROR_INTERNAL = 10
    ERROR_CALLBACK = 11

    @property
    def c_name(self) -> str:
        """The C enumerator's name, e.g. ``DIFFUSION_ERROR_IO``."""
        return "DIFFUSION_" + self.name


# ---- C types ------------------------------------------------------------------------------

c_status = ctypes.c_int  # a C enum is an int on every ABI we target
c_model_p = ctypes.c_void_p
c_sampler_p = ctypes.c_void_p


class ModelParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("n_threads", ctypes.c_int32),
        ("prefer_fp16", ctypes.c_bool),
        ("memory_limit", ctypes.c_uint64),
        ("precision", ctypes.c_int32),
        ("config_from", ctypes.c_char_p),
        ("vae", ctypes.c_char_p),
    ]


class ModelInfo(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("in_channels", ctypes.c_int32),
        ("out_channels", ctypes.c_int32),
        ("sample_size", ctypes.c_int32),
        ("num_class_embeds", ctypes.c_int32),
        ("sample_width", ctypes.c_int32),
        ("null_class_label", ctypes.c_int32),
        ("latent_channels", ctypes.c_int32),
        ("vae_scale_factor", ctypes.c_int32),
        ("context_length", ctypes.c_int32),
        ("context_width", ctypes.c_int32),
        ("precision", ctypes.c_int32),
        ("precision_native", ctypes.c_bool),
    ]


class SamplerParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("scheduler", ctypes.c_char_p),
        ("steps", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("batch", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("eta", ctypes.c_float),
        ("scheduler_config_json", ctypes.c_char_p),
        ("channels", ctypes.c_int32),
        ("prompt", ctypes.c_char_p),
        ("negative_prompt", ctypes.c_char_p),
        ("clip_skip", ctypes.c_int32),
    ]


class PredictParams(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_uint32),
        ("x", ctypes.POINTER(ctypes.c_float)),
        ("batch", ctypes.c_int32),
        ("channels", ctypes.c_int32),
        ("height", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("timesteps", ctypes.POINTER(ctypes.c_float)),
        ("class_labels", ctypes.POINTER(ctypes.c_int32)),
        ("context", ctypes.POINTER(ctypes.c_float)),
        ("context_tokens", ctypes.c_int32),
        ("context_width", ctypes.c_int32),
        ("out", ctypes.POINTER(ctypes.c_float)),
        ("out_count", ctypes.c_size_t),
    ]


# bool (*)(int32_t step, int32_t total_steps, float timestep, void *user_data)
PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_void_p)
# bool (*)(diffusion_stage stage, int32_t done, int32_t total, void *user_data)
STAGE_FN = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_int, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p)

_P = ctypes.POINTER
_f32p = _P(ctypes.c_float)
_i32p = _P(ctypes.c_int32)
_u8p = _P(ctypes.c_uint8)

# bool (*)(const float *x, const int32_t shape[4], float timestep, float *out, int32_t out_channels,
#          void *user_data)
DENOISE_FN = ctypes.CFUNCTYPE(ctypes.c_bool, _f32p, _i32p, ctypes.c_float, _f32p, ctypes.c_int32, ctypes.c_void_p)
# bool (*)(const float *x, const int32_t shape[4], float timestep, float *grad, void *user_data)
GRADIENT_FN = ctypes.CFUNCTYPE(ctypes.c_bool, _f32p, _i32p, ctypes.c_float, _f32p, ctypes.c_void_p)

# name: (restype, argtypes). Every function of diffusion.h.
PROTOTYPES = {
    "diffusion_version_number": (ctypes.c_uint32, []),
    "diffusion_version_string": (ctypes.c_char_p, []),
    "diffusion_status_string": (ctypes.c_char_p, [c_status]),
    "diffusion_last_error": (ctypes.c_char_p, []),
    "diffusion_model_params_init": (None, [_P(ModelParams), ctypes.c_size_t]),
    "diffusion_model_load": (c_status, [ctypes.c_char_p, _P(ModelParams), _P(c_model_p)]),
    "diffusion_model_free": (None, [c_model_p]),
    "diffusion_model_get_info": (c_status, [c_model_p, _P(ModelInfo)]),
    "diffusion_model_config_json": (c_status, [c_model_p, _P(ctypes.c_char_p)]),
    "diffusion_model_predict": (
        c_status,
        [c_model_p, _f32p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _f32p, _i32p, _f32p,
         ctypes.c_size_t],
    ),
    "diffusion_sampler_params_init": (None, [_P(SamplerParams), ctypes.c_size_t]),
    "diffusion_sampler_create": (c_status, [c_model_p, _P(SamplerParams), _P(c_sampler_p)]),
    "diffusion_sampler_create_with_denoiser": (c_status, [DENOISE_FN, ctypes.c_void_p, _P(SamplerParams),
                                                          _P(c_sampler_p)]),
    "diffusion_sampler_free": (None, [c_sampler_p]),
    "diffusion_sampler_set_guidance_scale": (c_status, [c_sampler_p, ctypes.c_float]),
    "diffusion_sampler_set_class_label": (c_status, [c_sampler_p, _i32p, ctypes.c_int32]),
    "diffusion_sampler_set_classifier_guidance": (c_status, [c_sampler_p, GRADIENT_FN, ctypes.c_void_p,
                                                             ctypes.c_float]),
    "diffusion_sampler_set_init_latents": (c_status, [c_sampler_p, _f32p, ctypes.c_size_t, ctypes.c_double]),
    "diffusion_sampler_set_init_image": (c_status, [c_sampler_p, _u8p, ctypes.c_size_t, ctypes.c_double]),
    "diffusion_sampler_set_start_noise": (c_status, [c_sampler_p, _f32p, ctypes.c_size_t]),
    "diffusion_sampler_shape": (c_status, [c_sampler_p, _i32p]),
    "diffusion_sampler_timesteps": (c_status, [c_sampler_p, _f32p, ctypes.c_size_t, _P(ctypes.c_size_t)]),
    "diffusion_sampler_get_latents": (c_status, [c_sampler_p, _f32p, ctypes.c_size_t]),
    "diffusion_sampler_set_latents": (c_status, [c_sampler_p, _f32p, ctypes.c_size_t]),
    "diffusion_sampler_step": (c_status, [c_sampler_p, _i32p]),
    "diffusion_sampler_run": (c_status, [c_sampler_p, PROGRESS_FN, ctypes.c_void_p]),
    "diffusion_sampler_set_stage_callback": (c_status, [c_sampler_p, STAGE_FN, ctypes.c_void_p]),
    "diffusion_sampler_progress": (c_status, [c_sampler_p, _i32p, _i32p]),
    "diffusion_sampler_cancel": (None, [c_sampler_p]),
    "diffusion_sampler_get_images": (c_status, [c_sampler_p, _u8p, ctypes.c_size_t]),
    "diffusion_sampler_get_preview_images": (c_status, [c_sampler_p, _u8p, ctypes.c_size_t]),
    "diffusion_sampler_image_shape": (c_status, [c_sampler_p, _i32p]),
    "diffusion_model_tokenize": (c_status, [c_model_p, ctypes.c_char_p, _i32p, ctypes.c_size_t, _P(ctypes.c_size_t)]),
    "diffusion_model_encode_prompt": (c_status, [c_model_p, ctypes.c_char_p, ctypes.c_int32, _f32p, ctypes.c_size_t]),
    "diffusion_model_vae_encode": (
        c_status,
        [c_model_p, _f32p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _P(ctypes.c_uint64), _f32p, ctypes.c_size_t],
    ),
    "diffusion_model_vae_decode": (
        c_status, [c_model_p, _f32p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, _f32p, ctypes.c_size_t],
    ),
    "diffusion_predict_params_init": (None, [_P(PredictParams), ctypes.c_size_t]),
    "diffusion_model_predict_ex": (c_status, [c_model_p, _P(PredictParams)]),
    "diffusion_sampler_set_guidance_rescale": (c_status, [c_sampler_p, ctypes.c_float]),
    "diffusion_sampler_set_prompt_embeddings": (c_status, [c_sampler_p, _f32p, _f32p, ctypes.c_size_t]),
    "diffusion_sampler_set_mask": (c_status, [c_sampler_p, _u8p, ctypes.c_size_t, _u8p, ctypes.c_size_t,
                                              ctypes.c_double]),
    "diffusion_scheduler_names": (_P(ctypes.c_char_p), []),
    "diffusion_scheduler_info_json": (c_status, [ctypes.c_char_p, _P(ctypes.c_char_p)]),
    "diffusion_noise": (c_status, [ctypes.c_uint64, _f32p, ctypes.c_size_t]),
    "diffusion_slerp": (c_status, [_f32p, _f32p, ctypes.c_size_t, ctypes.c_float, _f32p]),
}


class LibraryNotFoundError(OSError):
    """libdiffusion could not be located or loaded."""


class _Missing:
    """Stands in for a function the loaded library does not export (an older build)."""

    def __init__(self, name: str, path: str):
        self.__name__ = name
        self._path = path

    def __call__(self, *args, **kwargs):
        raise LibraryNotFoundError(f"{self._path} does not export {self.__name__} (a build older than this package?)")


class Library:
    """The loaded shared library with every prototype declared."""

    def __init__(self, cdll: ctypes.CDLL, path: str):
        self.cdll = cdll
        self.path = path
        self.missing = []
        for name, (restype, argtypes) in PROTOTYPES.items():
            try:
                fn = getattr(cdll, name)
            except AttributeError:
                self.missing.append(name)
                setattr(self, name[len("diffusion_"):], _Missing(name, path))
                continue
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name[len("diffusion_"):], fn)


def _candidates():
    """(description, thing to pass to CDLL) in lookup order."""
    env = os.environ.get("DIFFUSION_LIBRARY")
    if env:
        # An explicit choice is never silently replaced by another library.
        yield "DIFFUSION_LIBRARY", env
        return
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libdiffusion.so")
    yield "next to the package", here
    found = ctypes.util.find_library("diffusion")
    yield "ctypes.util.find_library('diffusion')", found
    yield "system loader", "libdiffusion.so.0"
    yield "system loader", "libdiffusion.so"


def load_library() -> Library:
    tried = []
    for how, what in _candidates():
        if what is None:
            tried.append(f"{how}: not found")
            continue
        if how == "next to the package" and not os.path.exists(what):
            tried.append(f"{what} ({how}): no such file")
            continue
        try:
            cdll = ctypes.CDLL(what)
        except OSError as e:
            tried.append(f"{what} ({how}): {e}")
            continue
        path = what
        if not os.path.isabs(path):
            path = _resolved_path(cdll) or what
        return Library(cdll, path)
    raise LibraryNotFoundError(
        "libdiffusion could not be loaded. Tried, in order:\n  - "
        + "\n  - ".join(tried)
        + "\nSet DIFFUSION_LIBRARY to the path of libdiffusion.so, put libdiffusion.so next to the "
        "diffusion package, or install it where the system loader finds it."
    )


def _resolved_path(cdll: ctypes.CDLL):
    """The file the dynamic loader picked for a bare name, from /proc/self/maps (Linux)."""
    try:
        addr = ctypes.cast(cdll.diffusion_version_number, ctypes.c_void_p).value
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(v, 16) for v in parts[0].split("-"))
                if lo <= addr < hi and len(parts) >= 6:
                    return parts[5]
    except Exception:
        pass
    return None


_lock = threading.Lock()
_library = None


def library() -> Library:
    """The library, loaded on first use."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = load_library()
    return _library


def library_path() -> str:
    """The path of the loaded libdiffusion (loading it if needed)."""
    return library().path
