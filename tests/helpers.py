"""Helpers shared by tests (importable as ``helpers``)."""

from __future__ import annotations

import torch

from bap.core.graph import analyze
from bap.core.multidomain import DomainSpec, build_multidomain
from bap.models import create_backbone
from bap.testing import random_switches_


def random_multidomain(name: str = "test_cnn", size: int = 32, domains: int = 3, p_on: float = 0.6, seed: int = 0):
    """A masked multi-domain net with random BN statistics and correlated random switches."""
    torch.manual_seed(seed)
    bb = create_backbone(name).eval()
    graph = analyze(bb, size)
    specs = [DomainSpec(f"d{i}", 3 + 2 * i, (0.4 + 0.05 * i,) * 3, (0.25,) * 3) for i in range(domains)]
    m = build_multidomain(bb, graph, specs)
    on = random_switches_(m, p_on=p_on, seed=seed)
    return m.eval(), bb, graph, on
