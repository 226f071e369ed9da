"""``bap eval``: accuracy of an exported model on every served domain's test split (and the S-score).

The model runs torch-free; the evaluation data (the embedded suite or a data root, preprocessed as in training)
comes from :mod:`bap.data`, which needs torch: without it ``bap eval`` says to install the training extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bap.errors import MissingDependencyError
from bap.runtime.api import Model

__all__ = ["evaluate_export"]


def _require_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "bap eval needs torch to build the evaluation data (the embedded suite or a data root)",
            "pip install 'bap[train]'",
        ) from None
    return torch


def evaluate_export(
    model: Model, data_root: str | None = None, split: str = "test", batch_size: int = 128, callback=None
) -> dict[str, Any]:
    """Run the exported model over ``split`` of every domain it serves.

    The data is the run's own (embedded suite or the data root recorded in the manifest, or ``data_root``),
    preprocessed exactly as during training evaluation, so the result equals the trainer's report for the
    same run and budget.

    Returns:
        ``{"accuracy": {domain: float}, "mean_accuracy", "s_score", "samples": {domain: int}, "providers"}``.

    Raises:
        MissingDependencyError: torch (the training extra) is not installed.
    """
    torch = _require_torch()
    from bap.core.metrics import s_score
    from bap.data.sources import load_domains_from_origin
    from bap.data.transforms import eval_view

    origin = model.manifest.source_run.data_origin or {"kind": "embedded", "seed": 0}
    ds = load_domains_from_origin(origin, data_root)
    acc, counts = {}, {}
    for i, name in enumerate(model.domains):
        dom = ds.get(name)
        data = dom.split(split)
        k = len(model.classes[name])
        correct = 0
        if callback:
            callback.on_phase(f"eval {name}", len(data))
        for s in range(0, len(data), batch_size):
            idx = torch.arange(s, min(s + batch_size, len(data)))
            x, y = data.get_batch(idx)
            z = model.logits(eval_view(x, dom.preprocess).numpy(), i)
            correct += int((np.argmax(z[:, :k], axis=1) == y.numpy()).sum())
            if callback:
                callback.on_advance(len(idx))
        if callback:
            callback.on_phase_end()
        acc[name] = correct / max(1, len(data))
        counts[name] = len(data)
    ref = None
    if origin.get("kind") == "embedded":
        from bap.data.reference import reference_errors

        ref = reference_errors()
    return {
        "accuracy": acc,
        "mean_accuracy": sum(acc.values()) / len(acc),
        "s_score": s_score(acc, ref) if split == "test" else None,
        "samples": counts,
        "split": split,
        "providers": model.backend.providers,
    }
