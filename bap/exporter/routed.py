"""The ``routed`` layout: one ONNX graph whose domains each run their own specialised branch over shared weights.

The ``tables`` layout (``docs/design.md`` section 3) applies every per-domain BN as a per-sample ``Mul``/``Add`` on the
activations. ONNX Runtime's CPU kernels cannot run a per-sample broadcast ``Mul`` in their blocked (NCHWc) layout,
so each one costs a reorder out, the multiply and a reorder back: at batch 16 on ResNet-50 these passes took a
third of the backbone's time (``benchmarks/export_latency.py``).

Here each served domain gets a branch that is its specialised network (only its channels, BN folded into the
convs), and the batch is routed per sample: ``Equal(domain, d) -> NonZero -> Gather(image)`` feeds branch ``d``,
whose logits are padded with ``-inf`` to ``K_max`` and scattered back (``ScatterND``) into the output rows of its
samples. Mixed-domain batches work; a domain absent from a batch runs on an empty sub-batch.

Weights are stored once: per conv, the file holds the backbone's weights over the union of the channels any
branch keeps, and every branch derives its folded weights from them with constant
``Gather -> Gather -> Mul(column mask) -> Mul(BN scale)`` nodes, checked to reproduce the branch's exported fp32
weights bit for bit (an fp16 export derives them in fp16, within fp16 tolerance). Runtimes fold these nodes at
load time, so the file stays as small as the tables layout while memory at run time holds every branch's folded
weights (``params.loaded`` in the manifest).

Contract of the ``domain`` input: one id per image, each in ``[0, D)``. An image whose id matches no branch (negative,
or ``>= D``) gets a row of NaN (not the ``-inf`` padding), so a wrong id cannot pass for a prediction; a ``domain``
whose length differs from the image batch makes every row NaN (:func:`domain_guard`: without it, the routing would
pair ids with the wrong images or fail). ``bap.runtime`` refuses both before running. All functions here are pure
over ``ModelProto`` and numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bap.errors import ExportError

__all__ = [
    "DOMAIN",
    "IMAGE",
    "LOGITS",
    "ROUTE_DOMAIN",
    "BranchConv",
    "RoutedStats",
    "branch_convs",
    "domain_guard",
    "route_branches",
    "routed_stats",
    "union_channels",
]

IMAGE, DOMAIN, LOGITS = "image", "domain", "logits"  # the graph's inputs and output (its contract)
ROUTE_DOMAIN = "route/domain"  # the ids branches select on: ``domain``, or -1 everywhere if its length is wrong
NO_DOMAIN = -1  # an id no branch matches (its image keeps its NaN row)


@dataclass(frozen=True)
class BranchConv:
    """How one conv of one branch derives from the backbone: kept channels, zeroed columns, folded BN scale."""

    out_keep: tuple[int, ...]
    in_keep: tuple[int, ...]
    kernel: tuple[int, int]
    zero_cols: tuple[int, ...] = ()
    scale: np.ndarray | None = None


@dataclass(frozen=True)
class RoutedStats:
    """Sizes of a routed model, known before it is built.

    Attributes:
        shared_params: conv weights stored once (the backbone over the union of the branches' channels).
        branch_bn_params: per-branch BN (scale and bias), 2 floats per kept output channel.
        switch_positions: kept input positions per conv, summed (one switch bit per domain each).
        shared_channels: per conv, (output, input) channels of the shared tensor.
    """

    shared_params: int
    branch_bn_params: int
    switch_positions: int
    shared_channels: dict[str, tuple[int, int]]


def union_channels(convs: Sequence[Mapping[str, BranchConv]]) -> dict[str, tuple[list[int], list[int]]]:
    """Per conv, the sorted union over branches of the kept output and input channels."""
    return {
        n: (sorted({c for bc in convs for c in bc[n].out_keep}), sorted({c for bc in convs for c in bc[n].in_keep}))
        for n in convs[0]
    }


def routed_stats(convs: Sequence[Mapping[str, BranchConv]]) -> RoutedStats:
    """Sizes of the routed model composed from branches with these convs."""
    union = union_channels(convs)
    first = convs[0]
    return RoutedStats(
        shared_params=sum(len(o) * len(i) * first[n].kernel[0] * first[n].kernel[1] for n, (o, i) in union.items()),
        branch_bn_params=sum(2 * len(bc[n].out_keep) for bc in convs for n in bc if bc[n].scale is not None),
        switch_positions=sum(len(i) for _, i in union.values()),
        shared_channels={n: (len(o), len(i)) for n, (o, i) in union.items()},
    )


def branch_convs(net) -> dict[str, BranchConv]:
    """Per conv of a :class:`~bap.core.compact.SpecialisedNet`: kept channels and the BN scale folded into it."""
    out = {}
    for name, lp in net.plan.layers.items():
        conv = net.body.get_submodule(name)
        scale = getattr(conv, "bap_scale", None)
        out[name] = BranchConv(
            tuple(lp.out_keep),
            tuple(lp.in_keep),
            tuple(conv.kernel_size),
            tuple(lp.zero_cols),
            None if scale is None else scale.detach().cpu().numpy().astype(np.float32),
        )
    return out


def _const(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _positions(keep: Sequence[int], union: Sequence[int]) -> np.ndarray:
    where = {c: i for i, c in enumerate(union)}
    return np.array([where[c] for c in keep], dtype=np.int64)


def _steps(bc: BranchConv, u_out: Sequence[int], u_in: Sequence[int]) -> list[tuple[str, str, np.ndarray, dict]]:
    """The operations that turn the shared tensor into a branch's folded weight: ``(op, what, operand, attrs)``."""
    steps: list[tuple[str, str, np.ndarray, dict]] = []
    p_out, p_in = _positions(bc.out_keep, u_out), _positions(bc.in_keep, u_in)
    if not np.array_equal(p_out, np.arange(len(u_out))):
        steps.append(("Gather", "rows", p_out, {"axis": 0}))
    if not np.array_equal(p_in, np.arange(len(u_in))):
        steps.append(("Gather", "cols", p_in, {"axis": 1}))
    if bc.zero_cols:  # read by the branch but used by no domain it serves (see LayerPlan.zero_cols)
        mask = np.ones((1, len(bc.in_keep), 1, 1), np.float32)
        mask[0, [bc.in_keep.index(c) for c in bc.zero_cols]] = 0.0
        steps.append(("Mul", "mask", mask, {}))
    if bc.scale is not None:
        steps.append(("Mul", "scale", bc.scale.reshape(-1, 1, 1, 1).astype(np.float32), {}))
    return steps


def _derive_weight(
    name: str, shared: str, steps: list[tuple[str, str, np.ndarray, dict]]
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes computing branch weight ``name`` from the shared tensor (constant: runtimes fold them at load)."""
    if not steps:
        return [helper.make_node("Identity", [shared], [name], name=f"{name}/share")], []
    nodes, inits, cur = [], [], shared
    for i, (op, what, arr, attrs) in enumerate(steps):
        const = f"{name}/{what}"
        inits.append(_const(const, arr))
        out = name if i == len(steps) - 1 else f"{name}/{what}_out"
        nodes.append(helper.make_node(op, [cur, const], [out], name=f"{name}/{what}_op", **attrs))
        cur = out
    return nodes, inits


def _apply(shared: np.ndarray, steps: list[tuple[str, str, np.ndarray, dict]]) -> np.ndarray:
    """What the derivation nodes compute, in numpy (same float32 operations in the same order)."""
    w = shared
    for op, _, arr, attrs in steps:
        w = np.take(w, arr, axis=attrs["axis"]) if op == "Gather" else w * arr
    return w


def route_branches(
    branches: Sequence[onnx.ModelProto],
    convs: Sequence[Mapping[str, BranchConv]],
    backbone: Mapping[str, np.ndarray],
    num_classes: Sequence[int],
    weight_name: str = "body.{}.weight",
) -> onnx.ModelProto:
    """Compose single-domain branch models into one routed multi-domain model with shared weights.

    Args:
        branches: per served domain, in the order of the ids the model takes (the served ``--domains`` list),
            a model ``image [B,3,H,W] -> logits [B,K_d]``.
        convs: per branch, :func:`branch_convs` of the network it was exported from.
        backbone: the backbone's full conv weights by conv name.
        num_classes: ``K_d`` per branch.
        weight_name: initializer name of a conv's weight in the branch models.

    Returns:
        The model: ``image``, ``domain int64 [B]`` -> ``logits [B, K_max]``, ``-inf`` beyond each domain's classes,
        NaN rows for ids that match no branch (outside ``[0, D)``), and NaN in every row when ``domain``'s length
        differs from the image batch (:func:`domain_guard`).

    Raises:
        ExportError: a branch's weights cannot be derived exactly from the shared tensors.
    """
    if not branches or len(branches) != len(convs) or len(branches) != len(num_classes):
        raise ValueError("one branch model, conv map and class count per domain is needed")
    k_max = max(num_classes)
    shared = _SharedWeights.of(convs, backbone, weight_name)
    nodes, inits = _prologue(k_max)
    inits += shared.initializers()
    acc = "route/acc0"
    for d, (model, bcs, k) in enumerate(zip(branches, convs, num_classes, strict=True)):
        nxt = LOGITS if d == len(branches) - 1 else f"d{d}/acc"
        b_nodes, b_inits = _branch(d, model, bcs, k, k_max, shared, acc, nxt)
        nodes += b_nodes
        inits += b_inits
        acc = nxt
    return _assemble(branches[0], nodes, inits, k_max)


@dataclass(frozen=True)
class _SharedWeights:
    """Per conv: the backbone's weight over the union of the branches' kept channels (stored once)."""

    channels: dict[str, tuple[list[int], list[int]]]
    arrays: dict[str, np.ndarray]
    weight_name: str

    @classmethod
    def of(
        cls, convs: Sequence[Mapping[str, BranchConv]], backbone: Mapping[str, np.ndarray], weight_name: str
    ) -> _SharedWeights:
        channels = union_channels(convs)
        arrays = {}
        for n, (u_out, u_in) in channels.items():
            w = np.asarray(backbone[n], dtype=np.float32)
            arrays[n] = np.ascontiguousarray(w[u_out][:, u_in])
        return cls(channels, arrays, weight_name)

    def initializers(self) -> list[TensorProto]:
        return [_const(f"shared.{n}.weight", a) for n, a in self.arrays.items()]

    def conv_of(self, initializer: str) -> str | None:
        """The conv whose weight a branch initializer is (None for other tensors)."""
        return next((n for n in self.channels if self.weight_name.format(n) == initializer), None)


def domain_guard(
    batch: str, domain: str = DOMAIN, out: str = ROUTE_DOMAIN, prefix: str = "route/guard/"
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes computing ``out`` int64 ``[B]``: ``domain`` when it has one id per image, else ``-1`` for every image.

    Routing on ``out`` instead of ``domain`` turns a ``domain`` whose length differs from the batch into NaN rows
    (no branch matches ``-1``) instead of ids paired with the wrong images, or a failed ``Gather``. The length is
    compared at run time: ``Where(Shape(domain) == batch, Slice(Concat(domain, -1s), 0, B), -1s)``, no ``If``.

    Args:
        batch: name of an int64 ``[1]`` tensor holding the image batch size ``B`` (``route/batch`` of
            :func:`_prologue`).
        domain: the ids as the graph takes them.
        out: the name of the guarded ids.
        prefix: prefix of the nodes and initializers made here.
    """
    inits = [_const(f"{prefix}start", np.array([0], np.int64))]
    none = helper.make_tensor(f"{prefix}none_value", TensorProto.INT64, [1], [NO_DOMAIN])
    nodes = [
        helper.make_node("ConstantOfShape", [batch], [f"{prefix}none"], value=none, name=f"{prefix}none"),  # [B]
        helper.make_node("Concat", [domain, f"{prefix}none"], [f"{prefix}padded"], axis=0, name=f"{prefix}pad"),
        helper.make_node(
            "Slice", [f"{prefix}padded", f"{prefix}start", batch], [f"{prefix}ids"], name=f"{prefix}cut"
        ),  # [B]: domain itself when the lengths agree
        helper.make_node("Shape", [domain], [f"{prefix}length"], name=f"{prefix}length"),
        helper.make_node("Equal", [f"{prefix}length", batch], [f"{prefix}same"], name=f"{prefix}same"),  # [1]
        helper.make_node("Where", [f"{prefix}same", f"{prefix}ids", f"{prefix}none"], [out], name=f"{prefix}where"),
    ]
    return nodes, inits


def _prologue(k_max: int, guard: bool = True) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Routing prologue: one NaN row per image, overwritten by the branch its domain id selects.

    With ``guard`` (the default) it also computes :data:`ROUTE_DOMAIN` (:func:`domain_guard`), the ids
    :func:`_select` routes on by default.
    """
    inits = [
        _const("route/nan_row", np.full((1, k_max), np.nan, np.float32)),
        _const("route/k", np.array([k_max], np.int64)),
        _const("route/flat", np.array([-1], np.int64)),
        _const("route/zero", np.array([0], np.int64)),
        _const("route/one", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("Shape", [IMAGE], ["route/image_shape"], name="route/shape"),
        helper.make_node(
            "Slice", ["route/image_shape", "route/zero", "route/one"], ["route/batch"], name="route/batch"
        ),
        helper.make_node("Concat", ["route/batch", "route/k"], ["route/out_shape"], axis=0, name="route/concat"),
        helper.make_node("Expand", ["route/nan_row", "route/out_shape"], ["route/acc0"], name="route/init"),
    ]
    if guard:
        g_nodes, g_inits = domain_guard("route/batch")
        nodes += g_nodes
        inits += g_inits
    return nodes, inits


def _select(d: int, domain: str = ROUTE_DOMAIN) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Branch ``d``'s rows of the batch: ``Equal(domain, d) -> NonZero -> Gather(image)``.

    ``domain`` is the guarded ids of :func:`_prologue` by default; pass :data:`DOMAIN` after ``_prologue(k, guard=False)``.
    """
    p = f"d{d}/"
    nodes = [
        helper.make_node("Equal", [domain, f"{p}id"], [f"{p}mask"], name=f"{p}equal"),
        helper.make_node("NonZero", [f"{p}mask"], [f"{p}nz"], name=f"{p}nonzero"),  # [1, k]
        helper.make_node("Transpose", [f"{p}nz"], [f"{p}rows2"], perm=[1, 0], name=f"{p}rows2"),  # [k, 1]
        helper.make_node("Reshape", [f"{p}rows2", "route/flat"], [f"{p}rows"], name=f"{p}rows"),  # [k]
        helper.make_node("Gather", [IMAGE, f"{p}rows"], [f"{p}{IMAGE}"], axis=0, name=f"{p}select"),
    ]
    return nodes, [_const(f"{p}id", np.array(d, np.int64))]


def _branch_weights(
    d: int, graph: onnx.GraphProto, bcs: Mapping[str, BranchConv], shared: _SharedWeights
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Branch ``d``'s initializers: conv weights derived from the shared tensors (checked exact), others copied."""
    p = f"d{d}/"
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    for t in graph.initializer:
        conv = shared.conv_of(t.name)
        if conv is None:
            inits.append(_renamed(t, p + t.name))
            continue
        steps = _steps(bcs[conv], *shared.channels[conv])
        derived, orig = _apply(shared.arrays[conv], steps), numpy_helper.to_array(t)
        if derived.shape != orig.shape or not np.array_equal(derived, orig):
            raise ExportError(
                f"routed graph: branch {d} weight {t.name} is not a slice of the backbone's {conv}",
                "export with --graph tables and report this bug",
            )
        new_nodes, new_inits = _derive_weight(p + t.name, f"shared.{conv}.weight", steps)
        nodes += new_nodes
        inits += new_inits
    have = {t.name for t in graph.initializer}
    missing = [n for n in shared.channels if shared.weight_name.format(n) not in have]
    if missing:
        raise ExportError(
            f"routed graph: branch {d} has no initializer for conv {missing[0]}",
            "export with --graph tables and report this bug",
        )
    return nodes, inits


def _prefixed(graph: onnx.GraphProto, p: str) -> list[onnx.NodeProto]:
    """The branch graph's nodes with every name prefixed (``image`` becomes the branch's selected rows)."""
    out = []
    for node in graph.node:
        n2 = onnx.NodeProto()
        n2.CopyFrom(node)
        n2.name = p + (node.name or node.output[0])
        n2.input[:] = [p + i if i else i for i in node.input]
        n2.output[:] = [p + o for o in node.output]
        out.append(n2)
    return out


def _branch(
    d: int,
    model: onnx.ModelProto,
    bcs: Mapping[str, BranchConv],
    k: int,
    k_max: int,
    shared: _SharedWeights,
    acc: str,
    nxt: str,
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Branch ``d``: select its rows, run its graph, pad its logits with ``-inf`` and scatter them into ``nxt``."""
    p = f"d{d}/"
    nodes, inits = _select(d)
    w_nodes, w_inits = _branch_weights(d, model.graph, bcs, shared)
    nodes += w_nodes + _prefixed(model.graph, p)
    inits += w_inits
    out = p + model.graph.output[0].name
    if k < k_max:
        inits.append(_const(f"{p}pads", np.array([0, 0, 0, k_max - k], np.int64)))
        inits.append(_const(f"{p}neg_inf", np.array(-np.inf, np.float32)))
        nodes.append(helper.make_node("Pad", [out, f"{p}pads", f"{p}neg_inf"], [f"{p}padded"], name=f"{p}pad"))
        out = f"{p}padded"
    nodes.append(helper.make_node("ScatterND", [acc, f"{p}rows2", out], [nxt], name=f"{p}scatter"))
    return nodes, inits


def _assemble(
    first: onnx.ModelProto, nodes: list[onnx.NodeProto], inits: list[TensorProto], k_max: int
) -> onnx.ModelProto:
    """The routed model: ``image`` (as the branches take it), ``domain int64 [B]`` -> ``logits [B, K_max]``."""
    opset = next(o.version for o in first.opset_import if o.domain in ("", "ai.onnx"))
    image_in = onnx.ValueInfoProto()
    image_in.CopyFrom(first.graph.input[0])
    image_in.name = IMAGE
    batch = image_in.type.tensor_type.shape.dim[0].dim_param or "batch"
    domain_in = helper.make_tensor_value_info(DOMAIN, TensorProto.INT64, [batch])
    logits = helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, [batch, k_max])
    graph = helper.make_graph(nodes, "bap_routed", [image_in, domain_in], [logits], initializer=inits)
    out_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="bap")
    out_model.ir_version = first.ir_version
    return out_model


def _renamed(t: TensorProto, name: str) -> TensorProto:
    t2 = TensorProto()
    t2.CopyFrom(t)
    t2.name = name
    return t2
