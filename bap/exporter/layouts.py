"""How the multi-domain model is laid out in ONNX, chosen through a registry (``--graph``).

* ``tables`` (``docs/design.md`` section 3): one compact network over the union of the domains' channels; per-domain
  BN, gates and normalisation are gathered affine tables applied per sample. Weights are held once at run time;
  every sample runs the union's channels. TensorRT fuses the per-sample ``Mul``/``Add`` into pointwise kernels.
* ``routed`` (:mod:`bap.exporter.routed`): each domain runs its own specialised branch (its channels only, BN
  folded) on its samples; weights are stored once in the file and folded per branch when the runtime loads it.
  On ONNX Runtime CPU this avoids the per-sample passes that ``tables`` cannot fuse (measured in
  ``benchmarks/export_latency.py``), at the price of memory for every branch's folded weights.

``auto`` picks ``routed`` for ONNX exports of per-domain methods serving several domains, and ``tables`` for
TensorRT (pointwise fusion, no data-dependent shapes) and for methods whose domains share one network.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

import onnx
import torch

from bap.core.compact import ChannelPlan, SpecialisedNet, build_compact, build_specialised, net_macs
from bap.core.metrics import backbone_size, param_bits
from bap.core.multidomain import MultiDomainNet
from bap.core.registry import Registry
from bap.exporter.routed import DOMAIN, IMAGE, LOGITS, BranchConv, branch_convs, route_branches, routed_stats
from bap.exporter.sharing import BranchSets, ConvInfo, SharingCost, SharingPlan, choose_sharing

__all__ = [
    "LAYOUTS",
    "SINGLE_INPUTS",
    "Branch",
    "Built",
    "LayoutContract",
    "LayoutJob",
    "dynamic_axes",
    "export_single",
    "resolve_layout",
]

LAYOUTS: Registry = Registry("graph layout", "--graph")


@dataclass
class LayoutJob:
    """What a layout needs: the trained model, the served domains' plan and the export settings."""

    model: MultiDomainNet
    plan: ChannelPlan
    rows: list[int]
    served: list[str]
    round_to: int
    gather_threshold: float
    size: int
    shared_bn: bool
    to_onnx: Callable[..., onnx.ModelProto]  # (module, example args, input names, dynamic axes) -> clean model
    max_weights: float = 1.0  # shared layout: weights held after loading, x the backbone's


@dataclass
class Branch:
    """One domain's branch of a routed model: its specialised network, conv provenance and (once exported) ONNX."""

    net: SpecialisedNet
    convs: dict[str, BranchConv]
    proto: onnx.ModelProto | None = None


@dataclass
class Built:
    """A laid-out model, measured.

    Attributes:
        macs: conv MACs one sample of each served domain executes.
        params: parameter accounting (``param_bits`` keys plus ``loaded_params``: floats held after the runtime
            has folded constant subgraphs, BN still counted as 2 floats per channel).
        plans: the channel plans samples execute (tables: the union plan; routed: one per branch), for the
            per-stage summary.
        stored: per conv, (output, input) channels of the weights stored in the file.
        facts: extra manifest facts.
        module: the traced network (tables).
        branches: per domain (routed).
    """

    macs: dict[str, int]
    params: dict[str, Any]
    plans: list[ChannelPlan]
    stored: dict[str, tuple[int, int]]
    facts: dict[str, Any] = field(default_factory=dict)
    module: Any = None
    branches: dict[str, Branch] = field(default_factory=dict)

    @property
    def macs_mean(self) -> float:
        """MACs per sample averaged over the served domains (an evenly mixed stream)."""
        return sum(self.macs.values()) / len(self.macs)


