"""Helpers for tests and benchmarks: synthetic models and run directories without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bap.core.io import atomic_write_json, file_sha256, save_state_dict
from bap.trainer.artifacts import RunDir, run_config_doc
from bap.trainer.config import TrainConfig

__all__ = [
    "CPU_MAX_PARAMS",
    "SMALL_INPUT",
    "backbone_params",
    "cpu_sized_backbones",
    "random_multidomain",
    "random_switches_",
    "write_run_dir",
]

CPU_MAX_PARAMS = 8_000_000  # the CIFAR/Decathlon-sized zoo; torchvision's ImageNet ResNets start at 11M
SMALL_INPUT = 32  # every CPU-sized backbone traces at 32 px, which keeps a forward pass in milliseconds


def backbone_params(name: str) -> int:
    """Parameter count of a registered backbone, built on the meta device (no memory, no initialisation cost)."""
    from bap.models import BACKBONES

    with torch.device("meta"):
        net = BACKBONES.get(name).factory()
    return sum(p.numel() for p in net.parameters())


def cpu_sized_backbones(max_params: int = CPU_MAX_PARAMS) -> list[str]:
    """Registered backbones small enough for the CPU test suite (by parameter count), in registration order."""
    from bap.models import list_backbones

    return [s.name for s in list_backbones() if backbone_params(s.name) <= max_params]


def random_multidomain(
    name: str = "test_cnn", size: int = SMALL_INPUT, domains: int = 3, p_on: float = 0.6, seed: int = 0
):
    """A masked multi-domain net with random BN statistics and correlated random switches.

    Returns:
        ``(model in eval mode, backbone, coupling graph, bool switches [D, M])``.
    """
    from bap.core.graph import analyze
    from bap.core.multidomain import DomainSpec, build_multidomain
    from bap.models import create_backbone

    torch.manual_seed(seed)
    bb = create_backbone(name).eval()
    graph = analyze(bb, size)
    specs = [DomainSpec(f"d{i}", 3 + 2 * i, (0.4 + 0.05 * i,) * 3, (0.25,) * 3) for i in range(domains)]
    m = build_multidomain(bb, graph, specs)
    on = random_switches_(m, p_on=p_on, seed=seed)
    return m.eval(), bb, graph, on


def random_switches_(model, p_on: float = 0.6, seed: int = 0, shared: float = 0.85) -> torch.Tensor:
    """Correlated random binary switches (so the union is smaller than the backbone) and random BN statistics."""
    g = torch.Generator().manual_seed(seed)
    for dbn in model.domain_bns():
        for b in dbn.bns:
            b.running_mean.normal_(0, 0.2, generator=g)
            b.running_var.uniform_(0.5, 2.0, generator=g)
            b.weight.data.normal_(1, 0.2, generator=g)
            b.bias.data.normal_(0, 0.2, generator=g)
    m = model.graph.num_switches
    base = torch.rand(m, generator=g) < p_on
    on = torch.stack([base & (torch.rand(m, generator=g) < shared) for _ in range(model.num_domains)])
    model.switches.set_binary_(on)
    return on


def write_run_dir(
    path: str | Path,
    model,
    backbone: torch.nn.Module,
    domains,
    budget: float = 0.5,
    method: str = "bap",
    result: dict[str, Any] | None = None,
) -> Path:
    """Write a run directory for ``model`` (a :class:`MultiDomainNet` over ``domains``) as ``bap train`` would.

    The result is loadable by :func:`bap.trainer.load_run`, so the exporter and runtime can be exercised on any
    backbone and switch pattern without training.
    """
    from bap.core.graph import analyze

    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(out=str(path), method=method, budgets=(budget,), backbone=_backbone_name(backbone))
    save_state_dict(run.backbone_path, backbone.state_dict())
    doc = run_config_doc(cfg, domains, backbone, analyze(backbone, model.graph.input_size), "synthetic")
    doc["backbone"]["sha256"] = file_sha256(run.backbone_path)
    run.write_config(doc)
    save_state_dict(run.state_path(budget), model.trainable_state())
    atomic_write_json(run.result_path(budget), result or {"method": method, "budget": budget, "accuracy": {}})
    return run.path


def _backbone_name(backbone: torch.nn.Module) -> str:
    name = getattr(backbone, "bap_name", None)
    if not name:
        raise ValueError("pass a backbone created by bap.models.create_backbone (it records its registry name)")
    return name
