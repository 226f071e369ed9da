"""The export manifest (schema ``bap.export/1``): written as ``manifest.json`` and embedded in the ONNX file.

:func:`validate_manifest` checks a parsed manifest against the schema and raises one-line
:class:`~bap.errors.IncompatibleArtifactError` messages naming the offending key, so a runtime never acts on a
foreign, truncated or hand-edited manifest.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bap.errors import IncompatibleArtifactError

__all__ = [
    "MANIFEST_FORMAT",
    "METADATA_KEY",
    "RESERVED_VALIDATION_KEYS",
    "manifest_from_onnx",
    "read_manifest",
    "validate_manifest",
]

MANIFEST_FORMAT = "bap.export/1"
METADATA_KEY = "bap.manifest"
RESERVED_VALIDATION_KEYS = ("passed", "atol", "allow_mismatch", "models", "batch_sizes")


def _fail(where: str, what: str) -> IncompatibleArtifactError:
    return IncompatibleArtifactError(f"manifest {where}: {what}", "re-export the model with bap export")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _req(doc: dict, key: str, kind: str, where: str = "") -> Any:
    path = f"{where}.{key}" if where else key
    if key not in doc:
        raise _fail(path, "is missing")
    v = doc[key]
    checks = {
        "str": lambda x: isinstance(x, str) and x != "",
        "num": _num,
        "int": _int,
        "bool": lambda x: isinstance(x, bool),
        "dict": lambda x: isinstance(x, dict),
        "list": lambda x: isinstance(x, list),
    }
    if not checks[kind](v):
        raise _fail(
            path,
            f"must be {dict(str='a non-empty string', num='a finite number', int='an integer', bool='true/false', dict='an object', list='a list')[kind]}, got {type(v).__name__}",
        )
    return v


def validate_manifest(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``bap.export/1`` and return it.

    Raises:
        IncompatibleArtifactError: wrong format / version, or a missing or mistyped key (named in the message).
    """
    if not isinstance(doc, dict):
        raise _fail("root", f"must be a JSON object, got {type(doc).__name__}")
    fmt = doc.get("format")
    if fmt != MANIFEST_FORMAT:
        if isinstance(fmt, str) and fmt.startswith("bap.export/"):
            raise IncompatibleArtifactError(
                f"manifest format {fmt} is not supported by this bap (reads {MANIFEST_FORMAT})",
                "upgrade bap or re-export with this version",
            )
        raise _fail("format", f"must be {MANIFEST_FORMAT!r}, got {fmt!r} (not a bap export)")
    domains = _req(doc, "domains", "list")
    if not domains:
        raise _fail("domains", "is empty")
    names = set()
    for i, d in enumerate(domains):
        where = f"domains[{i}]"
        if not isinstance(d, dict):
            raise _fail(where, "must be an object")
        name = _req(d, "name", "str", where)
        if name in names:
            raise _fail(where, f"repeats domain {name!r}")
        if name in RESERVED_VALIDATION_KEYS:
            raise _fail(where, f"domain name {name!r} is reserved")
        names.add(name)
        if _req(d, "index", "int", where) != i:
            raise _fail(f"{where}.index", f"must be {i} (domains are listed in index order)")
        classes = _req(d, "classes", "list", where)
        if len(classes) < 1 or not all(isinstance(c, str) for c in classes):
            raise _fail(f"{where}.classes", "must be a non-empty list of class names")
    inp = _req(doc, "input", "dict")
    shape = _req(inp, "shape", "list", "input")
    if len(shape) != 4 or not all(_int(s) for s in shape) or shape[1] != 3:
        raise _fail("input.shape", f"must be [B, 3, H, W] integers (-1 = dynamic), got {shape}")
    rng = _req(inp, "pixel_range", "list", "input")
    if len(rng) != 2 or not all(_num(v) for v in rng) or not rng[0] < rng[1]:
        raise _fail("input.pixel_range", f"must be [low, high], got {rng}")
    pre = _req(inp, "preprocess", "dict", "input")
    for name in names:
        p = pre.get(name)
        if not isinstance(p, dict):
            raise _fail(f"input.preprocess.{name}", "is missing")
        for k in ("load_size", "crop"):
            v = p.get(k)
            if not (_int(v) and 1 <= v <= 8192):
                raise _fail(f"input.preprocess.{name}.{k}", f"must be an integer in [1, 8192], got {v!r}")
        if p["crop"] > p["load_size"]:
            raise _fail(f"input.preprocess.{name}", "crop is larger than load_size")
    _req(doc, "model", "str")
    budget = _req(doc, "budget", "num")
    if not 0 < budget <= 1:
        raise _fail("budget", f"must be in (0, 1], got {budget}")
    _req(doc, "method", "str")
    _req(doc, "kept_channels", "dict")
    macs = _req(doc, "macs", "dict")
    for k in [*names, "backbone"]:
        if not (_int(macs.get(k)) and macs[k] >= 0):
            raise _fail(f"macs.{k}", "must be a non-negative integer")
    params = _req(doc, "params", "dict")
    for k in ("model", "backbone"):
        if not (_int(params.get(k)) and params[k] >= 0):
            raise _fail(f"params.{k}", "must be a non-negative integer")
    rel = _req(doc, "rel_macs", "dict")
    for k in names:
        if not _num(rel.get(k)):
            raise _fail(f"rel_macs.{k}", "must be a finite number")
    _req(doc, "rel_macs_mean", "num")
    _req(doc, "rel_params", "num")
    val = _req(doc, "validation", "dict")
    _req(val, "passed", "bool", "validation")
    for k in names:
        entry = val.get(k)
        if not isinstance(entry, dict) or not _num(entry.get("max_abs_diff")) or not _num(entry.get("top1_agreement")):
            raise _fail(f"validation.{k}", "must hold max_abs_diff and top1_agreement")
    _req(doc, "versions", "dict")
    src = _req(doc, "source_run", "dict")
    _req(src, "path", "str", "source_run")
    _req(src, "hash", "str", "source_run")
    return doc


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read ``manifest.json`` (or an export directory containing one) and validate it."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise IncompatibleArtifactError(f"no manifest at {path}", "pass an export directory written by bap export")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise IncompatibleArtifactError(f"manifest {path} is not valid JSON ({e})", "re-export the model") from None
    return validate_manifest(doc)


def manifest_from_onnx(model: Any) -> dict[str, Any]:
    """The manifest embedded in an ONNX model's ``metadata_props`` (validated)."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                doc = json.loads(p.value)
            except (json.JSONDecodeError, ValueError) as e:
                raise IncompatibleArtifactError(
                    f"embedded manifest is not valid JSON ({e})", "re-export the model"
                ) from None
            return validate_manifest(doc)
    raise IncompatibleArtifactError(
        "the ONNX file carries no bap manifest (metadata key bap.manifest)", "pass a model written by bap export"
    )
