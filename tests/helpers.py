"""Helpers shared by tests (importable as ``helpers``)."""

from __future__ import annotations

import torch

from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, build_multidomain
from bap.models import create_backbone


def random_multidomain(name: str = "test_cnn", size: int = 32, domains: int = 3, p_on: float = 0.6, seed: int = 0):
    """A masked multi-domain net with random BN statistics and correlated random switches."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    bb = create_backbone(name).eval()
    graph = analyze(bb, size)
    specs = [DomainSpec(f"d{i}", 3 + 2 * i, (0.4 + 0.05 * i,) * 3, (0.25,) * 3) for i in range(domains)]
    m = build_multidomain(bb, graph, specs)
    for dbn in m.domain_bns():
        for b in dbn.bns:
            b.running_mean.normal_(0, 0.2, generator=g)
            b.running_var.uniform_(0.5, 2.0, generator=g)
            b.weight.data.normal_(1, 0.2, generator=g)
            b.bias.data.normal_(0, 0.2, generator=g)
    base = torch.rand(graph.num_switches, generator=g) < p_on
    on = torch.stack([base & (torch.rand(graph.num_switches, generator=g) < 0.85) for _ in specs])
    m.switches.set_binary_(on)
    return m.eval(), bb, graph, on
