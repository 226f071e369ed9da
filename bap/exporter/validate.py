"""Validation that is part of export: ``onnx.checker`` (full), then ONNX Runtime against the masked PyTorch model.

Real test images of every served domain are run at batch 1 and in mixed-domain batches; per domain we report
the max |ONNX - PyTorch| over the valid logits, that the padding beyond the domain's classes is ``-inf``, and
top-1 agreement. Pruning only removes channels that contribute exactly zero, so fp32 matches to ~1e-6.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from bap.errors import ExportError, ValidationError
from bap.exporter.manifest import CheckResult, ValidationReport

__all__ = [
    "ValidationMismatchError",
    "ValidationSamples",
    "check_model",
    "compare_logits",
    "held_weights",
    "ort_session",
    "require_passed",
    "validate_multidomain",
    "validate_single",
]

log = logging.getLogger(__name__)


def check_model(path: Path) -> None:
    """``onnx.checker.check_model(full_check=True)`` with a one-line error."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise ExportError(
            f"{path.name} fails onnx.checker: {str(e).splitlines()[0][:300]}", "report this bug"
        ) from None


def ort_session(path: Path | bytes, threads: int | None = None, disabled_optimizers: Sequence[str] = ()):
    """A CPU ONNX Runtime session (the reference runtime of validation), with a layout's disabled optimizers."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(
        src, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers)
    )


def held_weights(path: Path, disabled_optimizers: Sequence[str] = ()) -> int:
    """Float weights ONNX Runtime's CPU provider holds for ``path`` after its load-time optimisations.

    Counted from the initializers of the model ONNX Runtime optimises at load (``optimized_model_filepath``):
    folded constants, BN fused into convs and blocked-layout reorders are what it keeps, not what the file stores.
    """
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(
            str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled_optimizers)
        )
        model = onnx.load(so.optimized_model_filepath, load_external_data=False)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    total = 0
    for t in model.graph.initializer:
        if t.data_type in floats:
            n = 1
            for d in t.dims:
                n *= d
            total += n
    return total


def compare_logits(ref: np.ndarray, out: np.ndarray, num_classes: np.ndarray) -> dict[str, Any]:
    """Max |diff| on each sample's first ``K_d`` logits, ``-inf`` padding beyond, top-1 agreement.

    Returns:
        ``{"max_abs_diff", "top1_agree" (bool per sample), "padding_ok", "scale" (max |ref|)}``.
    """
    n = ref.shape[0]
    diffs, agree, pad_ok = [], [], True
    finite = ref[np.isfinite(ref)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    for i in range(n):
        k = int(num_classes[i])
        r, o = ref[i, :k].astype(np.float64), out[i, :k].astype(np.float64)
        diffs.append(float(np.max(np.abs(r - o))) if k else 0.0)
        agree.append(int(np.argmax(r)) == int(np.argmax(o)))
        if out.shape[1] > k and not np.all(np.isneginf(out[i, k:])):
            pad_ok = False
        if not np.all(np.isfinite(out[i, :k])):
            pad_ok = False
    return {
        "max_abs_diff": max(diffs) if diffs else 0.0,
        "top1_agree": np.array(agree),
        "padding_ok": pad_ok,
        "scale": scale,
    }


@dataclass
class ValidationSamples:
    """Eval-view test images per served domain: ``images[i]`` is ``[n_i, 3, H, W]`` float32 in [0, 1]."""

    names: list[str]
    images: list[torch.Tensor]
    rows: list[int]  # each served domain's index in the masked model
    num_classes: list[int]


def validate_multidomain(
    path: Path,
    masked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    samples: ValidationSamples,
    batch_size: int,
    seed: int = 0,
    io_names: Sequence[str] = ("image", "domain", "logits"),
    disabled_optimizers: Sequence[str] = (),
) -> dict[str, CheckResult]:
    """Compare ``path`` with the masked model on every served domain.

    Every sample is run in mixed-domain batches of ``batch_size``; the first four of each domain also alone.

    Args:
        io_names: the graph's image input, domain input and logits output (its layout's contract).
        disabled_optimizers: ONNX Runtime optimizers the layout's manifest disables (validated as it will run).

    Returns:
        Per served domain, the comparison over all of its samples.
    """
    sess = ort_session(path, disabled_optimizers=disabled_optimizers)
    image, domain, logits = io_names
    per = {n: _Worst() for n in samples.names}

    def run(x: torch.Tensor, served: torch.Tensor) -> None:
        rows = torch.tensor([samples.rows[int(s)] for s in served])
        with torch.no_grad():
            ref = masked(x, rows).numpy()
        out = sess.run([logits], {image: x.numpy(), domain: served.numpy().astype(np.int64)})[0]
        k = np.array([samples.num_classes[int(s)] for s in served])
        kk = min(ref.shape[1], out.shape[1])
        for i, s in enumerate(served.tolist()):
            per[samples.names[s]].add(compare_logits(ref[i : i + 1, :kk], out[i : i + 1], k[i : i + 1]))

    for i, x in enumerate(samples.images):  # batch 1
        for j in range(min(4, x.shape[0])):
            run(x[j : j + 1], torch.tensor([i]))
    xs = torch.cat(samples.images)  # mixed-domain batches
    ds = torch.cat([torch.full((x.shape[0],), i, dtype=torch.long) for i, x in enumerate(samples.images)])
    perm = torch.randperm(xs.shape[0], generator=torch.Generator().manual_seed(seed))
    xs, ds = xs[perm], ds[perm]
    for i in range(0, xs.shape[0], batch_size):
        run(xs[i : i + batch_size], ds[i : i + batch_size])
    return {n: w.result() for n, w in per.items()}


class _Worst:
    """Running worst case of :func:`compare_logits` results."""

    def __init__(self) -> None:
        self.diff, self.scale, self.padding_ok, self.agree = 0.0, 0.0, True, []

    def add(self, c: dict[str, Any]) -> None:
        self.diff = max(self.diff, c["max_abs_diff"])
        self.scale = max(self.scale, c["scale"])
        self.padding_ok &= bool(c["padding_ok"])
        self.agree.extend(bool(a) for a in c["top1_agree"])

    def result(self) -> CheckResult:
        top1 = float(np.mean(self.agree)) if self.agree else 1.0
        return CheckResult(float(self.diff), top1, len(self.agree), float(self.scale), self.padding_ok)


def validate_single(
    path: Path,
    reference: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    num_classes: int,
    batch_size: int,
    io_names: Sequence[str] = ("image", "logits"),
) -> CheckResult:
    """Compare a single-domain model (``image`` -> ``logits``) with a PyTorch reference callable ``x -> logits``."""
    sess = ort_session(path)
    image, logits = io_names
    worst = _Worst()
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        with torch.no_grad():
            ref = reference(xb).numpy()
        out = sess.run([logits], {image: xb.numpy()})[0]
        worst.add(compare_logits(ref[:, :num_classes], out, np.full(xb.shape[0], num_classes)))
    if not worst.agree:
        raise ExportError("no validation images", "the test split is empty")
    return worst.result()


class ValidationMismatchError(ValidationError):
    """An exported file's logits differ from the trained model's beyond tolerance; nothing was published.

    Attributes:
        file: the file of the worst check (``model.onnx``, ``backbone.onnx``, ``specialised-<d>.onnx``).
        domain: the domain whose images showed it.
        max_abs_diff: its max |ONNX - PyTorch|.
        atol: the tolerance.
        report: every check.
    """

    def __init__(self, report: ValidationReport, file: str, domain: str, check: CheckResult, others: int):
        self.report, self.file, self.domain = report, file, domain
        self.max_abs_diff, self.atol = check.max_abs_diff, report.atol
        what = f"max|Δ| {check.max_abs_diff:.2e}" + ("" if check.padding_ok else ", logits padding is not -inf")
        more = f"; {others} more check(s) failed" if others else ""
        super().__init__(
            f"{file} differs from the trained model on domain {domain}: {what} "
            f"(atol {report.atol:g} x max(1, |logit| {check.logit_scale:.3g})){more}; nothing was published",
            "report this bug, or pass --allow-mismatch to publish anyway (marked in the manifest)",
        )


def require_passed(report: ValidationReport, file_domains: Mapping[str, str], model_file: str = "model.onnx") -> None:
    """Raise for a failed report, naming the worst check's file and domain.

    Args:
        report: the validation report (``report.domains`` are checks of ``model_file``, keyed by domain;
            ``report.models`` checks of other files, keyed by file).
        file_domains: the domain whose images checked each file of ``report.models``.
        model_file: the multi-domain model's file name.

    Raises:
        ValidationMismatchError: some check is outside tolerance.
    """
    bad = report.failures()
    if not bad:
        return
    key, check = bad[0]
    if key in report.domains:
        file, domain = model_file, key
    else:
        file, domain = key, file_domains.get(key, "?")
    raise ValidationMismatchError(report, file, domain, check, len(bad) - 1)
