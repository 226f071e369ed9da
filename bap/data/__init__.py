"""Multi-domain data: the embedded default suite (images shipped in pip packages) and loaders for data on disk."""

from bap.data.types import Domain, DomainSet, Preprocess, Split, TensorSplit

__all__ = ["Domain", "DomainSet", "Preprocess", "Split", "TensorSplit", "load_domains"]


def load_domains(*args, **kwargs) -> DomainSet:
    """Load domains from the embedded suite or a data root (see :func:`bap.data.sources.load_domains`)."""
    from bap.data.sources import load_domains as _load

    return _load(*args, **kwargs)
