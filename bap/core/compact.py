"""Channel plans and the compact dense network they define (``docs/design.md`` sections 2-3).

:func:`plan_channels` turns per-domain binary switches into a :class:`ChannelPlan` (pure data: kept input and
output channels per conv, kept channels per BN, per-domain gates). :func:`build_compact` rewrites a trained
:class:`~bap.core.multidomain.MultiDomainNet` into a physically smaller network:

* shared convs hold only the kept channels (dense, smaller weights);
* every per-domain BN becomes a gathered affine table ``x * A[domain] + B[domain]`` into which the gates of
  chain consumers are folded, so the following ReLU zeroes gated channels exactly;
* stream consumers gather their kept input channels and apply an explicit ``{0,1}`` gate;
* the input normalisation (with the stem's gates folded in) and all heads are gathered per sample.

The same functions serve the trainer's metrics (MACs / params measured on this structure) and the exporter
(the module is what goes to ONNX), so the numbers in a report describe exactly what ships.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from bap.core.graph import CouplingGraph
from bap.core.multidomain import DomainBatchNorm, MultiDomainNet, apply_gate

__all__ = [
    "ChannelGather",
    "ChannelPlan",
    "CompactHead",
    "CompactInput",
    "CompactNet",
    "DomainAffine",
    "DomainGate",
    "LayerPlan",
    "SpecialisedNet",
    "build_compact",
    "build_specialised",
    "count_conv_macs",
    "domain_guard",
    "net_macs",
    "plan_channels",
]


# ---------------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class LayerPlan:
    """Kept channels of one conv.

    ``in_keep`` are the input channels the compact conv reads; ``zero_cols`` those of them that no served domain
    uses (rounding padding, or the unused channels of a full-width stream read without a gather): their weight
    columns are zero. ``gate[d, i]`` is domain ``d``'s switch for ``in_keep[i]`` (1 on zero columns, where it does
    not matter).
    """

    name: str
    kind: str
    in_keep: tuple[int, ...]
    out_keep: tuple[int, ...]
    in_total: int
    out_total: int
    gate: torch.Tensor = field(compare=False)
    zero_cols: tuple[int, ...] = ()

    @property
    def gathers_input(self) -> bool:
        """True when the conv reads a subset of a full-width tensor (stream / input consumers)."""
        return self.kind != "chain" and len(self.in_keep) < self.in_total


@dataclass
class ChannelPlan:
    """Kept channels per conv and BN for a set of domains (the union of their switches, optionally rounded)."""

    domains: list[str]
    layers: dict[str, LayerPlan]
    bn_keep: dict[str, tuple[int, ...]]
    round_to: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form for manifests: counts and indices per conv."""
        out = {}
        for name, lp in self.layers.items():
            out[name] = {
                "kind": lp.kind,
                "in_kept": len(lp.in_keep),
                "in_total": lp.in_total,
                "out_kept": len(lp.out_keep),
                "out_total": lp.out_total,
                "in_keep": list(lp.in_keep),
                "out_keep": list(lp.out_keep) if len(lp.out_keep) < lp.out_total else "all",
                "zero_cols": len(lp.zero_cols),
                "gathered": lp.gathers_input,
                "active": {d: int(lp.gate[i].sum()) - len(lp.zero_cols) for i, d in enumerate(self.domains)},
            }
        return out


def _pad_to_multiple(keep: list[int], total: int, multiple: int, rank: torch.Tensor) -> list[int]:
    """Grow ``keep`` to a multiple of ``multiple`` (capped at ``total``) with the best-ranked unused channels."""
    target = min(total, max(multiple, math.ceil(len(keep) / multiple) * multiple))
    if len(keep) >= target:
        return keep
    kept = set(keep)
    order = sorted((c for c in range(total) if c not in kept), key=lambda c: (-float(rank[c]), c))
    return sorted(keep + order[: target - len(keep)])


