"""The masked multi-domain network: a frozen shared backbone with per-domain switches, BN and heads.

``MultiDomainNet(image, domain)`` computes, for domain ``d``, the backbone in which every conv ``l`` sees
``x * s[d, l]`` (``s = 1[t > 0]``, straight-through gradient), every BN is domain ``d``'s own, and the
classifier is domain ``d``'s head. ``domain`` is a Python ``int`` for single-domain batches (training) or an
int64 tensor ``[B]`` for per-sample domains (evaluation; BN then uses running statistics).

The network is built by rewriting the backbone's ``torch.fx`` graph (:func:`build_multidomain`), so any
traceable backbone works without special cases.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from bap.core.graph import CouplingGraph

__all__ = [
    "DomainBatchNorm",
    "DomainNormalize",
    "DomainSpec",
    "MultiDomainNet",
    "MultiHead",
    "SwitchBank",
    "apply_gate",
    "binarize_ste",
    "build_multidomain",
]

SWITCH_INIT = 1e-3


@dataclass(frozen=True)
class DomainSpec:
    """What the network needs to know about a domain."""

    name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def binarize_ste(t: torch.Tensor) -> torch.Tensor:
    """``1[t > 0]`` in the forward pass, identity gradient in the backward pass (straight-through)."""
    hard = (t > 0).to(t.dtype)
    # t - t.detach() is exactly 0 in the forward pass and carries d/dt = 1 backward
    return hard + (t - t.detach())


@fx.wrap
def apply_gate(x: torch.Tensor, s: torch.Tensor, offset: int, n: int) -> torch.Tensor:
    """Multiply ``x [B, n, H, W]`` channel-wise by switches ``s[..., offset:offset+n]`` (``[M]`` or ``[B, M]``)."""
    g = s[..., offset : offset + n]
    if g.dim() == 1:
        return x * g.view(1, n, 1, 1)
    return x * g.view(g.shape[0], n, 1, 1)


class SwitchBank(nn.Module):
    """Real-valued switches, one ``Parameter [M]`` per domain.

    One parameter per domain (not one ``[D, M]`` tensor) so that Adam only moves the switches of the domain
    whose step it is: with a shared tensor, stale momentum keeps moving the other domains.
    """

    def __init__(self, num_domains: int, num_switches: int, init: float = SWITCH_INIT):
        super().__init__()
        self.logits = nn.ParameterList([nn.Parameter(torch.full((num_switches,), init)) for _ in range(num_domains)])

    @property
    def num_switches(self) -> int:
        """M."""
        return int(self.logits[0].numel())

    def forward(self, domain: int | torch.Tensor) -> torch.Tensor:
        """Binary switches ``[M]`` (int domain) or ``[B, M]`` (per-sample domains), straight-through."""
        if isinstance(domain, int):
            return binarize_ste(self.logits[domain])
        table = torch.stack([binarize_ste(t) for t in self.logits])
        return table[domain]

    def binary(self) -> torch.Tensor:
        """Bool ``[D, M]``: which switches are on."""
        return torch.stack([t.detach() > 0 for t in self.logits])

    def priority(self) -> torch.Tensor:
        """Float ``[D, M]``: the switch logits, detached; how strongly each domain wants each channel.

        The exporter uses it to choose which extra channels to keep when it rounds a layer's width up.
        """
        return torch.stack([t.detach() for t in self.logits])

    @torch.no_grad()
    def set_binary_(self, on: torch.Tensor, magnitude: float = SWITCH_INIT) -> None:
        """Set every switch to ``+magnitude`` (on) or ``-magnitude`` (off) from a bool ``[D, M]``."""
        for t, row in zip(self.logits, on, strict=True):
            t.copy_(torch.where(row, torch.full_like(t, magnitude), torch.full_like(t, -magnitude)))


class DomainNormalize(nn.Module):
    """Per-domain ``(x - mean[d]) / std[d]`` on images in [0, 1]."""

    def __init__(self, means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(means, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(stds, dtype=torch.float32))

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Normalise."""
        m, s = self.mean[domain], self.std[domain]
        if m.dim() == 1:
            return (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
        return (x - m[:, :, None, None]) / s[:, :, None, None]


class DomainBatchNorm(nn.Module):
    """One ``BatchNorm2d`` per domain, initialised from the backbone's BN.

    With a tensor of per-sample domains (evaluation only) it applies each sample's running statistics, i.e. the
    eval-mode BN of its domain written as a gathered affine map.
    """

    def __init__(self, bn: nn.BatchNorm2d, num_domains: int):
        super().__init__()
        self.bns = nn.ModuleList([copy.deepcopy(bn) for _ in range(num_domains)])
        for b in self.bns:
            b.weight.requires_grad_(True)
            b.bias.requires_grad_(True)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode tables ``A, B`` of shape ``[D, C]`` with ``bn(x) = x * A[d] + B[d]``."""
        scale = [b.weight / torch.sqrt(b.running_var + b.eps) for b in self.bns]
        a = torch.stack(scale)
        b_ = torch.stack([b.bias - b.running_mean * k for b, k in zip(self.bns, scale, strict=True)])
        return a, b_

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Apply domain ``domain``'s BN."""
        if isinstance(domain, int):
            return self.bns[domain](x)
        if self.training:
            raise RuntimeError("per-sample domains need eval mode: batches are single-domain during training")
        a, b = self.affine()
        return x * a[domain][:, :, None, None] + b[domain][:, :, None, None]


class MultiHead(nn.Module):
    """One linear classifier per domain; with per-sample domains, logits are padded to ``K_max`` with ``-inf``."""

    def __init__(self, in_features: int, num_classes: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(in_features, k) for k in num_classes])
        self.num_classes = list(num_classes)

    @property
    def k_max(self) -> int:
        """Largest class count."""
        return max(self.num_classes)

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked ``W [D, K_max, F]`` (zeros beyond ``K_d``) and ``b [D, K_max]`` (``-inf`` beyond ``K_d``)."""
        d, k, f = len(self.heads), self.k_max, self.heads[0].in_features
        w = torch.zeros(d, k, f, dtype=self.heads[0].weight.dtype, device=self.heads[0].weight.device)
        b = torch.full((d, k), float("-inf"), dtype=w.dtype, device=w.device)
        for i, h in enumerate(self.heads):
            w[i, : h.out_features] = h.weight
            b[i, : h.out_features] = h.bias
        return w, b

    def forward(self, f: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K_d]`` (int domain) or ``[B, K_max]`` padded with ``-inf`` (per-sample domains)."""
        if isinstance(domain, int):
            return self.heads[domain](f)
        w, b = self.padded()
        return torch.einsum("bf,bkf->bk", f, w[domain]) + b[domain]


