"""S-score reference errors: the embedded suite's, the Visual Decathlon's, or a user's JSON file.

- ``reference_errors.json`` (next to this file): the embedded suite's ``finetune`` baseline test errors, with
  the command that regenerated them.
- ``reference_errors_decathlon.json``: the Visual Decathlon's fine-tuned baseline of Rebuffi et al. (NeurIPS
  2017), the reference the Decathlon S-score and the budget-aware pruning papers use.
- ``--reference-errors FILE``: a JSON object ``{domain: error}`` (fractions in (0, 1]) or ``{"errors": {...}}``
  for any other data.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from bap.errors import ConfigError

__all__ = [
    "DECATHLON_REFERENCE_FILE",
    "REFERENCE_FILE",
    "decathlon_reference_errors",
    "load_reference_errors",
    "reference_errors",
    "reference_errors_for",
    "reference_info",
]

log = logging.getLogger(__name__)

REFERENCE_FILE = Path(__file__).with_name("reference_errors.json")
DECATHLON_REFERENCE_FILE = Path(__file__).with_name("reference_errors_decathlon.json")


@lru_cache(maxsize=1)
def reference_info() -> dict:
    """The whole reference file of the embedded suite (errors, command, date), or ``{}`` if absent."""
    if not REFERENCE_FILE.is_file():
        return {}
    return json.loads(REFERENCE_FILE.read_text())


def reference_errors() -> dict[str, float] | None:
    """``{domain: finetune test error}`` of the embedded suite, or ``None`` if not generated."""
    info = reference_info()
    return {k: float(v) for k, v in info.get("errors", {}).items()} or None


@lru_cache(maxsize=1)
def _decathlon() -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(DECATHLON_REFERENCE_FILE.read_text())["errors"].items()}


def decathlon_reference_errors() -> dict[str, float]:
    """``{dataset: error}`` of the Visual Decathlon's fine-tuned baseline (Rebuffi et al. 2017), as fractions."""
    return dict(_decathlon())


def _check_error(path: Path, domain: Any, value: Any) -> float:
    where = f"reference errors {path}: {domain!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} is {value!r}, not a number", "give each domain's error as a fraction, e.g. 0.25")
    if 1.0 < value <= 100.0:
        raise ConfigError(f"{where} is {value}, a percentage?", f"give errors as fractions ({value / 100:g})")
    if not 0.0 < value <= 1.0:
        raise ConfigError(
            f"{where} is {value}, outside (0, 1]",
            "S needs a positive error (Emax = 2 x error); floor it at 1/test images",
        )
    return float(value)


def load_reference_errors(path: str | Path) -> dict[str, float]:
    """Read ``{domain: error}`` (or ``{"errors": {domain: error}}``) from a JSON file.

    Raises:
        ConfigError: unreadable file, invalid JSON, not an object of numbers, an error outside (0, 1] (one line each).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(
            f"cannot read reference errors {path} ({e.strerror or e})", "pass a JSON file {domain: error}"
        ) from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ConfigError(
            f"reference errors {path} is not valid JSON (line {getattr(e, 'lineno', '?')})",
            'write {"domain": error, ...}',
        ) from None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), dict):
        doc = doc["errors"]
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"reference errors {path} is not a non-empty JSON object", 'write {"domain": error, ...}')
    return {str(k): _check_error(path, k, v) for k, v in doc.items()}


def reference_errors_for(
    kind: str | None, domains: Sequence[str], path: str | Path | None = None
) -> dict[str, float] | None:
    """The reference errors that define S for these domains, or ``None`` when there are none.

    A user file (``path``) must name every domain; otherwise the embedded suite uses its own file and Decathlon
    data the fine-tuned baseline of Rebuffi et al. (S is then left out, with a warning, if a domain is not one of
    the ten datasets).

    Raises:
        ConfigError: a bad file, or one that misses a domain.
    """
    if path is not None:
        ref = load_reference_errors(path)
        missing = [d for d in domains if d not in ref]
        if missing:
            raise ConfigError(
                f"reference errors {path} has no error for {', '.join(missing)}", "add every trained domain to the file"
            )
        return ref
    if kind == "embedded":
        return reference_errors()
    if kind == "decathlon":
        ref = decathlon_reference_errors()
        unknown = [d for d in domains if d not in ref]
        if unknown:
            log.warning("no Decathlon reference error for %s: S is not reported (--reference-errors FILE)", unknown)
            return None
        return ref
    return None
