"""After training a budget: project onto the budget, re-estimate BN statistics, evaluate.

Switches keep flipping until the last step, so running BN statistics never match the final switches, and the
hinge only pushes usage down while it is above beta, so the realised budget jitters around it. Both are fixed
here (``docs/design.md`` section 1): a projection that switches off the lowest-``t`` active switches of any domain
above beta, then each domain's BN statistics re-estimated with its final binary switches on shuffled training
images. The re-estimation and the accuracy loop live in :mod:`bap.trainer.evaluation` (shared with ``dgprune``
and pretraining) and are re-exported here under their old names.
"""

from __future__ import annotations

import logging

import torch

from bap.core.multidomain import MultiDomainNet
from bap.trainer.evaluation import accuracy, recalibrate_bn_

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


evaluate = accuracy  # the name callers of this module used before the one accuracy loop
