"""Budget, sharing, compute and size metrics, measured on the compact structure the exporter ships.

Accounting (``docs/design.md`` section 1): MACs are conv multiply-accumulates counted by thop on the actual
(pruned) modules; heads are excluded. Parameters exclude classifiers, count float weights at 32 bits and
switches at 1 bit, and include every domain's BN (as its folded affine table, 2 floats per channel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bap.core.compact import DomainAffine, build_compact, build_specialised, net_macs, plan_channels
from bap.core.multidomain import MultiDomainNet

__all__ = ["backbone_size", "budget_usage", "param_bits", "s_score", "sharing_fractions", "structure_metrics"]


def budget_usage(on: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Realised budget per domain: the (optionally MAC-weighted) mean of its binary switches, ``[D]``."""
    on = on.double()
    if weights is None:
        return on.mean(-1)
    w = weights.double()
    return (on * w).sum(-1) / w.sum()


def sharing_fractions(on: torch.Tensor) -> tuple[float, float]:
    """``(|AND|/M, |OR|/M)`` over domains; ``1 - |OR|/M`` is the prunable fraction of switch positions."""
    on = on.bool()
    return float(on.all(0).double().mean()), float(on.any(0).double().mean())


def s_score(accuracy: Mapping[str, float], reference_errors: Mapping[str, float] | None) -> float | None:
    """Decathlon S-score ``sum_d 1000 max(0, Emax_d - E_d)^2 / Emax_d^2`` with ``Emax_d = 2 E_base_d``.

    Returns ``None`` when a domain has no reference error (the score is undefined for it).
    """
    if not reference_errors or any(d not in reference_errors for d in accuracy):
        return None
    total = 0.0
    for d, acc in accuracy.items():
        emax = 2.0 * float(reference_errors[d])
        if emax <= 0:
            return None
        err = 1.0 - float(acc)
        total += 1000.0 * max(0.0, emax - err) ** 2 / emax**2
    return total


def _conv_params(module: nn.Module) -> int:
    return sum(p.numel() for m in module.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))


def param_bits(
    model: MultiDomainNet,
    compact_body: nn.Module,
    switch_positions: int,
    shared_bn: bool = False,
    num_domains: int | None = None,
) -> dict:
    """Bits of the compact multi-domain model and of the single-domain backbone.

    Args:
        model: the trained masked model (source of the backbone's sizes).
        compact_body: the compact body (pruned convs + per-domain affine tables).
        switch_positions: kept switch positions per domain (each stored as 1 bit per domain).
        shared_bn: one network shared by all domains (``feature``, ``dgprune``): no per-domain switch bits.
        num_domains: domains the compact model serves (default: all of ``model``'s).
    """
    d = num_domains or model.num_domains
    conv = _conv_params(compact_body)
    tables = [m for m in compact_body.modules() if isinstance(m, DomainAffine)]
    # tables shared by all domains are stored once (one row): count what the model stores
    bn = sum(t.A.numel() + t.B.numel() for t in tables)
    # a BN folded into its conv (shared by every domain) still counts 2 floats per channel, as in the backbone
    # (the bias is already in the conv's parameters; the scale is added here)
    bn += sum(m.out_channels for m in compact_body.modules() if getattr(m, "bap_folded_bn", False))
    bits = 32 * (conv + bn) + (0 if shared_bn else d * switch_positions)
    size = backbone_size(model)
    return {"model_params": conv + bn, "model_bits": bits, **size, "rel_params": bits / size["backbone_bits"]}


def backbone_size(model: MultiDomainNet) -> dict[str, int]:
    """Parameters and bits of the single-domain backbone (convs, their biases, one BN: 2 floats per channel)."""
    conv = sum(c.in_channels * c.out_channels * c.kernel[0] * c.kernel[1] for c in model.graph.convs)
    conv += sum(m.bias.numel() for m in model.body.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
    bn = sum(b.channels * 2 for b in model.graph.bns)
    return {"backbone_params": conv + bn, "backbone_bn_params": bn, "backbone_bits": 32 * (conv + bn)}


@torch.no_grad()
def structure_metrics(
    model: MultiDomainNet,
    mac_weights: torch.Tensor | None = None,
    round_to: int = 1,
    shared_bn: bool = False,
    domains: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Every structural metric of a trained model at its current binary switches.

    Args:
        model: trained :class:`MultiDomainNet` (switches final, BN re-estimated).
        mac_weights: per-switch weights when the budget unit is MACs (``None``: plain switch count).
        round_to: channel rounding of the compact model.
        shared_bn: one BN set for all domains (``feature`` baseline).
        domains: subset of domain indices to measure MACs for (default all).

    Returns:
        ``active_fraction`` (per domain, in the budget unit), ``and_fraction``, ``or_fraction``, ``macs``
        (per domain: the domain's own channels; ``model``: executed by the compact multi-domain model;
        ``backbone``), ``rel_macs``, ``rel_macs_mean``, ``rel_macs_executed``, ``params``, ``rel_params`` (the compact
        model), ``rel_params_unpruned`` (BA2's accounting: full backbone plus per-domain BN and switch bits).
    """
    names = [d.name for d in model.domains]
    on = model.switches.binary()
    prio = model.switches.priority()
    usage = budget_usage(on, mac_weights)
    and_f, or_f = sharing_fractions(on)
    plan = plan_channels(model.graph, on, names, round_to=round_to, priority=prio)
    compact = build_compact(model, plan)
    size = model.graph.input_size
    backbone_macs = model.graph.total_macs
    executed = net_macs(compact, size)
    idx = list(domains) if domains is not None else list(range(len(names)))
    macs: dict[str, int] = {}
    for i in idx:
        spec = build_specialised(model, i, round_to=1)
        macs[names[i]] = net_macs(spec, size)
    positions = sum(len(lp.in_keep) for lp in plan.layers.values())
    params = param_bits(model, compact.body, positions, shared_bn=shared_bn)
    # BA2's own accounting, without pruning: the whole backbone + every domain's BN tables and M switch bits
    d = model.num_domains
    unpruned = params["backbone_bits"] + (
        0 if shared_bn else (d - 1) * 32 * params["backbone_bn_params"] + d * model.graph.num_switches
    )
    rel = {k: v / backbone_macs for k, v in macs.items()}
    return {
        "active_fraction": {n: float(u) for n, u in zip(names, usage, strict=True)},
        "and_fraction": and_f,
        "or_fraction": or_f,
        "prunable_fraction": 1.0 - or_f,
        "macs": {**macs, "model": executed, "backbone": backbone_macs},
        "rel_macs": rel,
        "rel_macs_mean": sum(rel.values()) / max(1, len(rel)),
        "rel_macs_executed": executed / backbone_macs,
        "params": params,
        "rel_params": params["rel_params"],
        "rel_params_unpruned": unpruned / params["backbone_bits"],
        "kept_switch_positions": positions,
        "num_switches": model.graph.num_switches,
    }