def plan_channels(
    graph: CouplingGraph,
    on: torch.Tensor,
    domains: Sequence[str],
    round_to: int = 1,
    priority: torch.Tensor | None = None,
    gather_threshold: float = 1.0,
) -> ChannelPlan:
    """Keep, per conv, the union over domains of the input channels that are switched on.

    Args:
        graph: the coupling analysis of the backbone.
        on: bool ``[D, M]`` binary switches of the domains to serve.
        domains: their names (row order of ``on``).
        round_to: pad each kept set up to a multiple of this with the next most used channels (their gates
            stay 0 in domains that do not use them). 1 disables rounding.
        priority: float ``[D, M]`` used to rank padding candidates (the real-valued switches); higher first.
        gather_threshold: a stream (or image) consumer gathers its kept input channels only when it keeps at most
            this fraction of them; otherwise it reads the full-width tensor with zero weight columns for the unused
            channels. A gather saves MACs but breaks ONNX Runtime's blocked-layout fusions; 1.0 always gathers.

    Returns:
        The plan. Chain producers keep exactly their consumer's kept inputs; BNs follow their producer conv.
        Every conv keeps at least one input channel (gated off where unused) so the graph stays valid.
    """
    on = on.bool()
    if on.shape != (len(domains), graph.num_switches):
        raise ValueError(f"switch table {tuple(on.shape)} does not match {len(domains)} x {graph.num_switches}")
    prio = priority.float() if priority is not None else on.float()
    in_keep: dict[str, list[int]] = {}
    for c in graph.convs:
        sl = on[:, c.offset : c.offset + c.in_channels]
        keep = torch.nonzero(sl.any(0)).flatten().tolist()
        rank = sl.sum(0).float() * 1e6 + prio[:, c.offset : c.offset + c.in_channels].max(0).values
        if not keep:
            keep = [int(torch.argmax(rank))]
        if round_to > 1:
            keep = _pad_to_multiple(keep, c.in_channels, round_to, rank)
        in_keep[c.name] = keep
    layers = {}
    for c in graph.convs:
        sl = on[:, c.offset : c.offset + c.in_channels]
        keep = in_keep[c.name]
        if c.kind != "chain" and len(keep) < c.in_channels and len(keep) / c.in_channels > gather_threshold:
            keep = in_keep[c.name] = list(range(c.in_channels))
        used = sl.any(0)
        zero = tuple(ch for ch in keep if not bool(used[ch])) if c.kind != "chain" else ()
        gate = sl[:, keep].clone()
        if zero:
            gate[:, [keep.index(ch) for ch in zero]] = True
        layers[c.name] = LayerPlan(c.name, c.kind, tuple(keep), (), c.in_channels, c.out_channels, gate, zero)
    for c in graph.convs:
        consumer = graph.chain_consumer(c.name)
        if consumer is not None:
            layers[c.name] = dataclasses.replace(layers[c.name], out_keep=tuple(in_keep[consumer.name]))
        else:
            layers[c.name] = dataclasses.replace(layers[c.name], out_keep=tuple(range(c.out_channels)))
    bn_keep = {b.name: layers[b.producer].out_keep if b.producer else tuple(range(b.channels)) for b in graph.bns}
    return ChannelPlan(list(domains), layers, bn_keep, round_to)


