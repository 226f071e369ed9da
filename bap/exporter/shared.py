"""The ``shared`` layout: routed per-domain branches whose convs hold their common weights once after loading.

``routed`` runs each domain's own specialised branch, but ONNX Runtime folds every branch's weights into its
own tensors at load time, so memory grows with every domain. Here a branch conv is rewritten into blocks
(:mod:`bap.exporter.sharing` decides which): a chain tensor is carried as two tensors, a *core* laid out the
same way in every branch and the branch's *extras*; the ``core x core`` block (``all x core`` for a
residual-stream producer, ``core x all`` / ``all x all`` for a masked stream consumer) is ONE initializer that
every branch's ``Conv`` reads, and only the small per-domain blocks are copies. Because a shared weight cannot
carry a branch's BN scale, the branch applies it after the shared conv as a static ``BatchNormalization``
(scale and bias 0 on core channels the domain does not use, which zeroes them exactly), followed by the
per-domain blocks' ``Conv`` (added) and the ``Relu``. A masked stream consumer first multiplies its input by
the domain's ``{0,1}`` switches, also as a static ``BatchNormalization`` (epsilon 0, variance 1: exact).

ONNX Runtime must not fold those BN nodes into the shared convs (that would make a copy per branch again):
the manifest records ``disabled_optimizers`` for ``ConvBNFusion``, ``ConvMulFusion`` and ``ConvAddFusion``
(``runtime.onnxruntime``), which ``bap.runtime``, ``bap eval`` and ``bap bench`` apply. A plain ONNX Runtime
session without them computes the same logits but holds a folded copy of the shared blocks per branch.

Samples are routed exactly as in ``routed`` (``Equal -> NonZero -> Gather``, ``ScatterND`` back); ids outside
``[0, D)`` give NaN rows. All functions are pure over ``ModelProto`` and numpy arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bap.errors import ExportError
from bap.exporter import routed
from bap.exporter.routed import LOGITS, BranchConv
from bap.exporter.sharing import ConvInfo, SharingPlan

__all__ = ["ORT_DISABLED_OPTIMIZERS", "share_branches"]

# ONNX Runtime rewrite rules that fold a per-branch BN scale into the conv weight before it (one copy per branch)
ORT_DISABLED_OPTIMIZERS = ("ConvBNFusion", "ConvMulFusion", "ConvAddFusion")


@dataclass(frozen=True)
class _Part:
    """One input or output part of a rewritten conv: its tensor name and the backbone channels it carries."""

    tensor: str
    channels: tuple[int, ...]


def extras(keep: Sequence[int], core: Sequence[int], total: int, round_to: int) -> tuple[int, ...]:
    """A domain's channels outside the core, padded to a multiple of ``round_to`` with channels it does not use."""
    ext = sorted(set(keep) - set(core))
    if not ext:
        return ()
    target = min(total - len(core), -(-len(ext) // round_to) * round_to)
    taken = set(keep) | set(core)
    pad = [c for c in range(total) if c not in taken][: target - len(ext)]
    return tuple(sorted(ext + pad))


class _Branch:
    """Rewrites one branch graph; collects its nodes, own initializers and the shared ones it needs."""

    def __init__(
        self,
        d: int,
        model: onnx.ModelProto,
        bcs: Mapping[str, BranchConv],
        infos: Mapping[str, ConvInfo],
        plan: SharingPlan,
        backbone: Mapping[str, np.ndarray],
        shared: dict[str, TensorProto],
        round_to: int,
        weight_name: str,
    ):
        self.d, self.g, self.bcs, self.infos, self.plan = d, model.graph, bcs, infos, plan
        self.backbone, self.shared, self.round_to = backbone, shared, round_to
        self.inits = {t.name: t for t in self.g.initializer}
        self.conv_of = {weight_name.format(n): n for n in infos}
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.nodes: list[onnx.NodeProto] = []
        self.own: list[TensorProto] = []
        self.pairs: dict[str, tuple[_Part, _Part | None]] = {}  # original chain tensor -> (core, extras)
        self.dropped: set[str] = set()  # Relu nodes replaced by the split producers

    # ------------------------------------------------------------------ per-conv facts
    def affine(self, n: str, node: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        """The branch's folded BN scale and bias per backbone output channel (0 where it keeps none)."""
        bc, info = self.bcs[n], self.infos[n]
        s, b = np.zeros(info.out_channels, np.float32), np.zeros(info.out_channels, np.float32)
        s[list(bc.out_keep)] = bc.scale if bc.scale is not None else 1.0
        if len(node.input) > 2 and node.input[2]:
            b[list(bc.out_keep)] = numpy_helper.to_array(self.inits[node.input[2]])
        return s, b

    def col_mask(self, n: str) -> np.ndarray:
        """1 on the input channels this branch reads and uses, 0 elsewhere."""
        bc = self.bcs[n]
        m = np.zeros(self.infos[n].in_channels, np.float32)
        m[list(bc.in_keep)] = 1.0
        m[list(bc.zero_cols)] = 0.0
        return m

    def split_of(self, n: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(core, extras) of the chain tensor conv ``n`` reads, in this branch."""
        core = self.plan.core[n]
        return core, extras(self.bcs[n].in_keep, core, self.infos[n].in_channels, self.round_to)

    # ------------------------------------------------------------------ emitters
    def const(self, name: str, array: np.ndarray) -> str:
        self.own.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def conv(self, tpl: onnx.NodeProto, x: str, w: str, out: str, bias: str | None = None) -> str:
        attrs = {a.name: helper.get_attribute_value(a) for a in tpl.attribute}
        self.nodes.append(helper.make_node("Conv", [x, w] + ([bias] if bias else []), [out], name=out, **attrs))
        return out

    def add(self, a: str, b: str, out: str) -> str:
        self.nodes.append(helper.make_node("Add", [a, b], [out], name=out))
        return out

    def bn(self, x: str, scale: np.ndarray, bias: np.ndarray, out: str) -> str:
        """A static per-channel affine ``x * scale + bias`` as BatchNormalization (exact: mean 0, var 1, eps 0)."""
        c = len(scale)
        names = [self.const(f"{out}/{k}", v) for k, v in
                 (("scale", scale), ("bias", bias), ("mean", np.zeros(c)), ("var", np.ones(c)))]  # fmt: skip
        self.nodes.append(helper.make_node("BatchNormalization", [x, *names], [out], name=out, epsilon=0.0))
        return out

    def shared_weight(self, n: str, rows: Sequence[int], cols: Sequence[int]) -> str:
        w = self.backbone[n]
        tag = "all" if len(rows) == w.shape[0] else "core"
        tag += "_all" if len(cols) == w.shape[1] else "_core"
        name = f"shared.{n}.{tag}"
        block = np.ascontiguousarray(np.asarray(w, np.float32)[list(rows)][:, list(cols)])
        if name in self.shared:
            if not np.array_equal(numpy_helper.to_array(self.shared[name]), block):
                raise ExportError(f"shared graph: branches disagree on the shared block {name}", "report this bug")
        else:
            self.shared[name] = numpy_helper.from_array(block, name)
        return name

    def own_weight(self, n: str, rows: Sequence[int], part: _Part, s: np.ndarray, name: str) -> str:
        w = np.asarray(self.backbone[n], np.float32)[list(rows)][:, list(part.channels)]
        w = w * self.col_mask(n)[list(part.channels)].reshape(1, -1, 1, 1) * s[list(rows)].reshape(-1, 1, 1, 1)
        return self.const(name, w)

    # ------------------------------------------------------------------ the rewrite
    def inputs_of(self, n: str, node: onnx.NodeProto) -> tuple[_Part | None, list[_Part], list[_Part]]:
        """(shared-capable input, inputs for own rows, inputs besides the shared one for shared rows)."""
        info, x = self.infos[n], node.input[0]
        if info.kind == "chain" and n in self.plan.core:
            core, ext = self.pairs[x]
            own = [core] + ([ext] if ext else [])
            return core, own, ([ext] if ext else [])
        mine = _Part(x, tuple(self.bcs[n].in_keep))
        if n not in self.plan.masked:
            return None, [mine], []
        full = x
        if len(mine.channels) < info.in_channels:  # the branch gathers its channels: read the tensor it gathers from
            g = self.producer.get(x)
            if g is None or g.op_type != "Gather":
                raise ExportError(f"shared graph: no channel gather feeds {n} in branch {self.d}", "report this bug")
            full = g.input[0]
        every = tuple(range(info.in_channels))
        masked = self.bn(full, self.col_mask(n), np.zeros(info.in_channels, np.float32), f"{n}/masked_in")
        # own rows read the full-width tensor too (zero columns): a channel Gather would leave the blocked layout
        return _Part(masked, every), [_Part(full, every)], []

    def outputs_of(self, n: str, node: onnx.NodeProto) -> list[tuple[tuple[int, ...], bool, str]]:
        """Per output part: (rows, rows shared by every branch, tensor name)."""
        info = self.infos[n]
        if self.is_split_out(info):
            core, ext = self.split_of(info.consumer)
            parts = [(core, True, f"{n}/core")]
            return parts + ([(ext, False, f"{n}/extras")] if ext else [])
        if info.consumer is None:
            return [(tuple(range(info.out_channels)), True, node.output[0])]
        return [(tuple(self.bcs[n].out_keep), False, node.output[0])]

    def rewrite(self, n: str, node: onnx.NodeProto) -> None:
        """Replace conv ``n`` by its shared and own blocks (see the module docstring)."""
        shared_in, own_in, rest = self.inputs_of(n, node)
        s, b = self.affine(n, node)
        split = self.is_split_out(self.infos[n])
        outs = []
        for i, (rows, rows_shared, out) in enumerate(self.outputs_of(n, node)):
            raw, r = f"{n}/part{i}", list(rows)
            if rows_shared and shared_in is not None:
                # sum the unscaled blocks, then the branch's BN: ONNX Runtime fuses each Add into the conv before
                # it and the residual Add / ReLU into the BN (a blocked depthwise conv), so no pass stands alone
                acc = self.conv(
                    node, shared_in.tensor, self.shared_weight(n, rows, shared_in.channels), f"{raw}/shared"
                )
                for j, part in enumerate(rest):
                    w = self.own_weight(n, rows, part, np.ones_like(s), f"{raw}/w{j}")
                    acc = self.add(self.conv(node, part.tensor, w, f"{raw}/own{j}"), acc, f"{raw}/sum{j}")
                acc = self.bn(acc, s[r], b[r], f"{raw}/bn")
            else:  # a per-domain block only: BN folded into its weights as in the branch
                bias = self.const(f"{raw}/bias", b[r])
                acc = ""
                for j, part in enumerate(own_in):
                    w = self.own_weight(n, rows, part, s, f"{raw}/w{j}")
                    y = self.conv(node, part.tensor, w, f"{raw}/own{j}", bias if j == 0 else None)
                    acc = self.add(y, acc, f"{raw}/sum{j}") if acc else y
            # a split chain output carries the ReLU the original graph applied after the conv
            op = "Relu" if split else "Identity"
            self.nodes.append(helper.make_node(op, [acc], [out], name=f"{out}/{op.lower()}"))
            outs.append(_Part(out, rows))
        if split:
            relu = self.chain_relu(node.output[0], n)
            self.dropped.add(relu.name or relu.output[0])
            self.pairs[relu.output[0]] = (outs[0], outs[1] if len(outs) > 1 else None)

    def is_split_out(self, info: ConvInfo) -> bool:
        return bool(info.consumer) and info.consumer in self.plan.core

    def chain_relu(self, y: str, n: str) -> onnx.NodeProto:
        users = [m for m in self.g.node if y in m.input]
        if len(users) != 1 or users[0].op_type != "Relu":
            raise ExportError(f"shared graph: {n} is not followed by one Relu in branch {self.d}", "report this bug")
        return users[0]

    def run(self) -> None:
        for node in self.g.node:
            if (node.name or node.output[0]) in self.dropped:
                continue
            n = self.conv_of.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
            info = self.infos.get(n) if n else None
            if info is None or not self.is_rewritten(info, node):
                self.nodes.append(node)
                continue
            self.rewrite(n, node)
        self.prune()

    def is_rewritten(self, info: ConvInfo, node: onnx.NodeProto) -> bool:
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        split_in = info.kind == "chain" and info.name in self.plan.core
        return group == 1 and (split_in or self.is_split_out(info) or info.name in self.plan.masked)

    def prune(self) -> None:
        """Drop nodes whose outputs nothing reads (channel gathers a masked conv no longer uses)."""
        needed = {o.name for o in self.g.output}
        kept = []
        for node in reversed(self.nodes):
            if any(o in needed for o in node.output):
                kept.append(node)
                needed.update(i for i in node.input if i)
        self.nodes = kept[::-1]
        used = needed
        self.own = [t for t in self.own if t.name in used]
        self.kept_inits = [t for t in self.g.initializer if t.name in used]


def _prefix(nodes: Sequence[onnx.NodeProto], p: str, keep: set[str]) -> list[onnx.NodeProto]:
    out = []
    for node in nodes:
        n2 = onnx.NodeProto()
        n2.CopyFrom(node)
        n2.name = p + (node.name or node.output[0])
        n2.input[:] = [i if (not i or i in keep) else p + i for i in node.input]
        n2.output[:] = [p + o for o in node.output]
        out.append(n2)
    return out


def share_branches(
    branches: Sequence[onnx.ModelProto],
    convs: Sequence[Mapping[str, BranchConv]],
    infos: Sequence[ConvInfo],
    plan: SharingPlan,
    backbone: Mapping[str, np.ndarray],
    num_classes: Sequence[int],
    round_to: int = 1,
    weight_name: str = "body.{}.weight",
) -> onnx.ModelProto:
    """Compose single-domain branch models into one routed model whose common conv blocks are stored once.

    Args:
        branches: per served domain (in id order), a model ``image [B,3,H,W] -> logits [B,K_d]``.
        convs: per branch, :func:`bap.exporter.routed.branch_convs` of the network it was exported from.
        infos: every conv's shape facts and chain consumer.
        plan: which tensors are split and which stream consumers are masked (:func:`~.sharing.choose_sharing`).
        backbone: the backbone's full conv weights by conv name.
        num_classes: ``K_d`` per branch.
        round_to: the multiple extras are padded to (as the cost model assumed).
        weight_name: initializer name of a conv's weight in the branch models.

    Returns:
        ``image``, ``domain int64 [B]`` -> ``logits [B, K_max]`` (``-inf`` beyond each domain's classes, NaN rows
        for ids outside ``[0, D)``).
    """
    if not branches or len(branches) != len(convs) or len(branches) != len(num_classes):
        raise ValueError("one branch model, conv map and class count per domain is needed")
    info = {i.name: i for i in infos}
    k_max = max(num_classes)
    shared: dict[str, TensorProto] = {}
    nodes, inits = routed._prologue(k_max)
    acc = "route/acc0"
    for d, (model, bcs, k) in enumerate(zip(branches, convs, num_classes, strict=True)):
        br = _Branch(d, model, bcs, info, plan, backbone, shared, round_to, weight_name)
        br.run()
        p = f"d{d}/"
        sel_nodes, sel_inits = routed._select(d)
        nodes += sel_nodes + _prefix(br.nodes, p, keep=set(shared))
        inits += sel_inits + [routed._renamed(t, p + t.name) for t in br.kept_inits + br.own]
        out = p + model.graph.output[0].name
        if k < k_max:
            inits.append(routed._const(f"{p}pads", np.array([0, 0, 0, k_max - k], np.int64)))
            inits.append(routed._const(f"{p}neg_inf", np.array(-np.inf, np.float32)))
            nodes.append(helper.make_node("Pad", [out, f"{p}pads", f"{p}neg_inf"], [f"{p}padded"], name=f"{p}pad"))
            out = f"{p}padded"
        nxt = LOGITS if d == len(branches) - 1 else f"d{d}/acc"
        nodes.append(helper.make_node("ScatterND", [acc, f"{p}rows2", out], [nxt], name=f"{p}scatter"))
        acc = nxt
    return routed._assemble(branches[0], nodes, inits + list(shared.values()), k_max)
