"""Evaluation and training views of a domain's images (center crop; pad + random crop + flip).

They live in the data layer so the exporter and the runtime can preprocess exactly as training did without
importing the trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bap.data.types import Preprocess

__all__ = ["augment", "eval_view"]


def eval_view(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Center crop ``pre.crop`` out of images at ``pre.load_size``."""
    s = x.shape[-1]
    if s == pre.crop:
        return x
    o = (s - pre.crop) // 2
    return x[..., o : o + pre.crop, o : o + pre.crop]


def augment(x: torch.Tensor, pre: Preprocess, g: torch.Generator) -> torch.Tensor:
    """Training view: zero-pad by ``pre.pad``, random ``pre.crop`` crop, optional horizontal flip."""
    if pre.pad:
        x = F.pad(x, (pre.pad, pre.pad, pre.pad, pre.pad))
    b, s, c = x.shape[0], x.shape[-1], pre.crop
    if s > c:
        offs = torch.randint(0, s - c + 1, (b, 2), generator=g).tolist()
        x = torch.stack([x[i, :, t : t + c, u : u + c] for i, (t, u) in enumerate(offs)])
    if pre.flip:
        flip = torch.rand(b, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous()
