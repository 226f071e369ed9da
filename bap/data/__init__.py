"""Multi-domain data: the embedded default suite (images shipped in pip packages) and loaders for data on disk.

The names below are imported on first use, so ``import bap.data.imaging`` (numpy + Pillow, used by the runtime)
costs no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bap.data.types import Domain, DomainSet, Preprocess, Split, TensorSplit

__all__ = ["Domain", "DomainSet", "Preprocess", "Split", "TensorSplit", "load_domains"]


def __getattr__(name: str) -> Any:
    if name in ("Domain", "DomainSet", "Preprocess", "Split", "TensorSplit"):
        return getattr(importlib.import_module("bap.data.types"), name)
    raise AttributeError(f"module 'bap.data' has no attribute {name!r}")


def load_domains(*args: Any, **kwargs: Any) -> DomainSet:
    """Load domains from the embedded suite or a data root (see :func:`bap.data.sources.load_domains`)."""
    from bap.data.sources import load_domains as _load

    return _load(*args, **kwargs)
