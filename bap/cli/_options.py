"""Option types shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "DataRootOpt",
    "DomainsOpt",
    "JsonOpt",
    "LayoutOpt",
    "QuietOpt",
    "VerboseOpt",
    "parse_csv",
    "parse_floats",
    "parse_ints",
]

DataRootOpt = Annotated[
    Path | None,
    typer.Option("--data-root", help="Data on disk (default: the embedded suite). See --layout.", show_default=False),
]
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="Layout of --data-root: imagefolder (one folder per domain, split and class: ROOT/DOMAIN/SPLIT/CLASS) or "
        "decathlon.",
    ),
]
DomainsOpt = Annotated[
    str | None,
    typer.Option("--domains", help="Comma-separated subset of domains (default: all).", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bars or status lines (stderr); results still print.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log library messages (INFO).")]


def parse_csv(value: str | None) -> tuple[str, ...]:
    """``"a, b"`` -> ``("a", "b")``; empty -> ``()``."""
    if not value or value.strip().lower() == "all":
        return ()
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_floats(value: str, flag: str) -> tuple[float, ...]:
    """Comma-separated floats, or a one-line :class:`ConfigError` naming the flag."""
    from bap.errors import ConfigError

    try:
        out = tuple(float(v) for v in parse_csv(value))
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r} is not a comma-separated list of numbers", f"e.g. {flag} 1.0,0.5"
        ) from None
    if not out:
        raise ConfigError(f"{flag} is empty", f"e.g. {flag} 1.0,0.5")
    return out


def parse_ints(value: str, flag: str) -> tuple[int, ...]:
    """Comma-separated positive integers."""
    from bap.errors import ConfigError

    try:
        out = tuple(int(v) for v in parse_csv(value))
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r} is not a comma-separated list of integers", f"e.g. {flag} 1,8,32"
        ) from None
    if not out or any(v < 1 for v in out):
        raise ConfigError(f"{flag} {value!r} must list integers >= 1", f"e.g. {flag} 1,8,32")
    return out