class LayoutContract:
    """What a layout promises, declared in one place (like optimum's ``OnnxConfig``).

    Attributes:
        inputs: graph input names, in order (``image`` float32 ``[B,3,H,W]``, ``domain`` int64 ``[B]``).
        outputs: graph output names (``logits`` ``[B, K_max]``, ``-inf`` beyond each domain's classes).
        atol: per precision, the max |ONNX - PyTorch| on the logits validation allows (``--atol`` overrides it);
            fp32 matches to ~1e-6 (pruning removes channels that contribute exactly zero), fp16 to ~1e-2.
    """

    inputs: tuple[str, ...] = ("image", "domain")
    outputs: tuple[str, ...] = ("logits",)
    atol: ClassVar[Mapping[str, float]] = MappingProxyType({"fp32": 1e-4, "fp16": 5e-2})

    @classmethod
    def tolerance(cls, precision: str) -> float:
        """The validation tolerance for ``precision``."""
        return cls.atol[precision]


SINGLE_INPUTS = ("image",)  # single-domain models (backbone, specialised): no domain input
# dynamic axes per tensor name: batch everywhere, spatial size on images
_AXES = {"image": {0: "batch", 2: "height", 3: "width"}, "domain": {0: "batch"}, "logits": {0: "batch"}}


def dynamic_axes(inputs: Sequence[str], outputs: Sequence[str]) -> dict[str, dict[int, str]]:
    """``torch.onnx.export`` dynamic axes for a contract's inputs and outputs."""
    return {n: dict(_AXES[n]) for n in (*inputs, *outputs)}


class Layout(Protocol):
    """One way to lay the multi-domain model out."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    atol: Mapping[str, float]

    def build(self, job: LayoutJob) -> Built:
        """Build the PyTorch side and measure it."""

    def to_onnx(self, job: LayoutJob, built: Built) -> onnx.ModelProto:
        """The model's ONNX graph."""


def resolve_layout(layout: str, target: str, shared_bn: bool, num_served: int) -> str:
    """``auto`` -> ``shared`` for ONNX exports of per-domain methods with several domains, else ``tables``.

    The rule: the fastest layout measured on ONNX Runtime CPU whose held weights fit ``--max-weights``. ``routed``
    is fastest but holds every branch's weights; ``shared`` *is* the routed graph while that fits and stores
    common blocks once, cheapest first, until it does; ``tables`` is leanest and slowest (RESULTS.md section 8).
    TensorRT keeps ``tables`` until the others are measured on a GPU.
    """
    if layout != "auto":
        LAYOUTS.get(layout)
        return layout
    return "shared" if target == "onnx" and not shared_bn and num_served > 1 else "tables"


def export_single(job: LayoutJob, net: torch.nn.Module) -> onnx.ModelProto:
    """A single-domain network (specialised or backbone) as ONNX: ``image`` -> ``logits``."""
    outputs = LayoutContract.outputs
    example = (torch.rand(2, 3, job.size, job.size),)
    return job.to_onnx(net, example, list(SINGLE_INPUTS), dynamic_axes(SINGLE_INPUTS, outputs))


@LAYOUTS.register("tables")
class TablesLayout(LayoutContract):
    """The union of the domains' channels, per-domain BN as gathered affine tables (``docs/design.md`` section 3)."""

    inputs = ("image", "domain")
    outputs = ("logits",)
    atol = MappingProxyType({"fp32": 1e-4, "fp16": 5e-2})

    def build(self, job: LayoutJob) -> Built:
        """The compact network; every sample executes the union's MACs."""
        compact = build_compact(job.model, job.plan)
        executed = net_macs(compact, job.size)
        positions = sum(len(lp.in_keep) for lp in job.plan.layers.values())
        pb = param_bits(job.model, compact.body, positions, shared_bn=job.shared_bn, num_domains=len(job.served))
        pb["loaded_params"] = pb["model_params"]  # nothing to fold: the runtime holds what the file stores
        stored = {n: (len(lp.out_keep), len(lp.in_keep)) for n, lp in job.plan.layers.items()}
        return Built(dict.fromkeys(job.served, executed), pb, [job.plan], stored, module=compact)

    def to_onnx(self, job: LayoutJob, built: Built) -> onnx.ModelProto:
        """Trace the compact network."""
        ex = (torch.rand(2, 3, job.size, job.size), torch.tensor([0, len(job.served) - 1], dtype=torch.long))
        return job.to_onnx(built.module, ex, list(self.inputs), dynamic_axes(self.inputs, self.outputs))


