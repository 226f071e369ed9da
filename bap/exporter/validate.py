"""Validation that is part of export: ``onnx.checker`` (full), then ONNX Runtime against the masked PyTorch model.

Real test images of every served domain are run at batch 1 and in mixed-domain batches; per domain we report
the max |ONNX - PyTorch| over the valid logits, that the padding beyond the domain's classes is ``-inf``, and
top-1 agreement. Pruning only removes channels that contribute exactly zero, so fp32 matches to ~1e-6.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from bap.errors import ExportError

__all__ = [
    "ValidationSamples",
    "check_model",
    "compare_logits",
    "ort_session",
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


def ort_session(path: Path | bytes, threads: int | None = None):
    """A CPU ONNX Runtime session (the reference runtime of validation)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    src = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


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
    path: Path, masked, samples: ValidationSamples, batch_size: int, seed: int = 0
) -> dict[str, Any]:
    """Compare ``path`` (inputs ``image``, ``domain``) with the masked model on every served domain.

    Every sample is run in mixed-domain batches of ``batch_size``; the first four of each domain also alone.
    """
    sess = ort_session(path)
    per: dict[str, dict[str, Any]] = {
        n: {"max_abs_diff": 0.0, "agree": [], "padding_ok": True, "samples": 0, "scale": 0.0} for n in samples.names
    }

    def run(x: torch.Tensor, served: torch.Tensor) -> None:
        rows = torch.tensor([samples.rows[int(s)] for s in served])
        with torch.no_grad():
            ref = masked(x, rows).numpy()
        out = sess.run(["logits"], {"image": x.numpy(), "domain": served.numpy().astype(np.int64)})[0]
        k = np.array([samples.num_classes[int(s)] for s in served])
        kk = min(ref.shape[1], out.shape[1])
        for i, s in enumerate(served.tolist()):
            c = compare_logits(ref[i : i + 1, :kk], out[i : i + 1], k[i : i + 1])
            e = per[samples.names[s]]
            e["max_abs_diff"] = max(e["max_abs_diff"], c["max_abs_diff"])
            e["agree"].append(bool(c["top1_agree"][0]))
            e["padding_ok"] &= c["padding_ok"]
            e["scale"] = max(e["scale"], c["scale"])
            e["samples"] += 1

    # batch 1
    for i, x in enumerate(samples.images):
        for j in range(min(4, x.shape[0])):
            run(x[j : j + 1], torch.tensor([i]))
    # mixed-domain batches
    xs = torch.cat(samples.images)
    ds = torch.cat([torch.full((x.shape[0],), i, dtype=torch.long) for i, x in enumerate(samples.images)])
    perm = torch.randperm(xs.shape[0], generator=torch.Generator().manual_seed(seed))
    xs, ds = xs[perm], ds[perm]
    for i in range(0, xs.shape[0], batch_size):
        run(xs[i : i + batch_size], ds[i : i + batch_size])
    return {
        n: {
            "max_abs_diff": e["max_abs_diff"],
            "top1_agreement": float(np.mean(e["agree"])) if e["agree"] else 1.0,
            "padding_ok": e["padding_ok"],
            "samples": e["samples"],
            "logit_scale": e["scale"],
        }
        for n, e in per.items()
    }


def validate_single(path: Path, reference, x: torch.Tensor, num_classes: int, batch_size: int) -> dict[str, Any]:
    """Compare a single-domain model (input ``image``) with a PyTorch reference callable ``x -> logits``."""
    sess = ort_session(path)
    worst, agree, scale = 0.0, [], 0.0
    for i in range(0, x.shape[0], batch_size):
        xb = x[i : i + batch_size]
        with torch.no_grad():
            ref = reference(xb).numpy()
        out = sess.run(["logits"], {"image": xb.numpy()})[0]
        c = compare_logits(ref[:, :num_classes], out, np.full(xb.shape[0], num_classes))
        worst = max(worst, c["max_abs_diff"])
        scale = max(scale, c["scale"])
        agree.extend(c["top1_agree"].tolist())
    if not agree:
        raise ExportError("no validation images", "the test split is empty")
    return {"max_abs_diff": worst, "top1_agreement": float(np.mean(agree)), "samples": len(agree), "logit_scale": scale}


def within_tolerance(entry: dict[str, Any], atol: float) -> bool:
    """``max|Δ| <= atol * max(1, max|logit|)``: absolute for logits of order 1, relative for large ones."""
    return entry["max_abs_diff"] <= atol * max(1.0, entry.get("logit_scale", 0.0)) and entry.get("padding_ok", True)
