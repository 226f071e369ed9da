"""Training tasks, one per ``--method``, behind one registry; the loop in :mod:`bap.trainer.loop` drives them.

A task owns its model and optimizers, runs one single-domain step (forward + backward, returning a dict of
numbers to log), and finalises a budget into a result dict. Checkpoints store ``task.state_dict()``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bap.core.graph import CouplingGraph
from bap.core.metrics import s_score, structure_metrics
from bap.core.multidomain import DomainSpec, MultiDomainNet, build_multidomain
from bap.core.registry import Registry
from bap.core.seeding import derive_seed, generator
from bap.data.types import DomainSet
from bap.trainer.config import TrainConfig
from bap.trainer.distributed import DistContext
from bap.trainer.evaluation import accuracy, recalibrate_bn_
from bap.trainer.finalize import project_to_budget_
from bap.trainer.intervals import bootstrap_intervals
from bap.trainer.objectives import RHO_BOUND, lagrange_step, switch_step_losses

__all__ = [
    "TASKS",
    "BapTask",
    "FeatureTask",
    "FinetuneTask",
    "SwitchTask",
    "TaskContext",
    "batch_for",
    "steps_per_epoch",
]

log = logging.getLogger(__name__)

PS_WEIGHT_LR = 1e-2  # Adam step of the learned sharing log-weight: it can cross its range in a few hundred steps


@dataclass
class TaskContext:
    """What every task needs: config, data, frozen backbone and its coupling graph, device, DDP context."""

    cfg: TrainConfig
    domains: DomainSet
    backbone: nn.Module
    graph: CouplingGraph
    device: torch.device
    dist: DistContext
    reference_errors: dict[str, float] | None

    @property
    def specs(self) -> list[DomainSpec]:
        """Domain specs in index order."""
        return [DomainSpec(d.name, d.num_classes, d.mean, d.std) for d in self.domains]

    def budget_weights(self) -> torch.Tensor:
        """Per-switch weights summing to 1 in the configured budget unit."""
        if self.cfg.budget_unit == "macs":
            w = self.graph.mac_weights()
        else:
            w = torch.ones(self.graph.num_switches, dtype=torch.float64)
        return (w / w.sum()).float()


def _accuracy_block(ctx: TaskContext, model: nn.Module, split: str) -> dict[str, float]:
    return {d.name: accuracy(model, d, i, split, device=ctx.device) for i, d in enumerate(ctx.domains)}


def _with_scores(ctx: TaskContext, res: dict[str, Any]) -> dict[str, Any]:
    acc = res["accuracy"]
    res["mean_accuracy"] = sum(acc.values()) / len(acc)
    s = s_score(acc, ctx.reference_errors)
    res["s_score"] = s
    res["s_o"] = s / res["rel_macs_mean"] if s is not None and res.get("rel_macs_mean") else None
    res["s_p"] = s / res["rel_params"] if s is not None and res.get("rel_params") else None
    res["intervals"] = bootstrap_intervals(
        acc,
        {d.name: len(d.test) for d in ctx.domains},
        ctx.reference_errors,
        res.get("rel_macs_mean"),
        res.get("rel_params"),
        seed=ctx.cfg.seed,
    )
    return res


def _bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Copies of every BN running statistic (mean, var, batch count) of ``model``, in module order."""
    return [b.detach().clone() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in m.buffers(recurse=False)]  # fmt: skip


@torch.no_grad()
def _restore_bn_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    """Put back what :func:`_bn_buffers` copied."""
    bufs = [
        b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers(recurse=False)
    ]
    for b, v in zip(bufs, saved, strict=True):
        b.copy_(v)


