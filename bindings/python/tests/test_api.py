"""The package against the header and the loaded library: names, enum values, struct layouts."""

import ctypes
import re

import numpy as np
import pytest

import diffusion
from diffusion import _lib
import helpers


def _header_code():
    path = helpers.header_path()
    if path is None:
        pytest.fail("include/diffusion.h not found next to Tests/Fixtures")
    text = path.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def test_version():
    v = diffusion.version()
    assert isinstance(v, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+", v), v
    major, minor, patch = (int(p) for p in v.split("."))
    assert diffusion.version_number() == major * 10000 + minor * 100 + patch


def test_version_matches_header():
    code = _header_code()
    parts = [int(re.search(rf"#define DIFFUSION_VERSION_{k}\s+(\d+)", code).group(1)) for k in ("MAJOR", "MINOR", "PATCH")]
    assert diffusion.version() == "%d.%d.%d" % tuple(parts)


def test_library_path_is_a_file():
    import os

    assert os.path.isfile(diffusion.library_path())


def test_library_exports_every_function():
    assert _lib.library().missing == []


def test_functions_match_header():
    declared = set(re.findall(r"\b(diffusion_\w+)\s*\(", _header_code()))
    assert declared == set(_lib.PROTOTYPES)


def test_status_enum_matches_header():
    pairs = re.findall(r"\bDIFFUSION_(OK|ERROR_\w+)\s*=\s*(\d+)", _header_code())
    assert pairs, "no diffusion_status values found"
    assert {name: int(v) for name, v in pairs} == {s.name: int(s) for s in diffusion.Status}


def test_status_names_match_library():
    lib = _lib.library()
    for s in diffusion.Status:
        assert lib.status_string(int(s)).decode() == s.c_name
    assert lib.status_string(12345).decode() == "unknown status"


_C_TYPES = {
    "uint32_t": ctypes.c_uint32,
    "int32_t": ctypes.c_int32,
    "uint64_t": ctypes.c_uint64,
    "float": ctypes.c_float,
    "bool": ctypes.c_bool,
    "size_t": ctypes.c_size_t,
    "const char *": ctypes.c_char_p,
    "const float *": ctypes.POINTER(ctypes.c_float),
    "float *": ctypes.POINTER(ctypes.c_float),
    "const int32_t *": ctypes.POINTER(ctypes.c_int32),
}


@pytest.mark.parametrize(
    "c_name, cls",
    [("diffusion_model_params", _lib.ModelParams), ("diffusion_model_info", _lib.ModelInfo),
     ("diffusion_sampler_params", _lib.SamplerParams), ("diffusion_predict_params", _lib.PredictParams)],
)
def test_struct_layout_matches_header(c_name, cls):
    m = re.search(rf"typedef struct {c_name}\s*{{(.*?)}}\s*{c_name}\s*;", _header_code(), re.S)
    assert m, f"struct {c_name} not found in the header"
    fields = []
    for decl in m.group(1).split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        first, *more = decl.split(",")  # "int32_t batch, channels" declares two fields
        fm = re.fullmatch(r"(.*?)\s*\b(\w+)", first)
        ctype = fm.group(1).replace(" *", " *").strip()
        if ctype.endswith("*") and not ctype.endswith(" *"):
            ctype = ctype[:-1].strip() + " *"
        for name in [fm.group(2)] + [m.strip() for m in more]:
            fields.append((name, _C_TYPES[ctype]))
    assert [(n, t) for n, t in cls._fields_] == fields


def test_params_init_gives_header_defaults():
    lib = _lib.library()
    p = diffusion._new_params(_lib.SamplerParams, lib.sampler_params_init)
    assert p.struct_size == ctypes.sizeof(_lib.SamplerParams)
    assert (p.scheduler, p.steps, p.seed, p.batch, p.height, p.width, p.eta, p.scheduler_config_json) == (
        None, 0, 0, 1, 0, 0, 0.0, None)
    assert (p.channels, p.prompt, p.negative_prompt, p.clip_skip) == (0, None, None, 0)
    mp = diffusion._new_params(_lib.ModelParams, lib.model_params_init)
    assert (mp.n_threads, mp.prefer_fp16) == (0, False)
    pp = diffusion._new_params(_lib.PredictParams, lib.predict_params_init)
    assert pp.struct_size == ctypes.sizeof(_lib.PredictParams)
    assert (bool(pp.x), pp.batch, bool(pp.timesteps), bool(pp.class_labels), bool(pp.context), bool(pp.out),
            pp.out_count) == (False, 1, False, False, False, False, 0)


def test_status_enum_is_int():
    assert diffusion.Status.ERROR_CANCELLED == 6
    assert diffusion.Status.ERROR_IO.c_name == "DIFFUSION_ERROR_IO"


def test_error_str_and_attributes():
    e = diffusion.DiffusionError(2, "cannot open x")
    assert e.status == diffusion.Status.ERROR_IO and isinstance(e.status, int)
    assert e.message == "cannot open x"
    assert "DIFFUSION_ERROR_IO" in str(e) and "cannot open x" in str(e)
    assert isinstance(e, Exception)
    e = diffusion.DiffusionError(99, "?")
    assert e.status == 99 and "unknown status" in str(e)


def test_library_not_found_message(monkeypatch, tmp_path):
    missing = tmp_path / "nope" / "libdiffusion.so"
    monkeypatch.setenv("DIFFUSION_LIBRARY", str(missing))
    with pytest.raises(diffusion.LibraryNotFoundError) as ei:
        _lib.load_library()
    assert str(missing) in str(ei.value) and "DIFFUSION_LIBRARY" in str(ei.value)


def test_numpy_arrays_are_float32(plain):
    x = np.zeros((1, plain.in_channels, 16, 16), dtype=np.float64)
    assert plain.predict(x, 10).dtype == np.float32
