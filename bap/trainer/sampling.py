"""Deterministic batch order and augmentation.

Every batch is a pure function of ``(seed, budget, epoch, step, domain)``, so a run resumed from a checkpoint
at any step boundary replays exactly what an uninterrupted run would have done, and DDP ranks agree on the
global batch without communicating.
"""

from __future__ import annotations

import torch

from bap.core.seeding import derive_seed, generator

__all__ = ["derive_seed", "domain_order", "epoch_indices", "generator"]


def epoch_indices(n: int, count: int, *parts: object) -> torch.Tensor:
    """``count`` sample indices of a dataset of size ``n``: concatenated seeded permutations."""
    g = generator("epoch", *parts)
    reps = -(-count // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:count]


def domain_order(num_domains: int, *parts: object) -> list[int]:
    """The random order in which one round visits the domains."""
    return torch.randperm(num_domains, generator=generator("order", *parts)).tolist()