class _Task:
    """Defaults shared by the tasks: no per-step bookkeeping, nothing extra to log, plain validation accuracy.

    The class attributes are the method's traits; code outside the task asks them instead of comparing method
    names (``TASKS.get(cfg.method).shared_network``).

    Attributes:
        summary: what the method trains, in a few words (messages name it).
        shared_network: one network serves every domain (no per-domain switches or BN to export).
        trains_budgets: one model per budget; otherwise the method trains once, at budget 1.0.
        per_domain_switches: learns a switch vector per domain (``bap``, ``ba2``).
        uses_sharing_loss: uses the parameter-sharing loss (``lambda_ps``).
        exportable: its result is a multi-domain network ``bap export`` can build.
        budget_unit: the budget unit the method always uses (``None``: the configured one).
        any_domain_sampling: trains under every ``--domain-sampling``; ``False``: needs one batch of every domain
            per round (``uniform``).
    """

    summary: ClassVar[str] = ""
    shared_network: ClassVar[bool] = False
    trains_budgets: ClassVar[bool] = False
    per_domain_switches: ClassVar[bool] = False
    uses_sharing_loss: ClassVar[bool] = False
    exportable: ClassVar[bool] = True
    budget_unit: ClassVar[str | None] = None
    any_domain_sampling: ClassVar[bool] = True

    ctx: TaskContext
    model: nn.Module

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (also when a run resumes mid-epoch)."""

    def on_schedule(self, steps: list[int]) -> None:
        """Called once before training with the number of batches per epoch of each domain."""

    def after_step(self, d: int, stats: dict[str, float]) -> None:
        """Called after each optimizer step of domain ``d``."""

    def epoch_stats(self) -> dict[str, Any]:
        """Extra numbers for the epoch's metrics line."""
        return {}

    def quick_validate(self) -> dict[str, float]:
        """Validation accuracy per domain at the end of an epoch."""
        return _accuracy_block(self.ctx, self.model, "val")


