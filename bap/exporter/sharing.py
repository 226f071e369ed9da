"""Which weights the ``shared`` layout stores once: a core/extras split of every conv, chosen by a cost model.

Every domain's branch runs its own channels (as in ``routed``), but a conv's weight can only be held once by
the runtime when every branch uses the *same* tensor. So each chain tensor (the activation between a conv and
its single consumer conv) may be split into a **core**, the channels used by at least ``m`` of the ``D``
domains, laid out identically in every branch (a branch zeroes the core channels it does not use through its
own BN), and per-domain **extras**, the rest of that domain's channels. A conv whose input and output are both
split keeps one shared ``core x core`` block plus per-domain blocks; a conv with a full-width output (a
residual-stream producer) shares ``all x core``. A stream consumer can share its output rows over its full
input if the branch masks the input per domain first (``masked``).

Lower ``m`` stores less (more channels in the shared block) but runs more (a sample computes core channels
its domain does not use). :func:`choose_sharing` starts from ``routed`` (nothing shared) and greedily applies
the move that saves the most weights per MAC added until the held weights fit ``max_weights`` x the
backbone's, using the plan's exact channel sets. All functions are pure over channel sets.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# what one element of a static BN / mask pass costs in conv MACs: about 50 measured by profiling a ResNet-50
# shared export (ONNX Runtime 1.32 CPU, blocked layout, 2 threads, batch 16; depthwise passes are memory-bound)
PASS_COST = 48.0

__all__ = ["ConvInfo", "SharingCost", "SharingPlan", "choose_sharing", "core_channels", "sharing_cost"]


@dataclass(frozen=True)
class ConvInfo:
    """Shape facts of one conv and its place in the coupling graph.

    Attributes:
        name: conv name.
        kind: ``input``, ``chain`` or ``stream`` (how its input channels are produced).
        in_channels, out_channels: full widths.
        kernel_area: ``kh * kw``.
        out_area: output ``H * W`` at the reference size (MACs per output channel and input channel).
        consumer: the conv that reads this conv's output as a chain, if any.
    """

    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_area: int
    out_area: int
    consumer: str | None
    stride_area: int = 1  # input H*W / output H*W


@dataclass(frozen=True)
class BranchSets:
    """One domain's kept channels of one conv (as its specialised branch reads and writes them)."""

    out_keep: tuple[int, ...]
    in_keep: tuple[int, ...]


@dataclass(frozen=True)
class SharingPlan:
    """What the ``shared`` layout stores once.

    Attributes:
        core: per chain consumer conv (the tensor it reads), the core channels, sorted; absent = not split.
        masked: stream consumers whose core (or full-width) output rows are shared over their full input.
    """

    core: dict[str, tuple[int, ...]] = field(default_factory=dict)
    masked: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, object]:
        """JSON form (counts only) for the manifest."""
        return {"core_channels": {n: len(c) for n, c in self.core.items()}, "masked": sorted(self.masked)}


@dataclass(frozen=True)
class SharingCost:
    """Estimated weights held (conv weights only, each shared block once) and MACs each domain runs."""

    weights: int
    macs: tuple[int, ...]
    passes: tuple[int, ...] = ()  # elements each domain's static BN / mask nodes read (a memory pass each)

    def effort(self, pass_cost: float) -> float:
        """MACs plus the BN passes weighed as ``pass_cost`` MACs per element, summed over domains."""
        return float(sum(self.macs)) + pass_cost * float(sum(self.passes))


def _round(n: int, multiple: int) -> int:
    return 0 if n == 0 else math.ceil(n / multiple) * multiple


def core_channels(keeps: Sequence[Sequence[int]], m: int, total: int, round_to: int = 1) -> tuple[int, ...]:
    """Channels kept by at least ``m`` of the domains, padded to a multiple of ``round_to`` with the most used."""
    count = [0] * total
    for keep in keeps:
        for c in keep:
            count[c] += 1
    core = [c for c in range(total) if count[c] >= m]
    if not core:
        return ()
    target = min(total, _round(len(core), round_to))
    rest = sorted((c for c in range(total) if count[c] < m), key=lambda c: (-count[c], c))
    return tuple(sorted(core + rest[: target - len(core)]))


@functools.lru_cache(maxsize=65536)  # the greedy asks the same (keep, core) pairs for every candidate
def _extras(keep: tuple[int, ...], core: tuple[int, ...], round_to: int) -> int:
    n = len(set(keep) - set(core))
    return _round(n, round_to)


