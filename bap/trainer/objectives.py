"""The training objective of one single-domain step, as a task that returns a loss dict.

``L = CE + lambda_d * max(0, u_d - beta) + w_PS * L_PS`` with ``u_d`` the realised budget of domain ``d`` (mean of
its binary switches, optionally MAC-weighted) and ``L_PS`` one of three parameter-sharing losses (``--sharing-loss``):

- ``intersection`` (ICIAP 2023): ``max(0, 1 - |AND| / (M * beta))``, ``|AND|`` the positions on in every domain;
- ``union``: ``max(0, |OR| / (M * beta) - 1)``, ``|OR|`` the positions on in any domain (what cannot be pruned);
- ``jaccard``: ``1 - |AND| / |OR|``.

The journal version (dos Santos et al., Pattern Recognition 2025, arXiv 2309.11464v2) names these three losses;
its exact formulas were not available to us, so these are our forms, normalised like the ICIAP term (the target
of ``union`` is every domain using the same ``M * beta`` positions). Each is written with the multilinear forms
``|AND| = sum_i w_i prod_d s_{d,i}`` and ``|OR| = sum_i w_i (1 - prod_d (1 - s_{d,i}))``, which are exact on binary
switches. Gradients reach the real-valued switches through the straight-through estimator, and the other
domains' switches are detached (each domain's switches move in its own step), so for domain ``d`` at position
``i``:

- ``d|AND| / ds_{d,i} = prod_{o != d} s_{o,i}``: non-zero only where every other domain is on. The
  intersection loss pulls a domain onto the positions all others use and never pushes a minority position off;
  at initialisation ``|AND| = M > M * beta`` so it is exactly 0 until the budget has pulled the domains apart.
- ``d|OR| / ds_{d,i} = prod_{o != d} (1 - s_{o,i})``: non-zero only where no other domain is on. The exact union
  pushes each domain off the positions only it uses (and keeps it off the positions nobody uses), but not off a
  position one other domain also uses, so positions used by two or three domains stay (measured on the embedded
  suite at beta 0.5: 14 unique positions of 451 were left, and 247 used by two to four of the five domains).
- Jaccard combines both pushes: ``-(d|AND|) / |OR| + |AND| (d|OR|) / |OR|^2``.

So that the union and Jaccard losses push off every position that few domains use, their ``|OR|`` is relaxed
(``--union-softness q``, default 0.5): each other domain's switch counts as ``(1 - q) s_o`` in the product,
``|OR|~ = sum_i w_i (1 - (1 - s_{d,i}) prod_{o != d} (1 - (1 - q) s_{o,i}))``, whose gradient for domain ``d`` is
``q ** c_i`` with ``c_i`` the number of other domains on at ``i``: 1 where nobody else is on, 0.5 where one other
domain is, 0.25 for two and so on (``q = 0``: the exact union). It is the union domain ``d`` would see if every other
domain kept each of its switches with probability ``1 - q``. Logged ``or`` values are exact.

``w_PS`` is ``lambda_PS`` (optionally times a linear ramp over the first epochs, and ``max(1, lambda_d)`` with
``--ps-scale lambda``), or, with ``--ps-weight learned``, ``lambda_PS * exp(-rho)`` with a learned ``rho``: see
:func:`learned_weight_term`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bap.core.multidomain import MultiDomainNet, binarize_ste
from bap.trainer.config import SHARING_LOSSES

__all__ = [
    "SHARING_LOSSES",
    "and_fraction",
    "budget_hinge",
    "lagrange_step",
    "learned_weight_term",
    "or_fraction",
    "ps_loss",
    "sharing_loss",
    "switch_step_losses",
]

RHO_BOUND = math.log(10.0)  # the learned weight stays within [lambda_PS / 10, 10 lambda_PS]


def budget_hinge(usage: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    """``lambda * max(0, usage - beta)``."""
    return lam * torch.relu(usage - beta)


def lagrange_step(lam: float, usage: float, beta: float, eta: float) -> float:
    """Projected ascent on the budget multiplier: ``max(0, lambda + eta * (usage - beta))``."""
    return max(0.0, lam + eta * (usage - beta))


def and_fraction(s_d: torch.Tensor, others: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted ``|AND| / M``: ``s_d`` carries the gradient, ``others`` is the (detached) product of the others."""
    return (s_d * others * weights).sum()


