"""The training objective of one single-domain step, as a task that returns a loss dict.

``L = CE + lambda_d * max(0, u_d - beta) + lambda_PS * max(0, 1 - |AND| / (M * beta))`` with ``u_d`` the realised
budget of domain ``d`` (mean of its binary switches, optionally MAC-weighted) and ``|AND|`` the positions on in
every domain. Gradients reach the real-valued switches through the straight-through estimator; the sharing
gradient for domain ``d`` at position ``i`` is the product of the other domains' switches there (they are
detached: each domain's switches move in its own step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bap.core.multidomain import MultiDomainNet, binarize_ste

__all__ = ["and_fraction", "budget_hinge", "lagrange_step", "sharing_loss", "switch_step_losses"]


def budget_hinge(usage: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """``lambda * max(0, usage - beta)``."""
    return lam * torch.relu(usage - beta)


def lagrange_step(lam: float, usage: float, beta: float, eta: float) -> float:
    """Projected ascent on the budget multiplier: ``max(0, lambda + eta * (usage - beta))``."""
    return max(0.0, lam + eta * (usage - beta))


def and_fraction(s_d: torch.Tensor, others: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted ``|AND| / M``: ``s_d`` carries the gradient, ``others`` is the (detached) product of the others."""
    return (s_d * others * weights).sum()


def sharing_loss(and_frac: torch.Tensor, beta: float, lambda_ps: float) -> torch.Tensor:
    """``lambda_PS * max(0, 1 - |AND| / (M * beta))``."""
    return lambda_ps * torch.relu(1.0 - and_frac / beta)


def switch_step_losses(
    model: MultiDomainNet,
    x: torch.Tensor,
    y: torch.Tensor,
    d: int,
    beta: float,
    lam: float,
    weights: torch.Tensor,
    lambda_ps: float,
) -> dict[str, torch.Tensor]:
    """Forward one batch of domain ``d`` and return ``{loss, ce, budget_loss, sharing_loss, usage, and, logits}``.

    Args:
        weights: per-switch weights summing to 1 (``1/M`` each for the switch unit).
        lambda_ps: effective sharing weight (0 disables the term: ``ba2``).
    """
    s = model.switches(d)
    logits = model.heads(model.body(model.normalize(x, d), d, s), d)
    ce = F.cross_entropy(logits, y)
    usage = (s * weights).sum()
    budget = budget_hinge(usage, beta, lam)
    with torch.no_grad():
        others = torch.ones_like(s)
        for o, t in enumerate(model.switches.logits):
            if o != d:
                others = others * binarize_ste(t.detach())
    inter = and_fraction(s, others, weights)
    sharing = sharing_loss(inter, beta, lambda_ps) if lambda_ps > 0 else torch.zeros((), device=s.device)
    loss = ce + budget + sharing
    return {
        "loss": loss,
        "ce": ce.detach(),
        "budget_loss": budget.detach(),
        "sharing_loss": sharing.detach(),
        "usage": usage.detach(),
        "and": inter.detach(),
        "logits": logits.detach(),
    }
