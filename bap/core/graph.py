"""The channel-coupling analysis: one pass over a backbone's ``torch.fx`` graph, used by trainer and exporter.

Every conv gets one switch per *input* channel. How a switched-off input channel can be removed depends on
where the channel comes from (``docs/design.md`` section 2):

* ``chain``: produced by exactly one conv, through its BN and zero-preserving per-channel ops (ReLU, pooling),
  and read by exactly this conv. Off in every domain -> delete the consumer's input slice **and** the
  producer's filter and BN entry. A per-domain gate folds into that BN's affine table.
* ``stream``: anything else (residual streams, shared activations). The producer keeps its width; the consumer
  only drops input slices (a channel gather) and applies an explicit per-domain gate.
* ``input``: the image. Its gate folds into the per-domain normalisation.

Because the trainer's metrics and the exporter's channel plan both come from this one analysis, a trained
mask and an exported cut cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from bap.errors import ConfigError

__all__ = ["ZERO_PRESERVING_FUNCTIONS", "ZERO_PRESERVING_MODULES", "BNNode", "ConvNode", "CouplingGraph", "analyze"]

# per-channel ops with f(0) = 0: a gate applied before them equals a gate applied after them
ZERO_PRESERVING_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Identity,
)
ZERO_PRESERVING_FUNCTIONS: tuple[Callable, ...] = (
    F.relu,
    torch.relu,
    F.relu6,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.dropout,
)

Kind = Literal["input", "chain", "stream"]


@dataclass(frozen=True)
class ConvNode:
    """One conv of the backbone and how its input channels are produced.

    Attributes:
        name: module path in the backbone (``layers.0.1.conv2``).
        index: position among convs (graph order).
        offset: index of this conv's first switch in the flat per-domain switch vector.
        kind: ``input``, ``chain`` or ``stream`` (see module docstring).
        producer: for ``chain``: the conv whose output channels these are.
        fold_bn: for ``chain``: the BN (right after ``producer``) whose affine table takes the gate.
        out_hw: output spatial size at the reference input size (for MAC accounting).
    """

    name: str
    index: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    groups: int
    offset: int
    kind: Kind
    producer: str | None
    fold_bn: str | None
    out_hw: tuple[int, int]

    @property
    def macs_per_input_channel(self) -> int:
        """MACs one input channel controls: ``F * kh * kw * H_out * W_out``."""
        return self.out_channels * self.kernel[0] * self.kernel[1] * self.out_hw[0] * self.out_hw[1]

    @property
    def macs(self) -> int:
        """MACs of the whole conv at the reference input size."""
        return self.in_channels * self.macs_per_input_channel // self.groups


@dataclass(frozen=True)
class BNNode:
    """A BatchNorm2d; ``producer`` is the conv it directly follows (its channels track that conv's outputs)."""

    name: str
    channels: int
    producer: str | None


@dataclass(frozen=True)
class CouplingGraph:
    """Result of :func:`analyze`: convs in graph order, BNs, and the switch layout."""

    convs: tuple[ConvNode, ...]
    bns: tuple[BNNode, ...]
    num_switches: int
    feature_dim: int
    input_size: int

    def conv(self, name: str) -> ConvNode:
        """The conv called ``name``."""
        for c in self.convs:
            if c.name == name:
                return c
        raise KeyError(name)

    def chain_consumer(self, producer: str) -> ConvNode | None:
        """The conv that consumes ``producer``'s output as a chain, if any."""
        for c in self.convs:
            if c.kind == "chain" and c.producer == producer:
                return c
        return None

    def bn(self, name: str) -> BNNode:
        """The BN called ``name``."""
        for b in self.bns:
            if b.name == name:
                return b
        raise KeyError(name)

    def switch_slices(self) -> dict[str, slice]:
        """``{conv name: slice into the flat switch vector}``."""
        return {c.name: slice(c.offset, c.offset + c.in_channels) for c in self.convs}

    def mac_weights(self) -> torch.Tensor:
        """Per-switch MACs (float64 ``[M]``): the compute each input slice controls, for ``--budget-unit macs``."""
        w = torch.empty(self.num_switches, dtype=torch.float64)
        for c in self.convs:
            w[c.offset : c.offset + c.in_channels] = float(c.macs_per_input_channel)
        return w

    def masked_macs(self, on: torch.Tensor) -> dict[str, int]:
        """Conv MACs of one domain's own channels, per conv: ``on`` is its bool ``[M]`` switch row.

        A conv keeps its switched-on inputs (at least one, so the graph stays valid); a chain producer keeps only
        the filters its consumer reads. Exact for ``round_to = 1`` (thop agrees on the specialised model).
        """
        on = on.bool()
        kept = {c.name: max(1, int(on[c.offset : c.offset + c.in_channels].sum())) for c in self.convs}
        out = {}
        for c in self.convs:
            consumer = self.chain_consumer(c.name)
            width = kept[consumer.name] if consumer is not None else c.out_channels
            out[c.name] = kept[c.name] * width * c.kernel[0] * c.kernel[1] * c.out_hw[0] * c.out_hw[1] // c.groups
        return out

    @property
    def total_macs(self) -> int:
        """Conv MACs of the unpruned backbone at the reference input size."""
        return sum(c.macs for c in self.convs)

    def summary(self) -> dict[str, int]:
        """Counts per kind, for reports."""
        out = {"convs": len(self.convs), "switches": self.num_switches}
        for k in ("input", "chain", "stream"):
            out[f"{k}_convs"] = sum(1 for c in self.convs if c.kind == k)
        return out


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _is_conv(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), nn.Conv2d)