def or_fraction(s_d: torch.Tensor, others_off: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted ``|OR| / M``: ``others_off`` is the (detached) product of the others' ``1 - s``."""
    return (weights * (1.0 - (1.0 - s_d) * others_off)).sum()


def sharing_loss(and_frac: torch.Tensor, beta: float, lambda_ps: float) -> torch.Tensor:
    """``lambda_PS * max(0, 1 - |AND| / (M * beta))``."""
    return lambda_ps * torch.relu(1.0 - and_frac / beta)


def ps_loss(kind: str, and_frac: torch.Tensor, or_frac: torch.Tensor, beta: float) -> torch.Tensor:
    """The unweighted sharing loss ``kind`` (see the module docstring) from weighted ``|AND|/M`` and ``|OR|/M``."""
    if kind == "intersection":
        return torch.relu(1.0 - and_frac / beta)
    if kind == "union":
        return torch.relu(or_frac / beta - 1.0)
    if kind == "jaccard":
        return 1.0 - and_frac / or_frac.clamp_min(1e-12)
    raise ValueError(f"unknown sharing loss {kind!r}")


def learned_weight_term(raw: torch.Tensor, rho: torch.Tensor, lambda_ps: float) -> torch.Tensor:
    """``lambda_PS * (exp(-rho) * L_PS + rho)``: a learned sharing weight (uncertainty-style weighting).

    Minimising over ``rho`` gives ``exp(-rho) = 1 / L_PS``: the weight grows as the sharing loss shrinks, so the
    push towards shared positions does not fade once most positions are shared. ``rho`` starts at 0 (weight
    ``lambda_PS``) and is clamped by the caller to ``[-ln 10, ln 10]``. This is our variant: the journal version's
    learnable weight is not specified in any source we could read.
    """
    return lambda_ps * (torch.exp(-rho) * raw + rho)


def switch_step_losses(
    model: MultiDomainNet,
    x: torch.Tensor,
    y: torch.Tensor,
    d: int,
    beta: float,
    lam: float,
    weights: torch.Tensor,
    lambda_ps: float,
    kind: str = "intersection",
    rho: torch.Tensor | None = None,
    softness: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Forward one batch of domain ``d`` and return ``{loss, ce, budget_loss, sharing_loss, usage, and, or, logits}``.

    Args:
        weights: per-switch weights summing to 1 (``1/M`` each for the switch unit).
        lambda_ps: effective sharing weight (0 disables the term: ``ba2``).
        kind: ``intersection``, ``union`` or ``jaccard``.
        rho: the learned log-weight (``--ps-weight learned``), or ``None`` for a fixed weight.
        softness: ``q`` of the relaxed ``|OR|`` in the union and Jaccard losses (0: exact).
    """
    s = model.switches(d)
    logits = model.heads(model.body(model.normalize(x, d), d, s), d)
    ce = F.cross_entropy(logits, y)
    usage = (s * weights).sum()
    budget = budget_hinge(usage, beta, lam)
    with torch.no_grad():
        others_on = torch.ones_like(s)
        others_off = torch.ones_like(s)
        others_soft = torch.ones_like(s)
        for o, t in enumerate(model.switches.logits):
            if o != d:
                b = binarize_ste(t.detach())
                others_on = others_on * b
                others_off = others_off * (1.0 - b)
                others_soft = others_soft * (1.0 - (1.0 - softness) * b)
    inter = and_fraction(s, others_on, weights)
    union = or_fraction(s, others_off, weights)
    zero = torch.zeros((), device=s.device)
    relaxed = union if softness == 0 else or_fraction(s, others_soft, weights)
    raw = ps_loss(kind, inter, relaxed, beta) if lambda_ps > 0 else zero
    if lambda_ps <= 0:
        sharing, weight = zero, 0.0
    elif rho is None:
        sharing, weight = lambda_ps * raw, lambda_ps
    else:
        sharing, weight = learned_weight_term(raw, rho, lambda_ps), lambda_ps * float(torch.exp(-rho.detach()))
    loss = ce + budget + sharing
    return {
        "loss": loss,
        "ce": ce.detach(),
        "budget_loss": budget.detach(),
        "sharing_loss": (weight * raw).detach(),
        "sharing_raw": raw.detach(),
        "ps_weight": torch.tensor(weight),
        "usage": usage.detach(),
        "and": inter.detach(),
        "or": union.detach(),
        "logits": logits.detach(),
    }
