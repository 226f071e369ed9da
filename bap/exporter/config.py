"""The one config dataclass of ``bap export``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from bap.errors import ConfigError

__all__ = ["MAX_OPSET", "MIN_OPSET", "ExportConfig"]

MIN_OPSET, MAX_OPSET = 13, 21  # 13: Gather/Unsqueeze with tensor axes; 21: newest the legacy exporter emits
TARGETS = ("onnx", "trt")
GRAPH_CHOICES = ("auto", "tables", "routed")  # bap.exporter.layouts.LAYOUTS plus auto
PRECISIONS = ("fp32", "fp16")


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
        round_to: pad kept channel counts to a multiple of this (1, 8, 16, 32).
        gather_threshold: stream consumers gather their kept input channels only when they keep at most this
            fraction; above it they read the full-width stream with zero weight columns (no gather).
        batch_size: mixed-domain validation batch, and the TensorRT profile's optimal batch.
        max_batch: largest batch of the TensorRT profile.
        opset: ONNX opset.
        atol: max |ONNX - PyTorch| allowed on the logits (fp32 is expected to match to ~1e-5).
        out: export directory (default ``exports/<run>-b<budget>``).
        allow_mismatch: publish even when validation fails (the manifest says so).
        data_root: where the run's data lives if it moved (validation images).
        workspace_mb: TensorRT builder workspace limit.
    """

    run_dir: str
    budget: float | None = None
    target: str = "onnx"
    graph: str = "auto"
    precision: str = "fp32"
    domains: tuple[str, ...] = ()
    specialise: tuple[str, ...] = ()
    round_to: int = 1
    gather_threshold: float = 0.5
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
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}", "use --target onnx or trt")
        if self.graph not in GRAPH_CHOICES:
            raise ConfigError(f"unknown graph layout {self.graph!r}", f"use --graph {', '.join(GRAPH_CHOICES)}")
        if self.graph == "routed" and self.target == "trt":
            raise ConfigError(
                "--graph routed is for ONNX Runtime (its branch weights are derived in the graph; not built for TensorRT)",
                "use --graph tables (or auto) with --target trt",
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}", "use --precision fp32 or fp16")
        if self.round_to not in (1, 8, 16, 32):
            raise ConfigError(f"--round-to must be 1, 8, 16 or 32, got {self.round_to}", "fix --round-to")
        if not (MIN_OPSET <= self.opset <= MAX_OPSET):
            raise ConfigError(
                f"opset {self.opset} is not supported", f"use --opset between {MIN_OPSET} and {MAX_OPSET}"
            )
        if self.budget is not None and not (math.isfinite(self.budget) and 0 < self.budget <= 1):
            raise ConfigError(f"budget {self.budget} is outside (0, 1]", "pass a budget the run trained (--budget)")
        if self.batch_size < 1 or self.max_batch < self.batch_size:
            raise ConfigError(
                f"batch sizes must satisfy 1 <= --batch-size ({self.batch_size}) <= --max-batch ({self.max_batch})",
                "fix --batch-size / --max-batch",
            )
        if self.atol is not None and not (math.isfinite(self.atol) and self.atol > 0):
            raise ConfigError(f"--atol must be > 0, got {self.atol}", "e.g. --atol 1e-4")
        if not (0.0 <= self.gather_threshold <= 1.0):
            raise ConfigError(
                f"--gather-threshold must be in [0, 1], got {self.gather_threshold}", "e.g. --gather-threshold 0.5"
            )
        if self.validation_images < 1:
            raise ConfigError("validation needs at least one image per domain", "fix --validation-images")
        if self.workspace_mb < 16:
            raise ConfigError(f"--workspace-mb {self.workspace_mb} is too small", "use >= 16")

    @property
    def tolerance(self) -> float:
        """``atol`` or the default for the precision (1e-4 fp32, 5e-2 fp16)."""
        if self.atol is not None:
            return self.atol
        return 1e-4 if self.precision == "fp32" else 5e-2

    def out_dir(self, budget_key: str) -> Path:
        """The export directory."""
        if self.out:
            return Path(self.out)
        return Path("exports") / f"{Path(self.run_dir).resolve().name}-b{budget_key}"

    def to_dict(self) -> dict:
        """JSON form."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
