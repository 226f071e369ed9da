"""``bap eval``: accuracy of an exported model on every served domain's test split (and the S-score).

The model runs torch-free. With torch installed, the evaluation data (the embedded suite or a data root) comes
from :mod:`bap.data` exactly as in training, so the accuracy equals the trainer's report. Without torch (a
runtime-only install), an ImageFolder data root is read with numpy + Pillow through the model's own preprocessing
(:meth:`Model.load_image`); the embedded suite and the Decathlon layout still need the training extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bap.data.imaging import IMAGE_EXTENSIONS
from bap.errors import ConfigError, DataError, MissingDependencyError
from bap.runtime.api import Model

__all__ = ["evaluate_export"]


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:  # not installed, or blocked (sys.modules["torch"] = None)
        return False
    return True


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
        ConfigError: ``data_root`` given for an export trained on the embedded suite (it would be ignored).
        MissingDependencyError: torch (the training extra) is not installed.
    """
    origin = model.manifest.source_run.data_origin or {"kind": "embedded", "seed": 0}
    if origin.get("kind") == "embedded" and data_root is not None:  # before torch: the same refusal without it
        raise ConfigError(
            "this export was trained on the embedded suite; --data-root does not apply", "drop --data-root"
        )
    if origin.get("kind") == "imagefolder" and not _has_torch():
        return _evaluate_imagefolder(model, data_root or origin.get("root"), split, batch_size, callback)
    torch = _require_torch()
    from bap.core.metrics import s_score
    from bap.data.sources import load_domains_from_origin
    from bap.data.transforms import eval_view

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


def _imagefolder_items(root: Path, name: str, split: str, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of ``ROOT/<name>/<split>/<class>/*``, labels in the manifest's class order."""
    sdir = root / name / split
    if not sdir.is_dir():
        raise DataError(f"{sdir} is missing", "pass the data root the run was trained on (--data-root)")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for cdir in sorted(p for p in sdir.iterdir() if p.is_dir()):
        if cdir.name not in index:
            raise DataError(f"class {cdir.name!r} in {sdir} is not a class of the model", "use the training classes")
        items += [(str(f), index[cdir.name]) for f in sorted(cdir.iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    return items


def _evaluate_imagefolder(model: Model, root: str | None, split: str, batch_size: int, callback: Any) -> dict[str, Any]:
    """Torch-free accuracy on an ImageFolder data root (no S-score: its reference errors exist for the suite)."""
    if root is None or not Path(root).is_dir():
        raise DataError(f"the data root recorded for this export ({root}) is not available", "pass --data-root DIR")
    acc, counts = {}, {}
    for i, name in enumerate(model.domains):
        items = _imagefolder_items(Path(root), name, split, model.classes[name])
        if callback:
            callback.on_phase(f"eval {name}", len(items))
        correct = 0
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            x = np.stack([model.load_image(path, i) for path, _ in chunk])
            z = model.logits(x, i)[:, : len(model.classes[name])]
            correct += int((np.argmax(z, axis=1) == np.array([y for _, y in chunk])).sum())
            if callback:
                callback.on_advance(len(chunk))
        if callback:
            callback.on_phase_end()
        acc[name], counts[name] = correct / max(1, len(items)), len(items)
    return {
        "accuracy": acc,
        "mean_accuracy": sum(acc.values()) / len(acc),
        "s_score": None,
        "samples": counts,
        "split": split,
        "providers": model.backend.providers,
    }
