"""Helpers for tests and benchmarks: synthetic run directories without training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bap.core.io import atomic_write_json, file_sha256, save_state_dict
from bap.trainer.artifacts import RunDir, run_config_doc
from bap.trainer.config import TrainConfig

__all__ = ["random_switches_", "write_run_dir"]


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