@LAYOUTS.register("routed")
class RoutedLayout(LayoutContract):
    """Per-domain specialised branches over shared weights, samples routed by domain (:mod:`.routed`)."""

    inputs = (IMAGE, DOMAIN)  # the names route_branches gives its graph
    outputs = (LOGITS,)
    # branch weights are derived in the graph from the shared tensors with the same float ops (bit-exact in fp32)
    atol = MappingProxyType({"fp32": 1e-4, "fp16": 5e-2})

    def build(self, job: LayoutJob) -> Built:
        """One specialised network per served domain; each sample executes its own domain's MACs."""
        branches, macs = {}, {}
        for name, row in zip(job.served, job.rows, strict=True):
            net = build_specialised(job.model, row, round_to=job.round_to, gather_threshold=job.gather_threshold)
            branches[name] = Branch(net, branch_convs(net))
            macs[name] = net_macs(net, job.size)
        st = routed_stats([b.convs for b in branches.values()])
        size = backbone_size(job.model)
        switch_bits = 0 if job.shared_bn else len(job.served) * st.switch_positions
        bits = 32 * (st.shared_params + st.branch_bn_params) + switch_bits
        pb = {
            "model_params": st.shared_params + st.branch_bn_params,
            "model_bits": bits,
            **size,
            "rel_params": bits / size["backbone_bits"],
            # after folding, each branch holds its own convs and BN: the branch bodies, counted like the model
            "loaded_params": sum(param_bits(job.model, b.net.body, 0)["model_params"] for b in branches.values()),
        }
        facts = {"shared_channels": {n: list(v) for n, v in st.shared_channels.items()}}
        plans = [b.net.plan for b in branches.values()]
        return Built(macs, pb, plans, st.shared_channels, facts=facts, branches=branches)

    def to_onnx(self, job: LayoutJob, built: Built) -> onnx.ModelProto:
        """Export every branch, then compose them with shared weights (constant subgraphs are not folded)."""
        from bap.exporter.onnx_io import clean_graph

        for b in built.branches.values():
            b.proto = export_single(job, b.net)
        backbone = {c.name: job.model.body.get_submodule(c.name).weight.detach().numpy() for c in job.model.graph.convs}
        k = [job.model.heads.num_classes[r] for r in job.rows]
        branches = [built.branches[n] for n in job.served]
        model = route_branches([b.proto for b in branches], [b.convs for b in branches], backbone, k)
        return clean_graph(model, fold_constants=False)


def conv_infos(model: MultiDomainNet) -> list[ConvInfo]:
    """Shape facts and chain consumers of every conv of the backbone (for the ``shared`` cost model)."""
    out = []
    for c in model.graph.convs:
        consumer = model.graph.chain_consumer(c.name)
        stride = model.body.get_submodule(c.name).stride
        out.append(ConvInfo(c.name, c.kind, c.in_channels, c.out_channels, c.kernel[0] * c.kernel[1],
                            c.out_hw[0] * c.out_hw[1], consumer.name if consumer else None,
                            stride[0] * stride[1]))  # fmt: skip
    return out


@dataclass
class _SharedState:
    """What the ``shared`` layout decided in :meth:`SharedLayout.build` and refines in ``to_onnx``."""

    infos: list[ConvInfo]
    sets: list[dict[str, BranchSets]]
    conv_weights: int  # the backbone's conv weights (the cost model's unit)
    multiple: int
    plan: SharingPlan
    cost: SharingCost
    attempts: list[dict[str, Any]] = field(default_factory=list)


