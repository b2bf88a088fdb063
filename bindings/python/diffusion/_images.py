"""Caller images as the C API takes them: 8-bit pixels from numpy arrays or PIL images.

PIL is not a dependency: it is imported only when an argument might be a PIL image, and only
used if it is installed.
"""

from __future__ import annotations

import numpy as np


def _pil_image_type():
    """PIL.Image.Image if PIL is installed (imported lazily), else None."""
    try:
        from PIL import Image
    except ImportError:
        return None
    return Image.Image


def _from_pil(value, mode: str):
    """A uint8 array of a PIL image converted to `mode` ("RGB" or "L"); `value` itself if it is not a
    PIL image (or a list or tuple of them, which are stacked)."""
    if isinstance(value, np.ndarray):
        return value
    pil = _pil_image_type()
    if pil is None:
        return value
    if isinstance(value, pil):
        return np.asarray(value.convert(mode), dtype=np.uint8)
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, pil) for v in value):
        return np.stack([np.asarray(v.convert(mode), dtype=np.uint8) for v in value])
    return value


def grey(rgb: np.ndarray) -> np.ndarray:
    """uint8 luma of uint8 RGB(A) pixels [..., 3 or 4] exactly as PIL's convert("L"): ITU-R 601-2,
    (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 (alpha ignored)."""
    c = rgb[..., :3].astype(np.uint32)
    return ((c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def pixels(name: str, image, channels: int):
    """An image argument for set_init_image / set_mask: a PIL image (converted to RGB, or L for one
    channel) or a uint8 array with the channel count fixed up when it is unambiguous (RGBA -> RGB by
    dropping alpha, grey [H, W] or [H, W, 1] -> RGB by repeating it, [H, W] -> [H, W, 1]).
    Anything else comes back as np.asarray(image) for the caller's own checks (float arrays are
    latents for set_init_image)."""
    arr = np.asarray(_from_pil(image, "RGB" if channels == 3 else "L"))
    if arr.dtype != np.uint8:
        return arr
    if arr.ndim == 2:
        arr = arr[..., None]
    if channels == 3 and arr.ndim in (3, 4) and arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif channels == 3 and arr.ndim in (3, 4) and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return arr


def mask_planes(mask, height: int, width: int) -> np.ndarray:
    """A mask as uint8 planes [H, W] or [N, H, W] (white = repaint; the library binarises at 128).

    Takes a PIL image (converted to "L"), a bool array (True = repaint), or a uint8 array [H, W],
    [N, H, W], or with channels [H, W, C] / [N, H, W, C] (C = 1, 3 or 4; 3 and 4 are turned into
    grey like PIL's convert("L")). Raises TypeError / ValueError otherwise."""
    arr = np.asarray(_from_pil(mask, "L"))
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        raise TypeError(f"mask must be uint8 (0 keep .. 255 repaint) or bool values, got {arr.dtype}")
    if arr.ndim in (2, 3) and arr.shape[-2:] == (height, width):
        return np.ascontiguousarray(arr)
    if arr.ndim in (3, 4) and arr.shape[-3:-1] == (height, width) and arr.shape[-1] in (1, 3, 4):
        planes = arr[..., 0] if arr.shape[-1] == 1 else grey(arr)
        return np.ascontiguousarray(planes)
    raise ValueError(f"mask must have shape {(height, width)} (or [N, {height}, {width}], or with 1, 3 or 4 "
                     f"channels last), got {arr.shape}")
