"""Pretrain a backbone on the source domain and cache it, so ``bap train`` works offline with no arguments.

The cache key is the backbone, the data origin (suite version and seed, or data root), the source domain, the
epoch count and the seed; the weights are stored as safetensors with a JSON sidecar (accuracy, time).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bap.core.io import atomic_write_json, file_sha256, save_state_dict
from bap.data.suite import cache_dir
from bap.data.types import Domain, DomainSet
from bap.models.backbones import create_backbone
from bap.trainer.sampling import augment, derive_seed, epoch_indices, eval_view

__all__ = ["ensure_pretrained", "pretrain_backbone", "pretrained_path"]

log = logging.getLogger(__name__)


def pretrained_path(backbone: str, domains: DomainSet, source: str, epochs: int, seed: int) -> Path:
    """Where the pretrained weights for this configuration are cached."""
    origin = json.dumps({k: v for k, v in domains.origin.items() if k != "domains"}, sort_keys=True)
    key = derive_seed(backbone, origin, source, epochs, seed) % (1 << 40)
    return cache_dir() / "backbones" / f"{backbone}-{source}-e{epochs}-s{seed}-{key:010x}.safetensors"


class _Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int, mean, std):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


def pretrain_backbone(
    backbone: str,
    domain: Domain,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 0.05,
    device: str | torch.device = "cpu",
    callback: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train ``backbone`` + a linear head on ``domain`` (SGD, cosine schedule) and return the backbone.

    Returns:
        The trained backbone (eval mode) and ``{"val_accuracy", "seconds", "epochs", "source"}``.
    """
    torch.manual_seed(derive_seed("pretrain-init", seed))
    net = _Classifier(create_backbone(backbone), domain.num_classes, domain.mean, domain.std).to(device)
    steps_per_epoch = max(1, math.ceil(len(domain.train) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    t0 = time.time()
    if callback:
        callback.on_phase(f"pretrain {backbone} on {domain.name}", total)
    net.train()
    for e in range(epochs):
        idx = epoch_indices(len(domain.train), steps_per_epoch * batch_size, "pretrain", seed, e)
        for k in range(steps_per_epoch):
            x, y = domain.train.get_batch(idx[k * batch_size : (k + 1) * batch_size])
            x = augment(x, domain.preprocess, torch.Generator().manual_seed(derive_seed("pt-aug", seed, e, k)))
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if callback:
                callback.on_advance(1, loss=float(loss.detach()))
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(domain.val), 256):
            x, y = domain.val.get_batch(torch.arange(i, min(i + 256, len(domain.val))))
            correct += int((net(eval_view(x, domain.preprocess).to(device)).argmax(1).cpu() == y).sum())
    acc = correct / max(1, len(domain.val))
    info = {"val_accuracy": acc, "seconds": round(time.time() - t0, 1), "epochs": epochs, "source": domain.name}
    if callback:
        callback.on_phase_end(f"pretrained on {domain.name}: val acc {acc:.3f}")
    log.info("pretrained %s on %s: val acc %.4f in %.0fs", backbone, domain.name, acc, info["seconds"])
    if acc < 1.5 / domain.num_classes:
        log.warning(
            "pretraining %s on %s reached only %.3f validation accuracy (chance is %.3f): the frozen features will be "
            "poor; raise --pretrain-epochs or pass --weights",
            backbone, domain.name, acc, 1.0 / domain.num_classes,
        )  # fmt: skip
    return net.backbone.cpu().eval(), info


def ensure_pretrained(
    backbone: str, domains: DomainSet, epochs: int, seed: int = 0, device="cpu", callback: Any = None
) -> tuple[Path, dict[str, Any]]:
    """Return the cached pretrained weights for this configuration, training them first if absent."""
    source = domains.source_domain or domains.names[0]
    path = pretrained_path(backbone, domains, source, epochs, seed)
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        try:
            info = json.loads(meta_path.read_text())
            if info.get("sha256") == file_sha256(path):
                return path, info
        except (OSError, json.JSONDecodeError):
            pass
        log.warning("pretrained cache %s is inconsistent; retraining", path)
    net, info = pretrain_backbone(backbone, domains.get(source), epochs, seed, device=device, callback=callback)
    save_state_dict(path, net.state_dict(), {"backbone": backbone, "source": source})
    info["sha256"] = file_sha256(path)
    atomic_write_json(meta_path, info)
    return path, info