# channel blocks of ONNX Runtime's blocked (NCHWc) convs on AVX-512; odd extras leave that layout (reorders)
SHARED_MULTIPLE = 16


@LAYOUTS.register("shared")
class SharedLayout(RoutedLayout):
    """Routed branches whose common conv blocks are held once after loading (:mod:`.shared`, :mod:`.sharing`)."""

    # the BN a branch applies after a shared conv must not be folded into it (a copy per branch)
    ort_disabled_optimizers: ClassVar[tuple[str, ...]] = ("ConvBNFusion", "ConvMulFusion", "ConvAddFusion")
    max_attempts: ClassVar[int] = 3

    def build(self, job: LayoutJob) -> Built:
        """The routed branches, then the core/extras plan the cost model expects to fit ``max_weights``."""
        built = super().build(job)
        infos = conv_infos(job.model)
        sets = [{n: BranchSets(bc.out_keep, bc.in_keep) for n, bc in b.convs.items()} for b in built.branches.values()]
        conv_w = sum(i.in_channels * i.out_channels * i.kernel_area for i in infos)
        multiple = max(job.round_to, SHARED_MULTIPLE)
        target = job.max_weights * built.params["backbone_params"] / conv_w
        plan, cost = choose_sharing(infos, sets, target, conv_w, multiple)
        built.module = _SharedState(infos, sets, conv_w, multiple, plan, cost)
        self._record(job, built)
        return built

    @staticmethod
    def _record(job: LayoutJob, built: Built) -> None:
        st: _SharedState = built.module
        scale = job.size**2 / job.model.graph.input_size**2
        built.macs = {n: int(m * scale) for n, m in zip(job.served, st.cost.macs, strict=True)}
        bn = 2 * sum(len(bc.out_keep) for b in built.branches.values() for bc in b.convs.values())
        built.params["loaded_params"] = st.cost.weights + bn
        built.facts.update(sharing=st.plan.to_dict(), estimated_conv_weights=st.cost.weights, fit=st.attempts)

    def to_onnx(self, job: LayoutJob, built: Built) -> onnx.ModelProto:
        """Compose the branches with the shared blocks; re-plan leaner while ONNX Runtime holds too much.

        The cost model counts conv weights only; what ONNX Runtime really holds (BN, heads, blocked-layout
        padding) is measured on the composed model, and the conv target is lowered by the excess (at most
        ``max_attempts`` compositions). ``facts["fit"]`` records every attempt.
        """
        import tempfile
        from pathlib import Path

        from bap.exporter.onnx_io import clean_graph
        from bap.exporter.shared import share_branches
        from bap.exporter.validate import held_weights

        st: _SharedState = built.module
        for b in built.branches.values():
            b.proto = export_single(job, b.net)
        backbone = {c.name: job.model.body.get_submodule(c.name).weight.detach().numpy() for c in job.model.graph.convs}
        k = [job.model.heads.num_classes[r] for r in job.rows]
        branches = [built.branches[n] for n in job.served]
        limit = job.max_weights * built.params["backbone_params"]
        target = st.cost.weights / st.conv_weights
        for attempt in range(self.max_attempts):
            model = share_branches([b.proto for b in branches], [b.convs for b in branches], st.infos, st.plan,
                                   backbone, k, round_to=st.multiple)  # fmt: skip
            model = clean_graph(model, fold_constants=False)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                onnx.save(model, str(path))
                held = held_weights(path, self.ort_disabled_optimizers)
            st.attempts.append({"conv_target": round(target, 4), "held": held, "limit": round(limit)})
            if held <= limit or attempt == self.max_attempts - 1:
                break
            target -= 1.05 * (held - limit) / st.conv_weights
            st.plan, st.cost = choose_sharing(st.infos, st.sets, target, st.conv_weights, st.multiple)
        self._record(job, built)
        return model
