"""Guarded image decoding: decompression-bomb limit, truncated files, odd modes (16-bit, CMYK, palette, alpha).

Everything an untrusted image file can do wrong becomes a one-line :class:`~bap.errors.InputError`.
Decoding and the numpy resize are torch-free (:mod:`bap.data.imaging`); the tensor functions used by the
training loaders import torch when called, so importing this module costs no torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bap.data import imaging
from bap.data.imaging import resize_center_crop_array, to_rgb_array

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_PIXELS",
    "decode_image",
    "load_image_array",
    "load_image_tensor",
    "resize_center_crop",
    "resize_center_crop_array",
    "to_rgb_array",
    "to_rgb_float",
]

# 64 megapixels: far beyond any camera frame bap is meant for, far below memory trouble
MAX_PIXELS = imaging.MAX_PIXELS


def decode_image(path: str | os.PathLike) -> Any:
    """Open and fully decode an image file with Pillow (a ``PIL.Image``), refusing bombs and broken files.

    The pixel limit (:data:`MAX_PIXELS`) is checked from the header, before any pixel data is decoded.
    """
    return imaging.decode_image(path, max_pixels=MAX_PIXELS)


def to_rgb_float(im: Any) -> torch.Tensor:
    """Any Pillow mode -> float32 tensor ``[3, H, W]`` in [0, 1] (see :func:`~bap.data.imaging.to_rgb_array`)."""
    import torch

    return torch.from_numpy(to_rgb_array(im))


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the shorter side of ``[3, H, W]`` to ``size`` (antialiased bilinear) and center-crop a square."""
    import torch.nn.functional as F

    _, h, w = x.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp_(0.0, 1.0).contiguous()


def load_image_array(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode ``path`` and return float32 ``[3, size, size]`` in [0, 1] as numpy (no torch)."""
    return resize_center_crop_array(to_rgb_array(decode_image(path)), size)


def load_image_tensor(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Decode ``path`` and return float32 ``[3, size, size]`` in [0, 1]."""
    return resize_center_crop(to_rgb_float(decode_image(path)), size)
