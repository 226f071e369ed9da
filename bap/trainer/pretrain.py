"""Pretrain a backbone on the source data and cache it, so ``bap train`` works offline with no arguments.

The source is one domain (ImageNet-style, e.g. ``imagenet12`` of the Decathlon) or the union of every domain's
training split (the embedded suite's default): a shared backbone with one head per domain, trained on mixed
batches drawn in proportion to the domains' sizes, each sample normalised with its own domain's statistics.
Only training splits are used; validation and test images are never seen.

The cache key is the backbone, the data origin (suite version and seed, or data root), the source, the epoch
count and the seed; weights are stored as safetensors with a JSON sidecar (accuracy, time).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bap.core.env import cache_dir
from bap.core.io import atomic_write_json, file_sha256, save_state_dict
from bap.core.seeding import derive_seed, generator
from bap.data.transforms import augment
from bap.data.types import Domain, DomainSet
from bap.models.backbones import create_backbone
from bap.trainer.evaluation import accuracy

__all__ = ["UNION", "ensure_pretrained", "pretrain_backbone", "pretrained_path", "source_domains"]

log = logging.getLogger(__name__)

UNION = "union"


def source_domains(domains: DomainSet) -> list[Domain]:
    """The domains the backbone is pretrained on (all of them for the ``union`` source)."""
    src = domains.source_domain or domains.names[0]
    return list(domains) if src == UNION else [domains.get(src)]


def pretrained_path(backbone: str, domains: DomainSet, epochs: int, seed: int) -> Path:
    """Where the pretrained weights for this configuration are cached."""
    origin = json.dumps({k: v for k, v in domains.origin.items() if k != "domains"}, sort_keys=True)
    names = [d.name for d in source_domains(domains)]
    key = derive_seed(backbone, origin, names, epochs, seed) % (1 << 40)
    tag = domains.source_domain if domains.source_domain == UNION else names[0]
    return cache_dir() / "backbones" / f"{backbone}-{tag}-e{epochs}-s{seed}-{key:010x}.safetensors"


class _MultiHead(nn.Module):
    def __init__(self, backbone: nn.Module, doms: Sequence[Domain]):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList([nn.Linear(backbone.num_features, d.num_classes) for d in doms])
        self.register_buffer("mean", torch.tensor([d.mean for d in doms]))
        self.register_buffer("std", torch.tensor([d.std for d in doms]))

    def features(self, x: torch.Tensor, dom: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean[dom][:, :, None, None]) / self.std[dom][:, :, None, None])

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        """Logits of domain ``d`` for a single-domain batch (the ``model(x, d)`` form :func:`accuracy` calls)."""
        return self.heads[d](self.features(x, torch.full((len(x),), d, device=x.device)))


def _mixed_batch(
    doms: Sequence[Domain], chunk: torch.Tensor, gen_parts: tuple, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, torch.Tensor]]]:
    """Augmented images, per-sample domain ids and ``(domain, labels)`` of the present domains for ``chunk``.

    ``chunk`` holds ``(domain, index)`` rows; images of domain ``i`` are augmented with ``generator(*gen_parts, i)``.
    """
    xs, ds, labels = [], [], []
    for i, dom in enumerate(doms):
        idx = chunk[chunk[:, 0] == i, 1]
        if len(idx):
            x, y = dom.train.get_batch(idx)
            xs.append(augment(x, dom.preprocess, generator(*gen_parts, i)))
            ds.append(torch.full((len(idx),), i))
            labels.append((i, y.to(device)))
    return torch.cat(xs).to(device), torch.cat(ds).to(device), labels


def _mixed_loss(net: _MultiHead, x: torch.Tensor, dom_ids: torch.Tensor, labels) -> torch.Tensor:
    """Mean cross-entropy of a mixed batch, each sample scored by its own domain's head."""
    f = net.features(x, dom_ids)
    ce = [F.cross_entropy(net.heads[i](f[dom_ids == i]), y, reduction="sum") for i, y in labels]
    return torch.stack(ce).sum() / len(x)


def _warn_if_poor(backbone: str, doms: Sequence[Domain], acc: float) -> None:
    chance = sum(1.0 / d.num_classes for d in doms) / len(doms)
    if acc < 1.5 * chance:
        log.warning(
            "pretraining %s reached only %.3f mean validation accuracy (chance %.3f): the frozen features will be "
            "poor; raise --pretrain-epochs or pass --weights",
            backbone, acc, chance,
        )  # fmt: skip


def pretrain_backbone(
    backbone: str,
    doms: Sequence[Domain],
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 0.05,
    device: str | torch.device = "cpu",
    callback: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``backbone`` with one linear head per domain (SGD, one-cycle schedule) and return the backbone.

    Returns:
        The trained backbone (eval mode) and ``{"val_accuracy" (mean over domains), "per_domain", "seconds",
        "epochs", "source"}``.
    """
    torch.manual_seed(derive_seed("pretrain-init", seed))
    net = _MultiHead(create_backbone(backbone), doms).to(device)
    sizes = [len(d.train) for d in doms]
    total = sum(sizes)
    # (domain, index) pairs of the union; drawn in proportion to the domains' sizes
    pairs = torch.cat([torch.stack([torch.full((n,), i), torch.arange(n)], 1) for i, n in enumerate(sizes)])
    steps_per_epoch = max(1, math.ceil(total / batch_size))
    steps = max(1, epochs * steps_per_epoch)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    t0 = time.time()
    name = "+".join(d.name for d in doms) if len(doms) <= 2 else f"the union of {len(doms)} domains"
    if callback:
        callback.on_phase(f"pretrain {backbone} on {name}", steps)
    net.train()
    for e in range(epochs):
        order = pairs[torch.randperm(total, generator=generator("pretrain", seed, e))]
        for k in range(steps_per_epoch):
            chunk = order[k * batch_size : (k + 1) * batch_size]
            loss = _mixed_loss(net, *_mixed_batch(doms, chunk, ("pt-aug", seed, e, k), device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if callback:
                callback.on_advance(1, loss=float(loss.detach()))
    net.eval()
    per = {dom.name: accuracy(net, dom, i, "val", device=device) for i, dom in enumerate(doms)}
    acc = sum(per.values()) / len(per)
    info = {"val_accuracy": acc, "per_domain": per, "seconds": round(time.time() - t0, 1), "epochs": epochs,
            "source": [d.name for d in doms]}  # fmt: skip
    if callback:
        callback.on_phase_end(f"pretrained {backbone} on {name}: mean val accuracy {acc:.3f}")
    log.info("pretrained %s on %s: val accuracy %s in %.0fs", backbone, name, per, info["seconds"])
    _warn_if_poor(backbone, doms, acc)
    return net.backbone.cpu().eval(), info


def ensure_pretrained(
    backbone: str, domains: DomainSet, epochs: int, seed: int = 0, device="cpu", callback: Any = None
) -> tuple[Path, dict[str, Any]]:
    """Return the cached pretrained weights for this configuration, training them first if absent."""
    path = pretrained_path(backbone, domains, epochs, seed)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            info = json.loads(meta_path.read_text())
            if info.get("sha256") == file_sha256(path):
                return path, info
        except (OSError, json.JSONDecodeError):
            pass
        log.warning("pretrained cache %s is inconsistent; retraining", path)
    net, info = pretrain_backbone(backbone, source_domains(domains), epochs, seed, device=device, callback=callback)
    save_state_dict(path, net.state_dict(), {"backbone": backbone, "source": ",".join(info["source"])})
    info["sha256"] = file_sha256(path)
    atomic_write_json(meta_path, info)
    return path, info
