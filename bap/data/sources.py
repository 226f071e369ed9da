"""One entry point for every data source: the embedded suite or a layout on disk."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bap.data.types import DomainSet
from bap.errors import ConfigError, DataError

__all__ = ["load_domains", "load_domains_from_origin"]


def load_domains(
    data_root: str | Path | None = None,
    layout: str = "imagefolder",
    domains: Sequence[str] | None = None,
    seed: int = 0,
) -> DomainSet:
    """Load the domains to train or evaluate on.

    Args:
        data_root: ``None`` for the embedded suite, else a directory in ``layout``.
        layout: ``imagefolder`` or ``decathlon`` (ignored for the embedded suite).
        domains: subset of domain names, in order (default: all). For the embedded suite, a name followed by
            ``-inv`` or ``-rot`` is a derived domain (:func:`bap.data.suite.with_derived`).
        seed: split seed of the embedded suite.
    """
    if data_root is None:
        from bap.data.suite import build_suite, with_derived

        ds = with_derived(build_suite(seed=seed), domains)  # names like mnist-inv: derived on the fly
    else:
        from bap.data.disk import LAYOUTS

        loader = LAYOUTS.get(layout)
        ds = loader(data_root, domains or None)
    ds = ds.select(list(domains) if domains else None)
    if len(ds) == 0:
        raise DataError("no domains selected", "pass at least one domain")
    return ds


def load_domains_from_origin(origin: dict[str, Any], data_root: str | Path | None = None) -> DomainSet:
    """Reload exactly the domains recorded in a run report or export manifest (``origin`` dict).

    Raises:
        ConfigError: ``data_root`` given for a run trained on the embedded suite (it would be ignored).
        DataError: the recorded data root (or ``data_root``) is not a directory.
    """
    kind = origin.get("kind")
    names = origin.get("domains")
    if kind == "embedded":
        if data_root is not None:
            raise ConfigError(
                "this run was trained on the embedded suite; --data-root does not apply", "drop --data-root"
            )
        return load_domains(None, domains=names, seed=int(origin.get("seed", 0)))
    root = data_root or origin.get("root")
    if root is None or not Path(root).is_dir():
        raise DataError(f"the data root recorded for this run ({root}) is not available", "pass --data-root DIR")
    return load_domains(root, layout=str(kind), domains=names)