def _is_bn(gm: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(gm, node), nn.BatchNorm2d)


def is_zero_preserving(gm: fx.GraphModule, node: fx.Node) -> bool:
    """True for per-channel ops with ``f(0) = 0`` through which a gate commutes."""
    m = _module(gm, node)
    if m is not None:
        return isinstance(m, ZERO_PRESERVING_MODULES)
    if node.op == "call_function":
        return node.target in ZERO_PRESERVING_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _trace(backbone: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(backbone)
    except Exception as e:  # fx raises many types for untraceable control flow
        raise ConfigError(
            f"backbone {type(backbone).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e})",
            "register a backbone without data-dependent control flow",
        ) from None


def analyze(backbone: nn.Module, input_size: int) -> CouplingGraph:
    """Trace ``backbone`` and classify every conv's input channels as input / chain / stream.

    Args:
        backbone: a registered backbone (image ``[B,3,H,W]`` -> features ``[B,C]``).
        input_size: reference resolution for MAC accounting.

    Raises:
        ConfigError: untraceable backbone, grouped convs (not supported yet), or no convs.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    gm = _trace(backbone)
    was_training = backbone.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, 3, input_size, input_size))
        feat = backbone.eval()(torch.zeros(1, 3, input_size, input_size))
    backbone.train(was_training)

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    image = placeholders[0]
    input_convs = [u for u in image.users if _is_conv(gm, u)]

    convs: list[ConvNode] = []
    offset = 0
    for node in gm.graph.nodes:
        if not _is_conv(gm, node):
            continue
        m: nn.Conv2d = _module(gm, node)  # type: ignore[assignment]
        if m.groups != 1:
            raise ConfigError(
                f"conv {node.target} is grouped (groups={m.groups})", "grouped/depthwise convs are not supported yet"
            )
        kind: Kind = "stream"
        producer = fold_bn = None
        src = node.args[0]
        if src is image and len(input_convs) == 1 and len(image.users) == 1:
            kind = "input"
        elif isinstance(src, fx.Node):
            path = []
            cur = src
            while isinstance(cur, fx.Node) and (_is_bn(gm, cur) or is_zero_preserving(gm, cur)):
                path.append(cur)
                cur = cur.args[0]
            # chain: producer conv -> BN -> zero-preserving ops -> this conv, nothing else reading any of it
            if (
                isinstance(cur, fx.Node)
                and _is_conv(gm, cur)
                and path
                and _is_bn(gm, path[-1])
                and sum(_is_bn(gm, p) for p in path) == 1
                and len(cur.users) == 1
                and all(len(p.users) == 1 for p in path)
                and _module(gm, cur).groups == 1
            ):
                kind, producer, fold_bn = "chain", str(cur.target), str(path[-1].target)
        shape = node.meta["tensor_meta"].shape
        convs.append(
            ConvNode(
                name=str(node.target),
                index=len(convs),
                in_channels=m.in_channels,
                out_channels=m.out_channels,
                kernel=tuple(m.kernel_size),  # type: ignore[arg-type]
                groups=m.groups,
                offset=offset,
                kind=kind,
                producer=producer,
                fold_bn=fold_bn,
                out_hw=(int(shape[2]), int(shape[3])),
            )
        )
        offset += m.in_channels
    if not convs:
        raise ConfigError(f"backbone {type(backbone).__name__} has no Conv2d", "pick a CNN backbone")

    bns = []
    for node in gm.graph.nodes:
        if _is_bn(gm, node):
            src = node.args[0]
            prod = str(src.target) if isinstance(src, fx.Node) and _is_conv(gm, src) and len(src.users) == 1 else None
            bns.append(BNNode(str(node.target), _module(gm, node).num_features, prod))
    return CouplingGraph(tuple(convs), tuple(bns), offset, int(feat.shape[1]), input_size)
