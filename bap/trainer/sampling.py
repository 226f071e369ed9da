"""Deterministic batch order and augmentation.

Every batch is a pure function of ``(seed, budget, epoch, step, domain)``, so a run resumed from a checkpoint
at any step boundary replays exactly what an uninterrupted run would have done, and DDP ranks agree on the
global batch without communicating.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from bap.data.types import Preprocess

__all__ = ["augment", "derive_seed", "domain_order", "epoch_indices", "eval_view", "generator"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def epoch_indices(n: int, count: int, *parts: object) -> torch.Tensor:
    """``count`` sample indices of a dataset of size ``n``: concatenated seeded permutations."""
    g = generator("epoch", *parts)
    reps = -(-count // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:count]


def domain_order(num_domains: int, *parts: object) -> list[int]:
    """The random order in which one round visits the domains."""
    return torch.randperm(num_domains, generator=generator("order", *parts)).tolist()


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
