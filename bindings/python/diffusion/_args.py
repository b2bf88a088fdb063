"""Checking and converting arguments before they reach the C library."""

from __future__ import annotations

import ctypes
import numbers
import operator
import os

import numpy as np

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_u8p = ctypes.POINTER(ctypes.c_uint8)
_INT32_MAX = 2**31 - 1


def _int(name: str, value, lo: int, hi: int) -> int:
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} is {v}, must be between {lo} and {hi}")
    return v


def _float(name: str, value) -> float:
    """A real number (int, float or numpy scalar; not bool or str) as a Python float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    return float(value)


def _shape(name: str, value) -> tuple:
    """A shape (an int or a sequence of ints >= 0) as a tuple of Python ints."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of integers, not {type(value).__name__}")
    try:
        dims = (operator.index(value),)
    except TypeError:
        try:
            dims = tuple(value)
        except TypeError:
            kind = type(value).__name__
            raise TypeError(f"{name} must be an integer or a sequence of integers, not {kind}") from None
    return tuple(_int(f"{name}[{i}]", d, 0, _INT32_MAX) for i, d in enumerate(dims))


def _labels(name: str, value) -> np.ndarray:
    """A 1-d int32 array of class labels from an int or a sequence of ints."""
    arr = np.asarray(value)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must be an integer or a sequence of integers, got {arr.dtype} values")
    if arr.ndim > 1:
        raise ValueError(f"{name} must be an integer or a 1-d sequence, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size and (arr.min() < -(2**31) or arr.max() > _INT32_MAX):
        raise ValueError(f"{name} {arr.tolist()} does not fit in int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _c_string(name: str, value) -> bytes:
    """UTF-8 bytes for a const char * argument (a NUL inside would silently cut it short)."""
    raw = os.fsencode(value) if name in ("path", "config_from", "vae") else (value.encode("utf-8") if isinstance(value, str) else bytes(value))
    if b"\0" in raw:
        raise ValueError(f"{name} contains a NUL character")
    return raw


def _new_params(cls, init):
    """A params struct filled by the library's *_init.

    The library writes only the sizeof(struct) bytes this package knows and sets struct_size to
    it, so a newer library whose struct has grown neither writes past it nor reads beyond it.
    """
    params = cls()
    init(ctypes.byref(params), ctypes.sizeof(cls))
    return params
