"""Guarded image decoding: decompression-bomb limit, truncated files, odd modes (16-bit, CMYK, palette, alpha).

Everything an untrusted image file can do wrong becomes a one-line :class:`~bap.errors.InputError`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from bap.errors import InputError

__all__ = ["MAX_PIXELS", "decode_image", "load_image_tensor", "resize_center_crop", "to_rgb_float"]

# 64 megapixels: far beyond any camera frame bap is meant for, far below memory trouble
MAX_PIXELS = 64_000_000


def decode_image(path: str | os.PathLike):
    """Open and fully decode an image file with Pillow, refusing bombs and broken files.

    The pixel limit is checked from the header, before any pixel data is decoded; Pillow's own global limit
    is left alone.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            if im.width * im.height > MAX_PIXELS:
                raise InputError(f"image {path} has {im.width}x{im.height} pixels (limit {MAX_PIXELS})", "downscale it")
            im.load()
    except FileNotFoundError:
        raise InputError(f"image not found: {path}", "check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not an image", "pass image files") from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read", "pass a JPEG/PNG/BMP/TIFF/WebP file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"image {path} exceeds the decompression-bomb limit ({MAX_PIXELS} px)", "downscale it"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"image {path} is truncated or corrupt ({e})", "re-encode the file") from None
    if im.width < 1 or im.height < 1:
        raise InputError(f"image {path} is empty", "pass a non-empty image")
    return im


def to_rgb_float(im) -> torch.Tensor:
    """Any Pillow mode -> float32 ``[3, H, W]`` in [0, 1] (16-bit scaled, alpha composited on black, CMYK converted)."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi, 0.0, 1.0).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(a, (3, *a.shape))))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float32)
        a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0)
        if a.max() > 1.0:
            a = a / max(float(a.max()), 1e-8)
        a = np.clip(a, 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(np.broadcast_to(a, (3, *a.shape))))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    a = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


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


def load_image_tensor(path: str | os.PathLike, size: int) -> torch.Tensor:
    """Decode ``path`` and return float32 ``[3, size, size]`` in [0, 1]."""
    return resize_center_crop(to_rgb_float(decode_image(path)), size)
