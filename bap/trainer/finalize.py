"""After training a budget: project onto the budget, re-estimate BN statistics, evaluate.

Switches keep flipping until the last step, so running BN statistics never match the final switches, and the
hinge only pushes usage down while it is above beta, so the realised budget jitters around it. Both are fixed
here (``DESIGN.md`` section 1): a projection that switches off the lowest-``t`` active switches of any domain
above beta, then each domain's BN statistics re-estimated with its final binary switches on shuffled training
images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from bap.core.multidomain import MultiDomainNet
from bap.core.seeding import generator
from bap.data.transforms import eval_view
from bap.data.types import Domain

__all__ = ["evaluate", "project_to_budget_", "recalibrate_bn_"]

log = logging.getLogger(__name__)


@torch.no_grad()
def project_to_budget_(model: MultiDomainNet, beta: float, weights: torch.Tensor) -> dict[int, int]:
    """Switch off the lowest-``t`` active switches of each domain until its weighted usage is ``<= beta``.

    Args:
        weights: per-switch weights summing to 1 (the budget unit).

    Returns:
        ``{domain index: switches turned off}`` (only domains that were above the budget).
    """
    w = weights.double().cpu()
    changed = {}
    for d, t in enumerate(model.switches.logits):
        tt = t.detach().cpu()
        on = tt > 0
        usage = float((on.double() * w).sum())
        if usage <= beta + 1e-12:
            continue
        active = torch.nonzero(on).flatten()
        order = active[torch.argsort(tt[active])]
        excess = usage - beta
        cum = torch.cumsum(w[order], 0)
        n = int(torch.searchsorted(cum, torch.tensor(excess - 1e-12, dtype=torch.float64)).item()) + 1
        off = order[:n]
        t.data[off.to(t.device)] = -t.data[off.to(t.device)].abs().clamp_min(1e-6)
        changed[d] = int(n)
        log.info(
            "projection: domain %d %.4f -> %.4f (%d switches off)",
            d,
            usage,
            float(((t.detach().cpu() > 0).double() * w).sum()),
            n,
        )
    return changed


@torch.no_grad()
def recalibrate_bn_(
    model: MultiDomainNet,
    domains: Sequence[Domain],
    max_images: int,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
) -> None:
    """Re-estimate every domain's BN running statistics with its final binary switches.

    Uses a cumulative average (``momentum=None``) over shuffled, un-augmented training images, so the statistics
    are those of the data the network will see at test time. ``shard = (rank, world)`` splits the images
    across DDP ranks (the caller averages the statistics).
    """
    was_training = model.training
    model.train()
    bns = model.domain_bns()
    rank, world = shard
    for d, dom in enumerate(domains):
        saved = []
        for m in bns:
            b = m.bns[d]
            saved.append(b.momentum)
            b.reset_running_stats()
            b.momentum = None
        n = min(len(dom.train), max_images)
        idx = torch.randperm(len(dom.train), generator=generator("bn", seed, d))[:n]
        idx = idx[rank::world]
        for i in range(0, len(idx), batch_size):
            x, _ = dom.train.get_batch(idx[i : i + batch_size])
            model(eval_view(x, dom.preprocess).to(device), d)
        for m, mom in zip(bns, saved, strict=True):
            m.bns[d].momentum = mom
    model.train(was_training)


@torch.no_grad()
def evaluate(
    model: MultiDomainNet, domain: Domain, d: int, split: str = "test", batch_size: int = 256, device="cpu"
) -> float:
    """Top-1 accuracy of domain ``d`` on ``split`` (eval mode, single-domain batches)."""
    was_training = model.training
    model.eval()
    data = domain.split(split)
    correct = 0
    for i in range(0, len(data), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        x, y = data.get_batch(idx)
        pred = model(eval_view(x, domain.preprocess).to(device), d).argmax(1).cpu()
        correct += int((pred == y).sum())
    model.train(was_training)
    return correct / max(1, len(data))