class SwitchTask(_Task):
    """``ba2``: per-domain switches (Adam, no decay), BN and heads (SGD momentum 0.9), no sharing loss."""

    summary = "per-domain switches, no sharing loss"
    trains_budgets = True
    per_domain_switches = True

    def __init__(self, ctx: TaskContext, beta: float):
        cfg = ctx.cfg
        self.ctx, self.beta = ctx, beta
        torch.manual_seed(derive_seed("init", cfg.seed, beta))
        self.model: MultiDomainNet = build_multidomain(ctx.backbone, ctx.graph, ctx.specs).to(ctx.device)
        ctx.dist.broadcast_([p.data for p in self.model.parameters()])
        self.weights = ctx.budget_weights().to(ctx.device)
        self.lambdas = [0.0] * len(ctx.domains)
        self.eta = cfg.lambda_step(beta)
        self.eta_scale = [1.0] * len(ctx.domains)  # per-domain multiplier-step factor (domain sampling)
        heads = [p for h in self.model.heads.heads for p in h.parameters()]
        bns = [p for d in range(self.model.num_domains) for p in self.model.bn_parameters(d)]
        self.opt_switch = torch.optim.Adam(self.model.switches.parameters(), lr=cfg.lr_switch, weight_decay=0.0)
        self.opt_sgd = torch.optim.SGD(
            [
                {
                    "params": heads,
                    "lr": cfg.head_lr(ctx.graph.feature_dim),
                    "weight_decay": cfg.weight_decay,
                    "base_lr": cfg.head_lr(ctx.graph.feature_dim),
                },
                {"params": bns, "lr": cfg.lr_bn, "weight_decay": 0.0, "base_lr": cfg.lr_bn},
            ],
            momentum=0.9,
        )
        for g in self.opt_switch.param_groups:
            g["base_lr"] = cfg.lr_switch
        self.epoch = 0
        self.rho: nn.Parameter | None = None  # learned log-weight of the sharing loss (--ps-weight learned)
        if cfg.ps_weight == "learned" and cfg.effective_lambda_ps > 0:
            self.rho = nn.Parameter(torch.zeros((), device=ctx.device))
            self.opt_switch.add_param_group({"params": [self.rho], "lr": PS_WEIGHT_LR, "base_lr": PS_WEIGHT_LR})
        self.optimizers = [self.opt_switch, self.opt_sgd]

    def trainable(self) -> list[nn.Parameter]:
        """Parameters whose gradients are averaged across ranks."""
        own = [self.rho] if self.rho is not None else []
        return [p for p in self.model.parameters() if p.requires_grad] + own

    def on_epoch_start(self, epoch: int) -> None:
        """Remember the epoch (the sharing ramp depends on it)."""
        self.epoch = epoch

    def on_schedule(self, steps: list[int]) -> None:
        """Scale each domain's multiplier step to its share of the epoch's steps (1 each under uniform sampling)."""
        from bap.trainer.sampling import multiplier_scales

        self.eta_scale = multiplier_scales(steps)

    def ps_ramp(self) -> float:
        """Factor of the sharing weight this epoch: ``min(1, epoch / N)`` over the first N = ``ps_ramp_epochs``."""
        n = self.ctx.cfg.ps_ramp_epochs
        return 1.0 if n <= 0 else min(1.0, self.epoch / n)

    def lambda_ps(self, d: int) -> float:
        """Effective sharing weight for domain ``d``'s step (before a learned factor)."""
        lam = self.ctx.cfg.effective_lambda_ps * self.ps_ramp()
        if self.ctx.cfg.ps_scale == "lambda":
            lam *= max(1.0, self.lambdas[d])
        return lam

    def step(self, d: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Forward + backward of one batch of domain ``d``; the multiplier is updated by the loop's callback."""
        self.model.train()
        cfg = self.ctx.cfg
        out = switch_step_losses(self.model, x, y, d, self.beta, self.lambdas[d], self.weights, self.lambda_ps(d),
                                 cfg.sharing_loss, self.rho, cfg.union_softness)  # fmt: skip
        out["loss"].backward()
        return {k: float(v.detach()) for k, v in out.items() if k != "logits"}

    def after_step(self, d: int, stats: dict[str, float]) -> None:
        """Projected ascent of domain ``d``'s budget multiplier; the learned sharing weight stays in its bounds."""
        self.lambdas[d] = lagrange_step(self.lambdas[d], stats["usage"], self.beta, self.eta * self.eta_scale[d])
        if self.rho is not None:
            with torch.no_grad():
                self.rho.clamp_(-RHO_BOUND, RHO_BOUND)

    def epoch_stats(self) -> dict[str, Any]:
        """Switch usage and sharing for the metrics line."""
        from bap.core.metrics import budget_usage, sharing_fractions

        on = self.model.switches.binary().cpu()
        usage = budget_usage(on, self.weights.cpu().double())
        a, o = sharing_fractions(on)
        names = self.ctx.domains.names
        out = {
            "lambda": dict(zip(names, self.lambdas, strict=True)),
            "usage": {n: float(u) for n, u in zip(names, usage, strict=True)},
            "and_fraction": a,
            "or_fraction": o,
        }
        if self.uses_sharing_loss:
            out["ps_ramp"] = self.ps_ramp()
            out["ps_weight"] = self.sharing_weight()
        return out

    def sharing_weight(self) -> float:
        """The sharing weight now (``lambda_PS`` x ramp x learned factor; before ``--ps-scale``)."""
        w = self.ctx.cfg.effective_lambda_ps * self.ps_ramp()
        return w * math.exp(-float(self.rho.detach())) if self.rho is not None else w

    def quick_validate(self) -> dict[str, float]:
        """Validation accuracy after a short BN re-estimation (256 images per domain) on a copy of the statistics.

        The training running statistics are restored afterwards, so ``accuracy_before_bn_reestimation`` in the
        result really is measured with the statistics training left (no re-estimation before it).
        """
        saved = _bn_buffers(self.model)
        recalibrate_bn_(
            self.model,
            list(self.ctx.domains),
            256,
            seed=derive_seed("quick", self.ctx.cfg.seed),
            device=self.ctx.device,
        )
        acc = _accuracy_block(self.ctx, self.model, "val")
        _restore_bn_buffers(self.model, saved)
        return acc

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        st = {
            "model": self.model.trainable_state(),
            "opt_switch": self.opt_switch.state_dict(),
            "opt_sgd": self.opt_sgd.state_dict(),
            "lambdas": list(self.lambdas),
        }
        if self.rho is not None:
            st["rho"] = self.rho.detach().cpu().clone()
        return st

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(st["model"], strict=False)
        self.opt_switch.load_state_dict(st["opt_switch"])
        self.opt_sgd.load_state_dict(st["opt_sgd"])
        self.lambdas = [float(v) for v in st["lambdas"]]
        if self.rho is not None and "rho" in st:
            with torch.no_grad():
                self.rho.copy_(st["rho"])

    def finalize(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Project, re-estimate BN, evaluate, measure the compact structure."""
        ctx, m = self.ctx, self.model
        m.eval()
        running_acc = _accuracy_block(ctx, m, "test")  # before re-estimation: shows why it is needed
        projected = project_to_budget_(m, self.beta, self.weights.cpu(), ctx.cfg.projection)
        recalibrate_bn_(
            m,
            list(ctx.domains),
            ctx.cfg.bn_recal_images,
            seed=derive_seed("bn", ctx.cfg.seed, self.beta),
            device=ctx.device,
            shard=(ctx.dist.rank, ctx.dist.world),
        )
        ctx.dist.average_tensors_([b for bn in m.domain_bns() for x in bn.bns for b in (x.running_mean, x.running_var)])
        m.eval()
        res: dict[str, Any] = {
            "accuracy": _accuracy_block(ctx, m, "test"),
            "val_accuracy": _accuracy_block(ctx, m, "val"),
            "accuracy_before_bn_reestimation": running_acc,
            "projected_switches": {ctx.domains.names[d]: n for d, n in projected.items()},
            "projection": ctx.cfg.projection,
            "lambda_final": dict(zip(ctx.domains.names, self.lambdas, strict=True)),
        }
        if self.uses_sharing_loss:
            res["sharing"] = {"loss": ctx.cfg.sharing_loss, "weight": ctx.cfg.ps_weight,
                              "ramp_epochs": ctx.cfg.ps_ramp_epochs, "union_softness": ctx.cfg.union_softness,
                              "final_weight": self.sharing_weight()}  # fmt: skip
        m_cpu = copy.deepcopy(m).cpu()
        res.update(
            structure_metrics(
                m_cpu, ctx.graph.mac_weights() if ctx.cfg.budget_unit == "macs" else None, round_to=ctx.cfg.round_to
            )
        )
        return _with_scores(ctx, res), m.trainable_state()


class BapTask(SwitchTask):
    """``bap``: :class:`SwitchTask` with the parameter-sharing loss."""

    summary = "per-domain switches with the sharing loss"
    uses_sharing_loss = True


class FeatureTask(SwitchTask):
    """``feature``: the frozen backbone (its own BN statistics, all switches on) with a trained head per domain."""

    summary = "frozen backbone, heads only"
    shared_network = True
    trains_budgets = False
    per_domain_switches = False

    def __init__(self, ctx: TaskContext, beta: float):
        super().__init__(ctx, 1.0)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for h in self.model.heads.heads:
            h.requires_grad_(True)
        heads = [p for h in self.model.heads.heads for p in h.parameters()]
        self.opt_sgd = torch.optim.SGD(
            [
                {
                    "params": heads,
                    "lr": ctx.cfg.head_lr(ctx.graph.feature_dim),
                    "weight_decay": ctx.cfg.weight_decay,
                    "base_lr": ctx.cfg.head_lr(ctx.graph.feature_dim),
                }
            ],
            momentum=0.9,
        )
        self.optimizers = [self.opt_sgd]

    def step(self, d: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Head-only step on frozen features."""
        self.model.eval()
        with torch.no_grad():
            f = self.model.features(x, d)
        ce = F.cross_entropy(self.model.heads(f, d), y)
        ce.backward()
        return {"loss": float(ce.detach()), "ce": float(ce.detach())}

    after_step = _Task.after_step  # no multiplier
    epoch_stats = _Task.epoch_stats
    quick_validate = _Task.quick_validate  # BN is the backbone's: nothing to re-estimate

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        return {"model": self.model.trainable_state(), "opt_sgd": self.opt_sgd.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(st["model"], strict=False)
        self.opt_sgd.load_state_dict(st["opt_sgd"])

    def finalize(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Evaluate; the structure is the backbone's (one BN set, no switches)."""
        ctx, m = self.ctx, self.model
        m.eval()
        res: dict[str, Any] = {
            "accuracy": _accuracy_block(ctx, m, "test"),
            "val_accuracy": _accuracy_block(ctx, m, "val"),
        }
        res.update(structure_metrics(copy.deepcopy(m).cpu(), shared_bn=True))
        return _with_scores(ctx, res), m.trainable_state()


class _Finetuned(nn.Module):
    def __init__(self, backbone: nn.Module, spec: DomainSpec):
        super().__init__()
        self.backbone = copy.deepcopy(backbone).requires_grad_(True)
        self.head = nn.Linear(backbone.num_features, spec.num_classes)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, d: int | None = None) -> torch.Tensor:
        return self.head(self.backbone((x - self.mean) / self.std))


class _FinetuneBank(nn.Module):
    """D full networks; ``forward(x, d)`` runs network ``d`` (so :func:`accuracy` works unchanged)."""

    def __init__(self, nets: list[_Finetuned]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, d: int) -> torch.Tensor:
        return self.nets[d](x)


class FinetuneTask(_Task):
    """``finetune``: every domain fine-tunes its own copy of the whole backbone (the S-score reference)."""

    summary = "one full network per domain"
    exportable = False

    def __init__(self, ctx: TaskContext, beta: float):
        cfg = ctx.cfg
        self.ctx = ctx
        torch.manual_seed(derive_seed("init", cfg.seed, "finetune"))
        self.model = _FinetuneBank([_Finetuned(ctx.backbone, s) for s in ctx.specs]).to(ctx.device)
        ctx.dist.broadcast_([p.data for p in self.model.parameters()])
        groups = []
        for net in self.model.nets:
            groups.append(
                {"params": list(net.backbone.parameters()), "lr": cfg.lr_finetune, "base_lr": cfg.lr_finetune}
            )
            lr = cfg.head_lr(ctx.graph.feature_dim)
            groups.append({"params": list(net.head.parameters()), "lr": lr, "base_lr": lr})
        self.opt = torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
        self.optimizers = [self.opt]

    def trainable(self) -> list[nn.Parameter]:
        """All parameters."""
        return list(self.model.parameters())

    def step(self, d: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Full fine-tuning step of network ``d``."""
        self.model.train()
        ce = F.cross_entropy(self.model(x, d), y)
        ce.backward()
        return {"loss": float(ce.detach()), "ce": float(ce.detach())}

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])

    def finalize(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Evaluate; D full backbones: params D x, MACs 1 x per domain."""
        ctx = self.ctx
        self.model.eval()
        d = len(ctx.domains)
        total = ctx.graph.total_macs
        res: dict[str, Any] = {
            "accuracy": _accuracy_block(ctx, self.model, "test"),
            "val_accuracy": _accuracy_block(ctx, self.model, "val"),
            "active_fraction": dict.fromkeys(ctx.domains.names, 1.0),
            "and_fraction": 1.0,
            "or_fraction": 1.0,
            "prunable_fraction": 0.0,
            "macs": {**dict.fromkeys(ctx.domains.names, total), "model": total, "backbone": total},
            "rel_macs": dict.fromkeys(ctx.domains.names, 1.0),
            "rel_macs_mean": 1.0,
            "rel_macs_executed": 1.0,
            "rel_params": float(d),
            "params": {"note": "one full backbone per domain"},
        }
        return _with_scores(ctx, res), self.model.state_dict()


TASKS: Registry[type[_Task]] = Registry("method", "--method")
TASKS.register("bap", BapTask)
TASKS.register("ba2", SwitchTask)
TASKS.register("feature", FeatureTask)
TASKS.register("finetune", FinetuneTask)


def steps_per_epoch(cfg: TrainConfig, domains: DomainSet) -> int:
    """Rounds per epoch (``0`` in the config means one pass over the largest domain)."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return max(1, math.ceil(max(len(d.train) for d in domains) / cfg.batch_size))


def batch_for(ctx: TaskContext, d: int, idx: torch.Tensor, aug_parts: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of a global batch of domain ``d``, augmented."""
    from bap.data.transforms import augment

    dom = ctx.domains[d]
    idx = idx[ctx.dist.rank :: ctx.dist.world]
    x, y = dom.train.get_batch(idx)
    x = augment(x, dom.preprocess, generator("aug", *aug_parts))
    return x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)


# dgprune registers itself into TASKS; importing it here makes the registry complete for anyone who imports it
# (dgprune imports this module, so the import must come after everything it uses is defined)
from bap.trainer import dgprune as _dgprune  # noqa: E402, F401
