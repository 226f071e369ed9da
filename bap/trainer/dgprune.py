"""``--method dgprune``: one shared network, filters pruned by a domain-generalised importance.

The question differs from ``bap``'s: not "serve these D domains from one smaller model" but "make one smaller
shared model that still works on a domain it never saw" (Cai et al., *Toward domain generalized pruning by
scoring out-of-distribution importance*, 2022). The network (conv weights, one BN set, normalisation, heads) is
fine-tuned on all training domains (one step per round, on a batch mixing every domain); at the start of each
epoch the least important channels are removed until the MACs reach the epoch's target, and the last epoch
only fine-tunes.

Importance of switch position ``k`` (an input channel of a conv; for a ``chain`` conv that is also its
producer's filter, see :mod:`bap.core.graph`) in domain ``d`` is the first-order estimate of the loss increase
from zeroing it, ``dL_dk = -dL_d/dg_k`` at gate ``g = 1``. The criterion is ``mean_d dL_dk + w var_d dL_dk / s``
with ``s`` the mean ``|mean_d dL_dk|`` over the positions still on, so ``w`` (``--dg-variance-weight``) is
unitless; ``w = 0`` is the plain Taylor criterion (the ablation).

The result is stored as a :class:`~bap.core.multidomain.MultiDomainNet` whose domains all carry the same switches,
BN, normalisation (the mean of the training domains') and, when the label spaces agree, the same head, plus the
fine-tuned conv weights. ``bap export`` therefore handles it unchanged; tables equal in every domain collapse to
one row, so the exported model has no per-domain gathers except the head's.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bap.core.graph import CouplingGraph
from bap.core.metrics import structure_metrics
from bap.core.multidomain import DomainSpec, MultiDomainNet, build_multidomain
from bap.core.seeding import derive_seed, generator
from bap.data.transforms import eval_view
from bap.data.types import Domain
from bap.trainer.evaluation import accuracy, recalibrate_bn_
from bap.trainer.tasks import TASKS, _accuracy_block, _Task, _with_scores

__all__ = [
    "DGPruneTask",
    "dg_importance",
    "heldout_accuracy",
    "prune_to_macs",
    "shared_head",
    "taylor_loss_increase",
]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def shared_head(domains: Sequence[Domain], mode: str) -> bool:
    """Whether the domains share one head: ``shared``, ``per-domain``, or ``auto`` (shared iff the class lists agree)."""
    if mode == "auto":
        return len({tuple(d.classes) for d in domains}) == 1
    return mode == "shared"


def taylor_loss_increase(
    model: MultiDomainNet,
    gate: torch.Tensor,
    batches: Sequence[Batch],
    head: int,
    row: int = 0,
    with_loss: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, float]:
    """First-order estimate of the loss increase from zeroing each switch position, ``[M]``.

    ``L(g - g_k e_k) - L(g) ~ -g_k dL/dg_k``: positions already off (``g_k = 0``) get 0. The loss is the mean
    cross-entropy over ``batches`` in eval mode (running BN statistics, so the estimate is deterministic).

    Args:
        model: the masked network; ``row`` selects its normalisation / BN / switches row, ``head`` its classifier.
        gate: float ``[M]`` gates (the current binary mask).
        batches: ``(images, labels)`` pairs, images already normalised to the eval view.
        with_loss: also return the loss itself (the exact risk-variance change needs it).
    """
    was = model.training
    model.eval()
    g = gate.detach().float().clone().requires_grad_(True)
    total = torch.zeros_like(g)
    loss_sum = 0.0
    for x, y in batches:
        logits = model.heads(model.body(model.normalize(x, row), row, g), head)
        loss = F.cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss, g)
        total += grad
        loss_sum += float(loss.detach())
    model.train(was)
    n = max(1, len(batches))
    delta = -(total / n) * gate.detach().float()
    return (delta, loss_sum / n) if with_loss else delta


def dg_importance(
    delta: torch.Tensor,
    variance_weight: float,
    active: torch.Tensor | None = None,
    losses: torch.Tensor | None = None,
) -> torch.Tensor:
    """Domain-generalised importance ``mean_d + w * dVar / s`` of per-domain loss increases ``delta [D, M]``.

    ``dVar`` is the change in the across-domain variance of the risk when the position is removed. With the
    per-domain losses ``losses [D]`` it is exact, ``Var_d(L_d + delta_d) - Var_d(L_d) = 2 Cov_d(L_d, delta_d) +
    Var_d(delta_d)`` (``--dg-variance exact``); without them only ``Var_d(delta_d)`` (the default). ``s`` is the mean
    absolute mean over the ``active`` positions (all if ``None``); it makes ``w`` unitless. A position that hurts one
    domain much more than another outranks one with the same mean and no spread; with the exact change, also one
    that hurts the domains that already do worst.
    """
    mean = delta.mean(0)
    var = delta.var(0, unbiased=False) if delta.shape[0] > 1 else torch.zeros_like(mean)
    if losses is not None and delta.shape[0] > 1:
        centred = (losses.to(delta.dtype) - losses.to(delta.dtype).mean()).unsqueeze(1)
        var = var + 2.0 * (centred * (delta - mean)).mean(0)
    sel = mean if active is None else mean[active.bool()]
    scale = float(sel.abs().mean()) if sel.numel() else 1.0
    return mean + variance_weight * var / max(scale, 1e-12)


def prune_to_macs(
    graph: CouplingGraph, on: torch.Tensor, scores: torch.Tensor, target_macs: float, prunable: torch.Tensor
) -> torch.Tensor:
    """Switch off the lowest-scoring prunable positions until the MACs of ``on`` are ``<= target_macs``.

    MACs are :meth:`CouplingGraph.masked_macs` (a chain position also removes its producer's filter), updated
    incrementally; a conv's last input is never removed. Returns the new bool ``[M]`` mask (``on`` is not modified).
    """
    on = on.bool().clone()
    owner = torch.empty(graph.num_switches, dtype=torch.long)
    for i, c in enumerate(graph.convs):
        owner[c.offset : c.offset + c.in_channels] = i
    convs = graph.convs
    kept = [int(on[c.offset : c.offset + c.in_channels].sum()) for c in convs]
    index = {c.name: i for i, c in enumerate(convs)}
    consumer = [index[x.name] if (x := graph.chain_consumer(c.name)) else None for c in convs]
    producer = [index[c.producer] if c.kind == "chain" and c.producer else None for c in convs]

    def unit(i: int) -> int:  # MACs per (input channel x output channel) of conv i
        c = convs[i]
        return c.kernel[0] * c.kernel[1] * c.out_hw[0] * c.out_hw[1] // c.groups

    def width(i: int) -> int:
        return max(1, kept[consumer[i]]) if consumer[i] is not None else convs[i].out_channels

    total = sum(graph.masked_macs(on).values())
    candidates = torch.nonzero(on & prunable.bool()).flatten()
    for k in candidates[torch.argsort(scores[candidates], stable=True)].tolist():
        if total <= target_macs:
            break
        i = int(owner[k])
        if kept[i] <= 1:
            continue
        saved = width(i) * unit(i)
        if producer[i] is not None:
            saved += max(1, kept[producer[i]]) * unit(producer[i])  # its filter k goes too
        on[k] = False
        kept[i] -= 1
        total -= saved
    return on


def _shared_specs(specs: Sequence[DomainSpec]) -> list[DomainSpec]:
    """Every domain gets the mean of the training domains' normalisation (one domain-agnostic network)."""
    mean = tuple(float(sum(s.mean[c] for s in specs) / len(specs)) for c in range(3))
    std = tuple(float(sum(s.std[c] for s in specs) / len(specs)) for c in range(3))
    return [DomainSpec(s.name, s.num_classes, mean, std) for s in specs]


def _eval_batches(dom: Domain, n: int, batch_size: int, seed: int, device) -> list[Batch]:
    idx = torch.randperm(len(dom.train), generator=generator("dg-importance", seed))[: n * batch_size]
    out = []
    for i in range(0, len(idx), batch_size):
        x, y = dom.train.get_batch(idx[i : i + batch_size])
        out.append((eval_view(x, dom.preprocess).to(device), y.to(device)))
    return out


def heldout_accuracy(model: MultiDomainNet, domain: Domain, split: str = "test", batch_size: int = 256) -> float:
    """Accuracy of a ``dgprune`` model (shared head) on a domain it was not trained on (row 0 serves it)."""
    return accuracy(model, domain, 0, split, batch_size)


@TASKS.register("dgprune")
class DGPruneTask(_Task):
    """``dgprune``: fine-tune one shared network and prune it iteratively to the MAC budget (see module docstring)."""

    summary = "one shared network pruned by a domain-generalised importance"
    shared_network = True
    trains_budgets = True
    budget_unit = "macs"  # budgets are always fractions of the backbone's MACs
    any_domain_sampling = False  # one fine-tuning step per round mixes one batch of every domain

    def __init__(self, ctx, beta: float):
        cfg = ctx.cfg
        self.ctx, self.beta = ctx, beta
        torch.manual_seed(derive_seed("init", cfg.seed, "dgprune", beta))
        self.model: MultiDomainNet = build_multidomain(ctx.backbone, ctx.graph, _shared_specs(ctx.specs)).to(ctx.device)
        convs = [m for m in self.model.body.modules() if isinstance(m, nn.Conv2d)]
        for m in convs:
            m.requires_grad_(True)
        self.model.switches.requires_grad_(False)
        self.model.switches.set_binary_(torch.ones(len(ctx.domains), ctx.graph.num_switches, dtype=torch.bool))
        ctx.dist.broadcast_([p.data for p in self.model.parameters()])
        self.shared = shared_head(list(ctx.domains), cfg.dg_head)
        self.prunable = torch.tensor([c.kind != "input" for c in ctx.graph.convs for _ in range(c.in_channels)])
        self.total_macs = ctx.graph.total_macs
        self.schedule: list[dict[str, Any]] = []
        self._round: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # this round's batches (see step)
        heads = list(self.model.heads.heads)
        if self.shared:  # one head trains; the others are copies of it (see _sync_)
            for h in heads[1:]:
                h.requires_grad_(False)
            heads = heads[:1]
        for d in range(1, self.model.num_domains):  # one BN set (row 0) trains; the others are copies
            for p in self.model.bn_parameters(d):
                p.requires_grad_(False)
        lr_head = cfg.head_lr(ctx.graph.feature_dim)
        self.opt = torch.optim.SGD(
            [
                {"params": [p for m in convs for p in m.parameters()], "lr": cfg.lr_finetune,
                 "base_lr": cfg.lr_finetune, "weight_decay": cfg.weight_decay},
                {"params": self.model.bn_parameters(0), "lr": cfg.lr_finetune, "base_lr": cfg.lr_finetune,
                 "weight_decay": 0.0},
                {"params": [p for h in heads for p in h.parameters()], "lr": lr_head, "base_lr": lr_head,
                 "weight_decay": cfg.weight_decay},
            ],
            momentum=0.9,
        )  # fmt: skip
        self.optimizers = [self.opt]

    # ---------------------------------------------------------------------------------------------- helpers
    @property
    def mask(self) -> torch.Tensor:
        """The shared bool ``[M]`` mask."""
        return self.model.switches.binary()[0].cpu()

    def _head(self, d: int) -> int:
        return 0 if self.shared else d

    def rel_macs(self) -> float:
        """MACs of the current mask relative to the backbone."""
        return sum(self.ctx.graph.masked_macs(self.mask).values()) / self.total_macs

    def target(self, epoch: int) -> float:
        """Relative MAC target after pruning at the start of ``epoch``.

        1.0 at the first epoch (nothing pruned: the heads, trained from scratch, learn before any channel is scored
        through them), then linear to beta by the epoch before the last; the last epoch only fine-tunes.
        """
        if epoch == 0:
            return 1.0
        n = max(1, self.ctx.cfg.epochs - 2)
        return 1.0 - (1.0 - self.beta) * min(1.0, epoch / n)

    @torch.no_grad()
    def _sync_(self) -> None:
        """Copy row 0 (BN, head when shared) to every domain so that ``model(x, d)`` is the shared network."""
        for m in self.model.domain_bns():
            for b in m.bns[1:]:
                b.load_state_dict(m.bns[0].state_dict())
        if self.shared:
            for h in self.model.heads.heads[1:]:
                h.load_state_dict(self.model.heads.heads[0].state_dict())

    def prune_(self, target: float) -> None:
        """Score every position on the training domains and prune the shared mask to ``target`` x backbone MACs."""
        ctx, cfg = self.ctx, self.ctx.cfg
        before = self.rel_macs()
        if before <= target + 1e-12:
            return
        mask = self.mask
        gate = mask.float().to(ctx.device)
        per_domain = [
            taylor_loss_increase(
                self.model,
                gate,
                _eval_batches(dom, cfg.dg_importance_batches, cfg.batch_size, derive_seed(cfg.seed, d), ctx.device),
                self._head(d),
                with_loss=True,
            )
            for d, dom in enumerate(ctx.domains)
        ]
        delta = torch.stack([dl.cpu() for dl, _ in per_domain])
        if cfg.dg_score == "squared":  # Molchanov et al. 2019: the squared first-order term
            delta = delta**2
        losses = torch.tensor([loss for _, loss in per_domain]) if cfg.dg_variance == "exact" else None
        scores = dg_importance(delta, cfg.dg_variance_weight, active=mask & self.prunable, losses=losses)
        new = prune_to_macs(ctx.graph, mask, scores, target * self.total_macs, self.prunable)
        self.model.switches.set_binary_(new.unsqueeze(0).expand(self.model.num_domains, -1))
        after = self.rel_macs()
        if after > target + 1e-9:
            log.warning("dgprune: MAC target %.3f is below what %s can reach (%.3f)", target, cfg.backbone, after)
        self.schedule.append(
            {"target": round(target, 4), "rel_macs": round(after, 4), "removed": int((mask & ~new).sum())}
        )
        log.info(
            "dgprune: MACs %.3f -> %.3f (target %.3f), %d positions off",
            before,
            after,
            target,
            int((mask & ~new).sum()),
        )

    # ---------------------------------------------------------------------------------------------- task API
    def trainable(self) -> list[nn.Parameter]:
        """Parameters whose gradients are averaged across ranks."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def on_epoch_start(self, epoch: int) -> None:
        """Prune to this epoch's target (idempotent, so a resumed epoch does not prune twice)."""
        self.prune_(self.target(epoch))

    def step(self, d: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Buffer one batch per domain; on the round's last, one fine-tuning step on the mixed batch.

        Mixed batches let the shared BN see the mixture of domains in training, as its running statistics do
        at test time; single-domain batches would teach the network per-domain batch statistics that no
        shared statistics match (measured: in-domain accuracy swinging from 18% to 73% between budgets).
        Steps that only buffer leave every gradient ``None``, so the optimizer skips them.
        """
        self._round.append((d, x, y))
        if len(self._round) < self.model.num_domains:
            return {}
        batches, self._round = self._round, []
        m = self.model
        m.train()
        gate = m.switches.binary()[0].float()
        f = m.body(m.normalize(torch.cat([b[1] for b in batches]), 0), 0, gate)
        losses, start = [], 0
        for dd, _, yb in batches:
            losses.append(F.cross_entropy(m.heads(f[start : start + len(yb)], self._head(dd)), yb))
            start += len(yb)
        loss = torch.stack(losses).mean()
        loss.backward()
        return {"loss": float(loss.detach()), "ce": float(loss.detach())}

    def epoch_stats(self) -> dict[str, Any]:
        """Current MACs of the shared mask."""
        rel = self.rel_macs()
        return {"rel_macs": rel, "usage": dict.fromkeys(self.ctx.domains.names, rel)}

    def quick_validate(self) -> dict[str, float]:
        """Validation accuracy of the shared network on every training domain."""
        self._sync_()
        return _accuracy_block(self.ctx, self.model, "val")

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (the whole network: conv weights are trained here)."""
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "schedule": list(self.schedule)}

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        self.schedule = list(st.get("schedule", []))

    def finalize(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Prune to the budget if still above it, re-estimate the shared BN, evaluate, measure."""
        ctx, cfg = self.ctx, self.ctx.cfg
        self.prune_(self.beta)
        # one shared BN set: every domain's images pool into row 0's statistics
        recalibrate_bn_(
            self.model,
            list(ctx.domains),
            cfg.bn_recal_images,
            seed=(cfg.seed, self.beta),
            device=ctx.device,
            rows=[0] * len(ctx.domains),
        )
        ctx.dist.average_tensors_(
            [b for bn in self.model.domain_bns() for b in (bn.bns[0].running_mean, bn.bns[0].running_var)]
        )
        self._sync_()
        m = self.model.eval()
        res: dict[str, Any] = {
            "accuracy": _accuracy_block(ctx, m, "test"),
            "val_accuracy": _accuracy_block(ctx, m, "val"),
            "criterion": {
                "name": "taylor+variance" if cfg.dg_variance_weight > 0 else "taylor",
                "score": cfg.dg_score,
                "variance_change": cfg.dg_variance,
                "variance_weight": cfg.dg_variance_weight,
                "importance_batches": cfg.dg_importance_batches,
                "head": "shared" if self.shared else "per-domain",
                "normalisation": "mean of the training domains'",
            },
            "prune_schedule": self.schedule,
        }
        res.update(structure_metrics(copy.deepcopy(m).cpu(), round_to=cfg.round_to, shared_bn=True))
        res["active_fraction"] = dict(res["rel_macs"])  # the budget unit of dgprune is real MACs
        return _with_scores(ctx, res), m.state_dict()