# ------------------------------------------------------------------------------------------------------ modules
def _rows(table: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
    """``table[domain]``, broadcastable over ``[B, C, H, W]``.

    Tables are stored ``[D, C, 1, 1]`` so that one ONNX ``Gather`` yields the ``[B, C, 1, 1]`` operand directly
    (no Unsqueeze nodes per table).
    """
    if table.shape[0] == 1:  # one shared row: a constant, no Gather in the graph
        return table
    return table[domain]


def _table(t: torch.Tensor) -> torch.Tensor:
    """``[D, C]`` -> ``[D, C, 1, 1]``; rows equal in every domain collapse to one (``dgprune``'s shared BN)."""
    t = t.detach().clone().float().reshape(t.shape[0], -1, 1, 1)
    return t[:1] if bool((t == t[:1]).all()) else t


class DomainAffine(nn.Module):
    """``x * A[domain] + B[domain]``: a per-domain BN (eval mode) with its gates folded in."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.register_buffer("A", _table(a))
        self.register_buffer("B", _table(b))

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Apply the gathered affine map."""
        return x * _rows(self.A, domain) + _rows(self.B, domain)


class DomainGate(nn.Module):
    """Explicit ``{0,1}`` per-domain gate on the kept inputs of a stream consumer."""

    def __init__(self, gate: torch.Tensor):
        super().__init__()
        self.register_buffer("G", _table(gate))

    def forward(self, x: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Gate."""
        return x * _rows(self.G, domain)


class ChannelGather(nn.Module):
    """Select kept channels of a full-width tensor (ONNX ``Gather`` on axis 1)."""

    def __init__(self, index: Sequence[int]):
        super().__init__()
        self.register_buffer("index", torch.tensor(list(index), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gather channels."""
        return x.index_select(1, self.index)


class CompactInput(nn.Module):
    """Per-domain normalisation of the image with the stem's gates folded in (optionally channel-gathered)."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, keep: Sequence[int] | None):
        super().__init__()
        self.gather = ChannelGather(keep) if keep is not None else None
        self.affine = DomainAffine(a, b)

    def forward(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Normalise (and gate) the image."""
        if self.gather is not None:
            image = self.gather(image)
        return self.affine(image, domain)


class CompactHead(nn.Module):
    """All heads as one matmul; each sample's slice gathered into ``[B, K_max]`` (``-inf`` beyond ``K_d``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        d, k, f = weight.shape
        self.num_domains, self.k_max = d, k
        self.register_buffer("weight", weight.detach().reshape(d * k, f).clone())
        self.register_buffer("bias", bias.detach().reshape(d * k).clone())

    def forward(self, f: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K_max]``."""
        z = torch.nn.functional.linear(f, self.weight, self.bias).view(-1, self.num_domains, self.k_max)
        if isinstance(domain, int):
            return z[:, domain]
        idx = domain.view(-1, 1, 1).expand(-1, 1, self.k_max)
        return torch.gather(z, 1, idx).reshape(-1, self.k_max)  # not squeeze(1): it exports as an If


class _PlannedNet(nn.Module):
    """Input affine, rewritten body and head of a network built from a :class:`ChannelPlan`."""

    def __init__(self, inp: CompactInput, body: fx.GraphModule, head: nn.Module, plan: ChannelPlan):
        super().__init__()
        self.input = inp
        self.body = body
        self.head = head
        self.plan = plan


class CompactNet(_PlannedNet):
    """The compact multi-domain network: ``(image [B,3,H,W] in [0,1], domain int64 [B]) -> logits [B, K_max]``.

    With a ``domain`` tensor, an image whose id is outside ``[0, D)`` gets a row of NaN (its gathers read row 0,
    which is then discarded), and every row is NaN when ``domain``'s length differs from the batch
    (:func:`domain_guard`); valid rows are computed exactly as without the guard.
    """

    def features(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Pooled features (NaN rows for invalid ids, as in :meth:`forward`)."""
        if isinstance(domain, int):
            return self._features(image, domain)
        index, valid = domain_guard(image, domain, len(self.plan.domains))
        return _nan_rows(self._features(image, index), valid)

    def forward(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        """Logits padded to ``K_max``."""
        if isinstance(domain, int):
            return self.head(self._features(image, domain), domain)
        index, valid = domain_guard(image, domain, len(self.plan.domains))
        return _nan_rows(self.head(self._features(image, index), index), valid)

    def _features(self, image: torch.Tensor, domain: int | torch.Tensor) -> torch.Tensor:
        return self.body(self.input(image, domain), domain)


def domain_guard(image: torch.Tensor, domain: torch.Tensor, num_domains: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of the batch: the table row its gathers read, and whether its domain id is valid.

    An id is valid when it lies in ``[0, num_domains)`` and ``domain`` has one id per image. Invalid ids read row 0
    (ONNX ``Gather`` would wrap a negative id to another domain, or fail on one past the end), so the caller must
    discard their rows (:func:`_nan_rows`). When ``len(domain) != len(image)`` the index still has one entry per
    image (``domain`` is padded or cut to the batch) and every row is invalid. Traced, this is a handful of shape
    and elementwise ops with the lengths compared at run time (no ``If``); valid ids pass through unchanged.

    Returns:
        ``(index int64 [B], valid bool [B])``.
    """
    rows = image.shape[0]
    pad = torch.zeros(rows, dtype=domain.dtype, device=domain.device)
    ids = torch.cat([domain, pad])[:rows]  # == domain when the lengths agree
    same = torch._shape_as_tensor(domain) == torch._shape_as_tensor(image)[:1]  # [1], dynamic when traced
    valid = (ids > -1) & (ids < num_domains) & same  # not >=: GreaterOrEqual is outside TensorRT's list
    return torch.where(valid, ids, 0), valid


def _nan_rows(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x [B, ...]`` with the rows where ``valid`` is false replaced by NaN (the others passed through exactly)."""
    return torch.where(valid.view(-1, *([1] * (x.dim() - 1))), x, math.nan)


class SpecialisedNet(_PlannedNet):
    """One domain only: its channels, BN folded into the convs, no ``domain`` input."""

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Pooled features."""
        return self.body(self.input(image, 0), 0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K_d]``."""
        return self.head(self.features(image))


# ------------------------------------------------------------------------------------------------------ rewrite
def _sliced_conv(
    conv: nn.Conv2d, in_keep: Sequence[int], out_keep: Sequence[int], zero_cols: Sequence[int] = ()
) -> nn.Conv2d:
    new = nn.Conv2d(
        len(in_keep),
        len(out_keep),
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        1,
        conv.bias is not None,
        conv.padding_mode,
    )
    with torch.no_grad():
        w = conv.weight[list(out_keep)][:, list(in_keep)].clone()
        if zero_cols:
            w[:, [list(in_keep).index(c) for c in zero_cols]] = 0.0  # read but unused by every served domain
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[list(out_keep)])
    new.requires_grad_(False)
    return new


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, leaf, module)


def _replace_gate(gm: fx.GraphModule, node: fx.Node, plan: ChannelPlan, tag: int) -> None:
    """Replace an ``apply_gate`` node by the stream conv's channel gather and per-domain gate (if needed)."""
    g = gm.graph
    lp = plan.layers[str(next(iter(node.users)).target)]
    x = node.args[0]
    if lp.kind == "stream":
        if lp.gathers_input:
            name = f"bap_gather_{tag}"
            gm.add_submodule(name, ChannelGather(lp.in_keep))
            with g.inserting_before(node):
                x = g.call_module(name, (x,))
        if not bool(lp.gate.all()):
            name = f"bap_gate_{tag}"
            gm.add_submodule(name, DomainGate(lp.gate))
            domain = next(n for n in g.nodes if n.op == "placeholder" and n.target == "domain")
            with g.inserting_before(node):
                x = g.call_module(name, (x, domain))
    node.replace_all_uses_with(x)
    g.erase_node(node)


def _replace_module(
    gm: fx.GraphModule, target: str, plan: ChannelPlan, rows: list[int], fold_gate: dict[str, torch.Tensor]
) -> None:
    """Slice a conv to its kept channels; turn a per-domain BN into the served rows' affine table."""
    mod = gm.get_submodule(target)
    if isinstance(mod, nn.Conv2d):
        lp = plan.layers[target]
        _set_module(gm, target, _sliced_conv(mod, lp.in_keep, lp.out_keep, lp.zero_cols))
    elif isinstance(mod, DomainBatchNorm):
        keep = list(plan.bn_keep[target])
        a, b = mod.affine()
        a, b = a[rows][:, keep], b[rows][:, keep]
        gate = fold_gate.get(target)
        if gate is not None:  # a chain conv's switches act on its producer's BN output: fold them in
            a, b = a * gate, b * gate
        _set_module(gm, target, DomainAffine(a, b))


def _rewrite_body(model: MultiDomainNet, plan: ChannelPlan, rows: list[int]) -> fx.GraphModule:
    """Pure rewrite of ``model.body`` into the compact body for domain rows ``rows`` (model is not modified)."""
    gm = copy.deepcopy(model.body)
    g = gm.graph
    fold_gate = {
        c.fold_bn: plan.layers[c.name].gate.float() for c in model.graph.convs if c.kind == "chain" and c.fold_bn
    }
    s_node = None
    tag = 0
    for node in list(g.nodes):
        if node.op == "placeholder" and node.target == "s":
            s_node = node
        elif node.op == "call_function" and node.target is apply_gate:
            tag += int(plan.layers[str(next(iter(node.users)).target)].kind == "stream")  # names stay as before
            _replace_gate(gm, node, plan, tag)
        elif node.op == "call_module":
            _replace_module(gm, str(node.target), plan, rows, fold_gate)
    if s_node is not None:
        g.erase_node(s_node)
    g.lint()
    gm.recompile()
    gm.eval()
    return gm


def _compact_input(model: MultiDomainNet, plan: ChannelPlan, rows: list[int]) -> CompactInput:
    first = (
        next(c for c in model.graph.convs if c.kind == "input")
        if any(c.kind == "input" for c in model.graph.convs)
        else None
    )
    mean, std = model.normalize.mean[rows], model.normalize.std[rows]
    a, b = 1.0 / std, -mean / std
    keep = None
    if first is not None:
        lp = plan.layers[first.name]
        a, b = a[:, list(lp.in_keep)] * lp.gate.float(), b[:, list(lp.in_keep)] * lp.gate.float()
        keep = list(lp.in_keep) if lp.gathers_input else None
    return CompactInput(a, b, keep)


@torch.no_grad()
def build_compact(model: MultiDomainNet, plan: ChannelPlan) -> CompactNet:
    """The compact multi-domain network serving ``plan.domains`` (all of the model's, or a subset in any order).

    Domain ids of the result index ``plan.domains``.
    """
    names = [d.name for d in model.domains]
    unknown = [n for n in plan.domains if n not in names]
    if unknown:
        raise ValueError(f"plan domains {unknown} are not in the model ({names})")
    rows = [names.index(n) for n in plan.domains]
    w, b = model.heads.padded()
    w, b = w[rows], b[rows]
    k = max(model.heads.num_classes[r] for r in rows)
    head = CompactHead(w[:, :k], b[:, :k])
    # tables every served domain shares (one row: dgprune, or a single domain) fold into their convs
    body = _fold_affine_into_convs(_rewrite_body(model, plan, rows))
    return CompactNet(_compact_input(model, plan, rows), body, head, plan).eval()


def _fold_affine_into_convs(gm: fx.GraphModule) -> fx.GraphModule:
    """Fold every constant (one-row) affine that directly follows a conv into that conv's weights."""
    g = gm.graph
    for node in list(g.nodes):
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), DomainAffine):
            continue
        src = node.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = gm.get_submodule(src.target)
        if not isinstance(conv, nn.Conv2d):
            continue
        aff: DomainAffine = gm.get_submodule(node.target)  # type: ignore[assignment]
        if aff.A.shape[0] != 1 or aff.B.shape[0] != 1:
            continue
        a, b = aff.A[0].flatten(), aff.B[0].flatten()
        fused = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            True,
        )
        with torch.no_grad():
            fused.weight.copy_(conv.weight * a.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(a)
            fused.bias.copy_(bias * a + b)
        fused.requires_grad_(False)
        fused.bap_folded_bn = True  # its BN's scale lives in the weights: metrics still count 2 floats / channel
        fused.bap_scale = a.detach().clone()  # the routed export layout derives these weights from shared ones
        _set_module(gm, str(src.target), fused)
        node.replace_all_uses_with(src)
        g.erase_node(node)
    g.lint()
    gm.delete_all_unused_submodules()  # the folded tables must not be counted (or exported) again
    gm.recompile()
    return gm


@torch.no_grad()
def build_specialised(
    model: MultiDomainNet, domain: int, round_to: int = 1, all_on: bool = False, gather_threshold: float = 1.0
) -> SpecialisedNet:
    """A single-domain network: only ``domain``'s channels, BN (and gates) folded into the convs.

    Args:
        all_on: keep every channel (the unpruned backbone with ``domain``'s BN, normalisation and head: the
            single-domain model a user would deploy without bap).
        gather_threshold: see :func:`plan_channels`.
    """
    name = model.domains[domain].name
    on = model.switches.binary()[domain : domain + 1]
    if all_on:
        on = torch.ones_like(on)
    prio = model.switches.priority()[domain : domain + 1]
    plan = plan_channels(model.graph, on, [name], round_to=round_to, priority=prio, gather_threshold=gather_threshold)
    body = _fold_affine_into_convs(_rewrite_body(model, plan, [domain]))
    head = copy.deepcopy(model.heads.heads[domain]).requires_grad_(False)
    return SpecialisedNet(_compact_input(model, plan, [domain]), body, head, plan).eval()


def count_conv_macs(module: nn.Module, *inputs: Any) -> int:
    """Conv multiply-accumulates of one forward pass, counted by thop on the actual modules (heads excluded)."""
    import logging

    import thop
    from thop.vision.basic_hooks import zero_ops

    types = {type(m) for m in module.modules() if not isinstance(m, nn.Conv2d)}
    logging.getLogger("thop").setLevel(logging.ERROR)
    macs, _ = thop.profile(module, inputs, custom_ops={t: zero_ops for t in types}, verbose=False)
    for m in module.modules():  # thop leaves counters behind
        for attr in ("total_ops", "total_params"):
            if attr in getattr(m, "_buffers", {}):
                del m._buffers[attr]
            elif hasattr(m, attr) and not isinstance(getattr(type(m), attr, None), property):
                try:
                    delattr(m, attr)
                except AttributeError:
                    pass
    return int(macs)


def net_macs(net: CompactNet | SpecialisedNet, size: int) -> int:
    """Conv MACs of one ``size`` x ``size`` sample through a compact or specialised network (domain 0's input)."""
    return count_conv_macs(net.body, net.input(torch.zeros(1, 3, size, size), 0), 0)
