"""``bap eval``, ``bap predict`` and ``bap bench``."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