def sharing_cost(
    convs: Sequence[ConvInfo],
    branches: Sequence[Mapping[str, BranchSets]],
    plan: SharingPlan,
    round_to: int = 1,
) -> SharingCost:
    """Weights held and per-domain MACs of the ``shared`` layout for ``plan`` (``routed`` for an empty plan)."""
    n_dom = len(branches)
    weights, macs, passes = 0, [0] * n_dom, [0] * n_dom
    for c in convs:
        per = c.kernel_area
        core_out = plan.core.get(c.consumer) if c.consumer else None
        core_in = plan.core.get(c.name) if c.kind == "chain" else None
        for d, b in enumerate(branches):
            bs = b[c.name]
            ins = len(bs.in_keep)
            if core_out is not None:
                co, eo = len(core_out), _extras(tuple(bs.out_keep), core_out, round_to)
            elif c.consumer is None:  # full-width output: every branch writes every row
                co, eo = c.out_channels, 0
            else:
                co, eo = 0, len(bs.out_keep)
            if core_in is not None:
                ci, ei = len(core_in), _extras(tuple(bs.in_keep), core_in, round_to)
                if d == 0:
                    weights += co * ci * per  # the shared block, held once
                weights += (co * ei + eo * (ci + ei)) * per
                macs[d] += (co + eo) * (ci + ei) * per * c.out_area
                passes[d] += co * c.out_area  # the BN after the shared block
            elif c.name in plan.masked and co:
                # shared rows over the masked full-width input; own rows read it too (zero columns, no gather)
                if d == 0:
                    weights += co * c.in_channels * per
                weights += eo * c.in_channels * per
                macs[d] += (co + eo) * c.in_channels * per * c.out_area
                passes[d] += co * c.out_area + c.in_channels * c.out_area * c.stride_area  # BN after, mask before
            else:
                weights += (co + eo) * ins * per
                macs[d] += (co + eo) * ins * per * c.out_area
    return SharingCost(weights, tuple(macs), tuple(passes))


def _moves(
    convs: Sequence[ConvInfo], plan: SharingPlan, keeps: Mapping[str, list[Sequence[int]]], n_dom: int, round_to: int
) -> list[SharingPlan]:
    """Candidate plans one step from ``plan``: split one tensor at some ``m`` (masking its stream producer too)."""
    producer = {c.consumer: c for c in convs if c.consumer}
    out = []
    for c in convs:
        if c.kind == "chain" and c.name in producer:
            p = producer[c.name]
            for m in range(1, n_dom + 1):
                core = core_channels(keeps[c.name], m, c.in_channels, round_to)
                if not core or plan.core.get(c.name) == core:
                    continue
                masked = plan.masked | ({p.name} if p.kind == "stream" else set())
                out.append(SharingPlan({**plan.core, c.name: core}, frozenset(masked)))
        elif c.kind == "stream" and c.consumer is None and c.name not in plan.masked:
            out.append(SharingPlan(dict(plan.core), plan.masked | {c.name}))
    return out


def choose_sharing(
    convs: Sequence[ConvInfo],
    branches: Sequence[Mapping[str, BranchSets]],
    max_weights: float,
    backbone_weights: int,
    round_to: int = 1,
    pass_cost: float = PASS_COST,
) -> tuple[SharingPlan, SharingCost]:
    """Greedy core/extras plan: the move saving most weights per added MAC, until weights <= the target.

    Returns the plan and its cost; when no move reaches the target, the leanest plan found (callers compare the
    cost with the target and say so).
    """
    keeps = {c.name: [b[c.name].in_keep for b in branches] for c in convs}
    plan = SharingPlan()
    cost = sharing_cost(convs, branches, plan, round_to)
    target = max_weights * backbone_weights
    while cost.weights > target:
        best: tuple[float, SharingPlan, SharingCost] | None = None
        for cand in _moves(convs, plan, keeps, len(branches), round_to):
            cc = sharing_cost(convs, branches, cand, round_to)
            saved = cost.weights - cc.weights
            if saved <= 0:
                continue
            score = (cc.effort(pass_cost) - cost.effort(pass_cost)) / saved
            if best is None or score < best[0]:
                best = (score, cand, cc)
        if best is None:
            break
        _, plan, cost = best
    return plan, cost
