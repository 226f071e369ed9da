"""After training a budget: project onto the budget, re-estimate BN statistics, evaluate.

Switches keep flipping until the last step, so running BN statistics never match the final switches, and the
hinge only pushes usage down while it is above beta, so the realised budget jitters around it. Both are fixed
here (``docs/design.md`` section 1): a projection that switches off active switches of any domain above beta (the
lowest-``t`` ones, or with ``--projection sharing`` those used by the fewest domains first; ``swap`` then also
trades each domain's unique positions for positions all other domains use), then each domain's BN statistics
re-estimated with its final binary switches on shuffled training images. The re-estimation and the accuracy loop live in :mod:`bap.trainer.evaluation` (shared with ``dgprune``
and pretraining) and are re-exported here under their old names.
"""

from __future__ import annotations

import logging

import torch

from bap.core.multidomain import MultiDomainNet
from bap.trainer.evaluation import accuracy, recalibrate_bn_

__all__ = ["PROJECTIONS", "evaluate", "project_to_budget_", "recalibrate_bn_", "swap_to_shared_"]

log = logging.getLogger(__name__)


PROJECTIONS = ("lowest", "sharing", "swap")


def _off_order(tt: torch.Tensor, active: torch.Tensor, count: torch.Tensor | None) -> torch.Tensor:
    """Active positions in the order they are switched off.

    Lowest ``t`` first, or (``count`` given) the positions used by the fewest domains first and the lowest ``t``
    among equals, so positions every domain uses go last.
    """
    if count is None:
        return active[torch.argsort(tt[active])]  # today's projection, unchanged
    order = active[torch.argsort(tt[active], stable=True)]
    return order[torch.argsort(count[order], stable=True)]


@torch.no_grad()
def project_to_budget_(
    model: MultiDomainNet, beta: float, weights: torch.Tensor, mode: str = "lowest"
) -> dict[int, int]:
    """Switch off active switches of each domain above the budget until its weighted usage is ``<= beta``.

    Args:
        weights: per-switch weights summing to 1 (the budget unit).
        mode: ``lowest``: the domain's lowest-``t`` switches first (sharing ignored). ``sharing``: the positions
            used by the fewest domains first (lowest ``t`` among equals), so a domain gives up the positions only it
            uses, which frees them for pruning, and keeps the positions every domain uses (``|AND|``) unless nothing
            else is left. Domains are projected in index order and the counts are updated after each, so a
            position another domain has just left counts one domain fewer. ``swap``: ``sharing``, then
            :func:`swap_to_shared_` (the swaps are not counted in the result).

    Returns:
        ``{domain index: switches turned off}`` (only domains that were above the budget).
    """
    if mode not in PROJECTIONS:
        raise ValueError(f"unknown projection {mode!r}")
    w = weights.double().cpu()
    count = model.switches.binary().cpu().sum(0) if mode != "lowest" else None
    changed = {}
    for d, t in enumerate(model.switches.logits):
        tt = t.detach().cpu()
        on = tt > 0
        usage = float((on.double() * w).sum())
        if usage <= beta + 1e-12:
            continue
        order = _off_order(tt, torch.nonzero(on).flatten(), count)
        excess = usage - beta
        cum = torch.cumsum(w[order], 0)
        n = int(torch.searchsorted(cum, torch.tensor(excess - 1e-12, dtype=torch.float64)).item()) + 1
        off = order[:n]
        t.data[off.to(t.device)] = -t.data[off.to(t.device)].abs().clamp_min(1e-6)
        if count is not None:
            count[off] -= 1
        changed[d] = int(n)
        log.info(
            "projection (%s): domain %d %.4f -> %.4f (%d switches off)",
            mode,
            d,
            usage,
            float(((t.detach().cpu() > 0).double() * w).sum()),
            n,
        )
    if mode == "swap":
        swap_to_shared_(model, beta, weights)
    return changed


@torch.no_grad()
def swap_to_shared_(model: MultiDomainNet, beta: float, weights: torch.Tensor) -> dict[int, int]:
    """Trade each domain's unique positions for positions every other domain uses, at fixed usage.

    For domain ``d`` (in index order, counts updated after each): its positions no other domain uses, lowest ``t``
    first, are paired with the positions every other domain uses and ``d`` does not, highest ``t`` first (those it
    was closest to switching on); each pair is swapped while the domain's weighted usage stays within
    ``max(beta, its usage)``. Every swap lowers ``|OR|`` by one position and raises ``|AND|`` by one.

    Returns:
        ``{domain index: pairs swapped}`` (domains with at least one swap).
    """
    w = weights.double().cpu()
    on = model.switches.binary().cpu()
    count = on.sum(0)
    others_all = on.shape[0] - 1
    done = {}
    for d, t in enumerate(model.switches.logits):
        tt = t.detach().cpu()
        unique = torch.nonzero(on[d] & (count == 1)).flatten()
        cand = torch.nonzero(~on[d] & (count == others_all)).flatten()
        unique = unique[torch.argsort(tt[unique], stable=True)].tolist()
        cand = cand[torch.argsort(tt[cand], descending=True, stable=True)].tolist()
        usage = float((on[d].double() * w).sum())
        limit = max(beta, usage) + 1e-12
        n = 0
        for u, c in zip(unique, cand, strict=False):
            if usage - float(w[u]) + float(w[c]) > limit:
                continue
            usage += float(w[c]) - float(w[u])
            on[d, u], on[d, c] = False, True
            count[u] -= 1
            count[c] += 1
            t.data[u] = -t.data[u].abs().clamp_min(1e-6)
            t.data[c] = t.data[c].abs().clamp_min(1e-6)
            n += 1
        if n:
            done[d] = n
            log.info("swap: domain %d traded %d unique positions for shared ones", d, n)
    return done


evaluate = accuracy  # the name callers of this module used before the one accuracy loop
