"""Deterministic batch order, augmentation and domain sampling.

Every batch is a pure function of ``(seed, budget, epoch, step, domain)``, so a run resumed from a checkpoint
at any step boundary replays exactly what an uninterrupted run would have done, and DDP ranks agree on the
global batch without communicating.

Domain sampling (``--domain-sampling``) decides how many batches each domain gets per epoch:

- ``uniform`` (default): every domain the same number, ``R`` rounds of one batch each in random order (a small
  domain is seen ``N_max / N_d`` times as often as the largest, per image);
- ``proportional``: each domain about as often as its size (the paper's protocol: one epoch of each dataset);
- ``sqrt``: in between, proportional to ``sqrt(N_d)``.

With a fixed number of rounds ``R`` (``--steps-per-epoch``), the ``R x D`` batches of an epoch are shared out in
proportion to ``N_d^p`` (``p`` = 0, 1, 1/2; at least one each); with one pass per epoch (``steps_per_epoch = 0``),
``proportional`` gives each domain ``ceil(N_d / B)`` batches and ``sqrt`` ``round(R sqrt(N_d / N_max))``. The
batches of all domains are interleaved evenly through the epoch (stride scheduling with seeded offsets) and cut
into rounds of ``D`` visits, the unit of checkpoints. Because a domain with fewer steps would move its budget
multiplier less per epoch, its multiplier step is scaled by ``mean_d(steps) / steps_d`` (clipped to [1/8, 8]):
see :func:`multiplier_scales`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from bap.core.seeding import derive_seed, generator

__all__ = [
    "DOMAIN_SAMPLING",
    "derive_seed",
    "domain_order",
    "domain_steps",
    "epoch_indices",
    "epoch_schedule",
    "generator",
    "multiplier_scales",
]

DOMAIN_SAMPLING = {"uniform": 0.0, "proportional": 1.0, "sqrt": 0.5}  # mode -> exponent of the domain size
ETA_SCALE_MAX = 8.0


def epoch_indices(n: int, count: int, *parts: object) -> torch.Tensor:
    """``count`` sample indices of a dataset of size ``n``: concatenated seeded permutations."""
    g = generator("epoch", *parts)
    reps = -(-count // n)
    return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:count]


def domain_order(num_domains: int, *parts: object) -> list[int]:
    """The random order in which one round visits the domains."""
    return torch.randperm(num_domains, generator=generator("order", *parts)).tolist()


def _largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    """Integers >= 1 summing to ``max(total, len(shares))``, proportional to ``shares`` (largest remainders)."""
    n = len(shares)
    total = max(total, n)
    s = sum(shares)
    exact = [total * x / s for x in shares]
    out = [max(1, math.floor(e)) for e in exact]
    for i in sorted(range(n), key=lambda i: (out[i] - exact[i], i))[: max(0, total - sum(out))]:
        out[i] += 1
    while sum(out) > total:  # the floor of 1 took more than the shares gave: take it back from the largest
        out[out.index(max(out))] -= 1
    return out


def domain_steps(sizes: Sequence[int], rounds: int, batch_size: int, mode: str, one_pass: bool) -> list[int]:
    """Batches per epoch of each domain (see the module docstring).

    Args:
        sizes: training images per domain.
        rounds: rounds per epoch of uniform sampling (``--steps-per-epoch``, or one pass over the largest domain).
        one_pass: ``steps_per_epoch = 0``: an epoch is one pass over the data rather than ``rounds x D`` batches.
    """
    p = DOMAIN_SAMPLING[mode]
    if p == 0.0:
        return [rounds] * len(sizes)
    if one_pass:
        if p == 1.0:
            return [max(1, math.ceil(n / batch_size)) for n in sizes]
        return [max(1, round(rounds * (n / max(sizes)) ** p)) for n in sizes]
    return _largest_remainder([float(n) ** p for n in sizes], rounds * len(sizes))


def multiplier_scales(steps: Sequence[int]) -> list[float]:
    """Factor of each domain's budget-multiplier step: ``mean(steps) / steps_d``, clipped to [1/8, 8].

    A domain with fewer steps per epoch then moves its multiplier about as far per epoch as the others do.
    """
    mean = sum(steps) / len(steps)
    return [min(ETA_SCALE_MAX, max(1.0 / ETA_SCALE_MAX, mean / s)) for s in steps]


def epoch_schedule(steps: Sequence[int], *parts: object) -> list[list[tuple[int, int]]]:
    """The epoch's visits ``(domain, its batch number)`` cut into rounds of ``D`` (the last may be shorter).

    Equal steps (uniform sampling) give ``steps[0]`` rounds of one batch of every domain in :func:`domain_order`;
    otherwise domain ``d``'s batches sit at times ``(k + u_d) / steps_d`` with a seeded offset ``u_d`` in [0, 1),
    so every domain is spread evenly over the epoch.
    """
    num = len(steps)
    if len(set(steps)) == 1:
        return [[(d, r) for d in domain_order(num, *parts, r)] for r in range(steps[0])]
    u = torch.rand(num, generator=generator("stride", *parts), dtype=torch.float64).tolist()
    visits = sorted(((k + u[d]) / steps[d], d, k) for d in range(num) for k in range(steps[d]))
    flat = [(d, k) for _, d, k in visits]
    return [flat[i : i + num] for i in range(0, len(flat), num)]
