"""Torch-free image decoding and resizing (numpy + Pillow), shared by the runtime and the training data loaders.

Decoding is guarded: decompression bombs, truncated files and odd modes (16-bit, CMYK, palette, alpha) become
one-line :class:`~bap.errors.InputError`. Resizing reproduces PyTorch's ``F.interpolate(mode="bilinear",
align_corners=False, antialias=True)`` (the triangle filter Pillow also uses), so a file preprocessed here gives
the tensor training and evaluation saw, to float32 rounding.

It imports neither torch nor the rest of :mod:`bap.data` (whose package names load lazily), so the runtime can use
it on a torch-free install; :mod:`bap.data.images` builds the training loaders' tensor functions on it.
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from typing import Any

import numpy as np

from bap.errors import InputError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "center_crop",
    "decode_image",
    "resize_array",
    "resize_center_crop_array",
    "to_rgb_array",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# 64 megapixels: far beyond any camera frame bap is meant for, far below memory trouble
MAX_PIXELS = 64_000_000


def decode_image(path: str | os.PathLike, max_pixels: int | None = None) -> Any:
    """Open and fully decode an image file with Pillow, refusing bombs and broken files.

    The pixel limit is checked from the header, before any pixel data is decoded; Pillow's own global limit
    is left alone.

    Args:
        path: the image file.
        max_pixels: the pixel limit (default :data:`MAX_PIXELS`).

    Returns:
        The decoded ``PIL.Image.Image``.
    """
    from PIL import Image, UnidentifiedImageError

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            if im.width * im.height > limit:
                raise InputError(f"image {path} has {im.width}x{im.height} pixels (limit {limit})", "downscale it")
            im.load()
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", "check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not an image", "pass image files") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read", "pass a JPEG/PNG/BMP/TIFF/WebP file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"image {path} exceeds the decompression-bomb limit ({limit} px)", "downscale it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image {path} is truncated or corrupt ({e})", "re-encode the file") from None
    if im.width < 1 or im.height < 1:
        raise InputError(f"image {path} is empty", "pass a non-empty image")
    return im


def _gray3(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(a, (3, *a.shape)))


def to_rgb_array(im: Any) -> np.ndarray:
    """Any Pillow mode -> float32 ``[3, H, W]`` in [0, 1] (16-bit scaled, alpha composited on black, CMYK converted)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return _gray3(np.clip(a / hi, 0.0, 1.0).astype(np.float32))
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if a.max() > 1.0:
            a = a / max(float(a.max()), 1e-8)
        return _gray3(np.clip(a, 0.0, 1.0))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (0, 0, 0, 255)), im.convert("RGBA"))
    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    # float32 / float32: bit-identical to torch's ``.float().div_(255.0)`` used by the training loaders
    return np.ascontiguousarray(a.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)


@lru_cache(maxsize=64)
def _weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` antialiased bilinear (triangle filter) weights, as PyTorch and Pillow compute them.

    Upsampling uses support 1, which equals plain bilinear with ``align_corners=False`` (edge taps renormalised
    instead of clamped: the same weights), so one formula serves both directions.
    """
    scale = n_in / n_out
    support, inv = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    w = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * inv))
        total = taps.sum()
        if total > 0:
            w[i, lo:hi] = taps / total
    return w.astype(np.float32)


def resize_array(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``[..., H, W]`` float32 to ``[..., height, width]`` (antialiased bilinear, width pass first)."""
    h, w = x.shape[-2:]
    out = x.astype(np.float32, copy=False)
    if width != w:
        out = out @ _weights(w, width).T
    if height != h:
        out = np.swapaxes(np.swapaxes(out, -1, -2) @ _weights(h, height).T, -1, -2)
    return np.ascontiguousarray(out, dtype=np.float32)


def center_crop(x: np.ndarray, size: int) -> np.ndarray:
    """The centered ``size`` x ``size`` window of ``[..., H, W]`` (top-left biased like the training crop)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def resize_center_crop_array(x: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side of ``[3, H, W]`` to ``size`` and center-crop a square, clipped to [0, 1].

    The numpy twin of :func:`bap.data.images.resize_center_crop`.
    """
    _, h, w = x.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = resize_array(x, nh, nw)
    return np.ascontiguousarray(np.clip(center_crop(x, size), 0.0, 1.0), dtype=np.float32)
