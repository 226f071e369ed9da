"""The one config dataclass of ``bap export``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bap.errors import ConfigError

__all__ = ["MAX_OPSET", "MIN_OPSET", "ExportConfig"]

MIN_OPSET, MAX_OPSET = 13, 21  # 13: Gather/Unsqueeze with tensor axes; 21: newest the legacy exporter emits
TARGETS = ("onnx", "trt")
GRAPH_CHOICES = ("auto", "tables", "routed", "shared")  # bap.exporter.layouts.LAYOUTS plus auto
PRECISIONS = ("fp32", "fp16")
ROUND_TO = (1, 8, 16, 32)


@dataclass(frozen=True)
class ExportConfig:
    """What ``bap export`` does.

    Attributes:
        run_dir: a ``bap train`` run directory.
        budget: which trained budget to export.
        target: ``onnx`` (ONNX files only) or ``trt`` (also a TensorRT engine, built on this machine).
        graph: how the multi-domain graph is laid out (:mod:`bap.exporter.layouts`): ``tables`` (per-sample
            gathered affine tables over the union of channels), ``routed`` (per-domain branches over shared
            weights) or ``auto`` (``routed`` for ONNX exports of per-domain methods serving several domains, else
            ``tables``).
        precision: ``fp32`` or ``fp16`` (fp16 is carried by the ONNX file: TensorRT 11 is strongly typed).
        domains: domains the compact model serves (empty = all); naming exactly one also writes its
            specialised model.
        specialise: domains that get a single-domain specialised model (``("all",)`` for every one).
        round_to: pad kept channel counts to a multiple of this (1, 8, 16, 32). ONNX Runtime's CPU provider runs
            convs in its blocked NCHWc layout only when channel counts are multiples of 8 (a 50 -> 64 conv stays a
            plain conv), and TensorRT's tensor cores want multiples of 8. The default 8 was the fastest or tied
            with 16 on ResNet-50 and cifar_resnet14 at 224 px while keeping fewer channels
            (``benchmarks/export_defaults.py``, benchmarks/RESULTS.md section 7).
        gather_threshold: stream consumers gather their kept input channels only when they keep at most this
            fraction; above it they read the full-width stream with zero weight columns (no gather).
        max_weights: the most weights the multi-domain model may hold after ONNX Runtime loads it, as a multiple of
            the backbone's: ``shared`` stores common conv blocks once until it fits; ``auto`` picks the fastest
            layout within it.
        batch_size: mixed-domain validation batch, and the TensorRT profile's optimal batch.
        max_batch: largest batch of the TensorRT profile.
        opset: ONNX opset.
        atol: max |ONNX - PyTorch| allowed on the logits (default: the graph layout's declared tolerance for the
            precision, :attr:`bap.exporter.layouts.LayoutContract.atol`).
        out: export directory (default ``exports/<run>-b<budget>``).
        allow_mismatch: publish even when validation fails (the manifest says so).
        data_root: where the run's data lives if it moved (validation images).
        workspace_mb: TensorRT builder workspace limit.
        validation_images: test images per served domain that validation runs through both models.
    """

    run_dir: str
    budget: float | None = None
    target: str = "onnx"
    graph: str = "auto"
    precision: str = "fp32"
    domains: tuple[str, ...] = ()
    specialise: tuple[str, ...] = ()
    round_to: int = 8  # measured: benchmarks/export_defaults.py (RESULTS.md section 7)
    gather_threshold: float = 0.5  # a Gather of most channels costs more than the zero columns it saves
    max_weights: float = 1.0  # issue 14: the multi-domain model holds no more weights than the backbone it replaces
    batch_size: int = 16
    max_batch: int = 64
    opset: int = 17
    atol: float | None = None
    out: str | None = None
    allow_mismatch: bool = False
    data_root: str | None = None
    workspace_mb: int = 1024
    validation_images: int = 16

    def __post_init__(self) -> None:
        for bad, problem, fix in _RULES:
            if bad(self):
                raise ConfigError(problem(self), fix)

    def tolerance(self, layout: str | None = None) -> float:
        """``--atol``, or the validation tolerance ``layout`` declares for the precision.

        Args:
            layout: the resolved graph layout (default: ``graph``; for ``auto``, the strictest layout's).
        """
        if self.atol is not None:
            return self.atol
        from bap.exporter.layouts import LAYOUTS  # torch-heavy; config stays importable without it

        layout = layout or self.graph
        names = LAYOUTS.names() if layout == "auto" else [layout]
        return min(LAYOUTS.get(n).tolerance(self.precision) for n in names)

    def out_dir(self, budget_key: str) -> Path:
        """The export directory."""
        if self.out:
            return Path(self.out)
        return Path("exports") / f"{Path(self.run_dir).resolve().name}-b{budget_key}"

    def to_dict(self) -> dict:
        """JSON form."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _batch_problem(c: ExportConfig) -> str:
    return f"batch sizes must satisfy 1 <= --batch-size ({c.batch_size}) <= --max-batch ({c.max_batch})"


# (is the config bad?, what is wrong, how to fix it): checked in order, the first match is raised
_RULES: tuple[tuple[Callable[[ExportConfig], bool], Callable[[ExportConfig], str], str], ...] = (
    (lambda c: c.target not in TARGETS, lambda c: f"unknown target {c.target!r}", "use --target onnx or trt"),
    (
        lambda c: c.graph not in GRAPH_CHOICES,
        lambda c: f"unknown graph layout {c.graph!r}",
        f"use --graph {', '.join(GRAPH_CHOICES)}",
    ),
    (
        lambda c: c.graph in ("routed", "shared") and c.target == "trt",
        lambda c: (
            f"--graph {c.graph} is for ONNX Runtime (data-dependent routing and runtime settings; not built for "
            "TensorRT)"
        ),
        "use --graph tables (or auto) with --target trt",
    ),
    (
        lambda c: c.precision not in PRECISIONS,
        lambda c: f"unknown precision {c.precision!r}",
        "use --precision fp32 or fp16",
    ),
    (
        lambda c: c.round_to not in ROUND_TO,
        lambda c: f"--round-to must be 1, 8, 16 or 32, got {c.round_to}",
        "fix --round-to",
    ),
    (
        lambda c: not (MIN_OPSET <= c.opset <= MAX_OPSET),
        lambda c: f"opset {c.opset} is not supported",
        f"use --opset between {MIN_OPSET} and {MAX_OPSET}",
    ),
    (
        lambda c: c.budget is not None and not (math.isfinite(c.budget) and 0 < c.budget <= 1),
        lambda c: f"budget {c.budget} is outside (0, 1]",
        "pass a budget the run trained (--budget)",
    ),
    (lambda c: c.batch_size < 1 or c.max_batch < c.batch_size, _batch_problem, "fix --batch-size / --max-batch"),
    (
        lambda c: c.atol is not None and not (math.isfinite(c.atol) and c.atol > 0),
        lambda c: f"--atol must be > 0, got {c.atol}",
        "e.g. --atol 1e-4",
    ),
    (
        lambda c: not c.max_weights > 0,
        lambda c: f"--max-weights must be > 0 (a multiple of the backbone's weights), got {c.max_weights}",
        "use e.g. --max-weights 1.0",
    ),
    (
        lambda c: not (0.0 <= c.gather_threshold <= 1.0),
        lambda c: f"--gather-threshold must be in [0, 1], got {c.gather_threshold}",
        "e.g. --gather-threshold 0.5",
    ),
    (
        lambda c: c.validation_images < 1,
        lambda c: f"--validation-images must be >= 1, got {c.validation_images} (validation needs an image per domain)",
        "e.g. --validation-images 16",
    ),
    (
        lambda c: c.workspace_mb < 16,
        lambda c: f"--workspace-mb {c.workspace_mb} is too small",
        "use >= 16",
    ),
)
