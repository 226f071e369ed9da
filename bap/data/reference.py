"""S-score reference errors of the embedded suite (the ``finetune`` baseline's test errors).

The constants live in ``reference_errors.json`` next to this file, with the command that regenerated them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["REFERENCE_FILE", "reference_errors", "reference_info"]

REFERENCE_FILE = Path(__file__).with_name("reference_errors.json")


@lru_cache(maxsize=1)
def reference_info() -> dict:
    """The whole reference file (errors, command, date), or ``{}`` if absent."""
    if not REFERENCE_FILE.is_file():
        return {}
    return json.loads(REFERENCE_FILE.read_text())


def reference_errors() -> dict[str, float] | None:
    """``{domain: finetune test error}`` of the embedded suite, or ``None`` if not generated."""
    info = reference_info()
    return {k: float(v) for k, v in info.get("errors", {}).items()} or None
