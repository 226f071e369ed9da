"""Bootstrap 95% intervals for test accuracy and the S-score.

Resampling a domain's ``n`` test images with replacement draws its number of correct predictions from
``Binomial(n, k / n)`` (``k`` correct in the original split), so the bootstrap needs only the accuracy and the
split size, and resamples every domain independently. Mean accuracy, S, ``S_O = S / rel MACs`` and
``S_P = S / rel params`` are computed on each resample; an interval is the 2.5th to 97.5th percentile.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["BOOTSTRAP_RESAMPLES", "bootstrap_intervals"]

BOOTSTRAP_RESAMPLES = 2000


def _interval(x: torch.Tensor, level: float) -> list[float]:
    lo, hi = torch.quantile(x, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=x.dtype)).tolist()
    return [round(lo, 6), round(hi, 6)]


def bootstrap_intervals(
    accuracy: Mapping[str, float],
    test_sizes: Mapping[str, int],
    reference_errors: Mapping[str, float] | None = None,
    rel_macs: float | None = None,
    rel_params: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Percentile bootstrap intervals ``[lo, hi]`` of per-domain accuracy, mean accuracy and S (and S_O, S_P).

    Args:
        accuracy: ``{domain: test accuracy}``.
        test_sizes: ``{domain: test images}``.
        reference_errors: the S-score reference (``None``: no S interval).
        rel_macs, rel_params: the run's relative MACs and parameters (fixed: only the test split is resampled).
    """
    g = torch.Generator().manual_seed(seed)
    names = list(accuracy)
    draws = []
    for d in names:
        n = int(test_sizes[d])
        p = min(1.0, max(0.0, round(float(accuracy[d]) * n) / max(1, n)))
        k = torch.binomial(torch.full((resamples,), float(n), dtype=torch.float64),
                           torch.full((resamples,), p, dtype=torch.float64), generator=g)  # fmt: skip
        draws.append(k / max(1, n))
    acc = torch.stack(draws)  # [D, R]
    out: dict[str, Any] = {
        "method": f"percentile bootstrap of the test images, {resamples} resamples per domain (binomial form)",
        "level": level,
        "accuracy": {d: _interval(acc[i], level) for i, d in enumerate(names)},
        "mean_accuracy": _interval(acc.mean(0), level),
    }
    if reference_errors and all(d in reference_errors and reference_errors[d] > 0 for d in names):
        emax = torch.tensor([2.0 * float(reference_errors[d]) for d in names], dtype=torch.float64).unsqueeze(1)
        s = (1000.0 * torch.clamp(emax - (1.0 - acc), min=0.0) ** 2 / emax**2).sum(0)
        out["s_score"] = _interval(s, level)
        if rel_macs:
            out["s_o"] = _interval(s / rel_macs, level)
        if rel_params:
            out["s_p"] = _interval(s / rel_params, level)
    return out