class MultiDomainNet(nn.Module):
    """Frozen shared backbone + per-domain switches, BN, normalisation and heads.

    Attributes:
        graph: the :class:`~bap.core.graph.CouplingGraph` of the backbone (switch layout, coupling kinds).
        domains: domain specs in index order.
    """

    def __init__(self, body: fx.GraphModule, graph: CouplingGraph, domains: Sequence[DomainSpec]):
        super().__init__()
        self.graph = graph
        self.domains = list(domains)
        self.normalize = DomainNormalize([d.mean for d in domains], [d.std for d in domains])
        self.switches = SwitchBank(len(domains), graph.num_switches)
        self.body = body
        self.heads = MultiHead(graph.feature_dim, [d.num_classes for d in domains])

    @property
    def num_domains(self) -> int:
        """D."""
        return len(self.domains)

    def features(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, C]`` of the masked backbone."""
        s = self.switches(domain)
        return self.body(self.normalize(image, domain), domain, s)

    def forward(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Logits of domain ``domain`` (see :class:`MultiHead` for shapes)."""
        return self.heads(self.features(image, domain), domain)

    def domain_bns(self) -> list[DomainBatchNorm]:
        """All per-domain BN modules of the body."""
        return [m for m in self.body.modules() if isinstance(m, DomainBatchNorm)]

    def bn_parameters(self, d: int) -> list[nn.Parameter]:
        """Domain ``d``'s BN affine parameters."""
        return [p for m in self.domain_bns() for p in m.bns[d].parameters()]

    def frozen_keys(self) -> set[str]:
        """State-dict keys of the shared conv weights (stored once, in the backbone file)."""
        keys = set()
        for c in self.graph.convs:
            keys.add(f"body.{c.name}.weight")
            keys.add(f"body.{c.name}.bias")
        return keys

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything but the shared conv weights: switches, per-domain BN (with statistics), heads, normalisation."""
        frozen = self.frozen_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}


def build_multidomain(backbone: nn.Module, graph: CouplingGraph, domains: Sequence[DomainSpec]) -> MultiDomainNet:
    """Rewrite a backbone into a :class:`MultiDomainNet` (the backbone is copied, not modified).

    Each ``BatchNorm2d`` becomes a :class:`DomainBatchNorm` taking ``(x, domain)``; each conv's input is
    multiplied by its slice of the switch vector. Conv weights are frozen.
    """
    gm = fx.symbolic_trace(copy.deepcopy(backbone))
    g = gm.graph
    nodes = list(g.nodes)
    image = next(n for n in nodes if n.op == "placeholder")
    with g.inserting_after(image):
        domain = g.placeholder("domain")
    with g.inserting_after(domain):
        s = g.placeholder("s")
    offsets = {c.name: (c.offset, c.in_channels) for c in graph.convs}
    for node in nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.BatchNorm2d):
            parent, _, leaf = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, leaf, DomainBatchNorm(mod, len(domains)))
            node.args = (node.args[0], domain)
        elif isinstance(mod, nn.Conv2d):
            for p in mod.parameters():
                p.requires_grad_(False)
            off, n = offsets[str(node.target)]
            with g.inserting_before(node):
                gated = g.call_function(apply_gate, (node.args[0], s, off, n))
            node.args = (gated, *node.args[1:])
    for p in gm.parameters():
        if not any(p is q for m in gm.modules() if isinstance(m, DomainBatchNorm) for q in m.parameters()):
            p.requires_grad_(False)
    g.lint()
    gm.recompile()
    return MultiDomainNet(gm, graph, domains)
