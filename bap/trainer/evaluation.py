"""The trainer's one accuracy loop and one BN re-estimation.

Every trainer-side measurement (per-budget results, epoch validation, pretraining, held-out domains) goes through
:func:`accuracy`, and every re-estimation of BN running statistics (per-domain after ``bap``/``ba2``, shared after
``dgprune``, the short one before an epoch's validation) through :func:`recalibrate_bn_`. The runtime's accuracy
(:mod:`bap.runtime.evaluate`) measures exported models without torch and is separate on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bap.core.seeding import generator
from bap.data.transforms import eval_view
from bap.data.types import Domain

__all__ = ["accuracy", "recalibrate_bn_"]


@torch.no_grad()
def accuracy(
    model: nn.Module,
    domain: Domain,
    d: int,
    split: str = "test",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> float:
    """Top-1 accuracy of ``model(x, d)`` on ``domain``'s ``split`` (eval mode; the model's mode is restored).

    Args:
        model: called as ``model(images, d)``; images are the un-augmented eval view, on ``device``.
        domain: the data (its preprocessing gives the eval view).
        d: the row of the model that serves ``domain`` (its index, or 0 for a shared network).
        split: ``train``, ``val`` or ``test``.
        batch_size: images per forward pass.
        device: where the images go.
    """
    was_training = model.training
    model.train(False)
    data = domain.split(split)
    correct = 0
    for i in range(0, len(data), batch_size):
        x, y = data.get_batch(torch.arange(i, min(i + batch_size, len(data))))
        pred = model(eval_view(x, domain.preprocess).to(device), d).argmax(1).cpu()
        correct += int((pred == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))


@torch.no_grad()
def recalibrate_bn_(
    model: nn.Module,
    domains: Sequence[Domain],
    max_images: int,
    batch_size: int = 128,
    seed: int | tuple = 0,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    rows: Sequence[int] | None = None,
) -> None:
    """Re-estimate BN running statistics with the final binary switches on un-augmented training images.

    Uses a cumulative average (``momentum=None``) over shuffled training images, so the statistics are those of
    the data the network sees at test time. Domain ``d`` feeds its images through BN row ``rows[d]`` (default
    ``d``: per-domain statistics); domains mapped to the same row pool into one average (``rows = [0] * D``: the
    shared statistics of a ``dgprune`` network).

    Args:
        model: a :class:`~bap.core.multidomain.MultiDomainNet`.
        domains: the training domains, in index order.
        max_images: training images per domain.
        batch_size: images per forward pass.
        seed: seed part(s) of the image draw; domain ``d`` draws with ``generator("bn", *seed, d)``.
        device: where the images go.
        shard: ``(rank, world)``: this rank's share of the images (the caller averages the statistics).
        rows: BN row of each domain.
    """
    rows = list(range(len(domains))) if rows is None else list(rows)
    parts = seed if isinstance(seed, tuple) else (seed,)
    rank, world = shard
    was_training = model.training
    model.train()
    bns = model.domain_bns()
    for row in dict.fromkeys(rows):  # each row once, in first-use order
        saved = []
        for m in bns:
            b = m.bns[row]
            saved.append(b.momentum)
            b.reset_running_stats()
            b.momentum = None
        for d in (d for d, r in enumerate(rows) if r == row):
            dom = domains[d]
            n = min(len(dom.train), max_images)
            idx = torch.randperm(len(dom.train), generator=generator("bn", *parts, d))[:n][rank::world]
            for i in range(0, len(idx), batch_size):
                x, _ = dom.train.get_batch(idx[i : i + batch_size])
                model.features(eval_view(x, dom.preprocess).to(device), row)  # BN statistics only: no head
        for m, mom in zip(bns, saved, strict=True):
            m.bns[row].momentum = mom
    model.train(was_training)
