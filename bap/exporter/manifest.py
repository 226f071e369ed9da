"""The export contract (schema ``bap.export/1``): typed, written as ``manifest.json`` and embedded in the ONNX file.

:class:`Manifest` and its parts are frozen dataclasses; :meth:`Manifest.to_dict` and :meth:`Manifest.from_dict`
are the only (de)serialisation. ``from_dict`` checks every field it reads and raises one-line
:class:`~bap.errors.IncompatibleArtifactError` messages naming the offending key, so a runtime never acts on a
foreign, truncated or hand-edited manifest. Fields added after the first ``bap.export/1`` exports (``graph``,
``macs_executed``, ``params.loaded``, ``runtime``, ``files``) are optional, so older exports still load.

This module imports neither torch nor onnx: the runtime reads manifests on devices without them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bap.errors import IncompatibleArtifactError, IntegrityError

__all__ = [
    "MANIFEST_FORMAT",
    "METADATA_KEY",
    "RESERVED_VALIDATION_KEYS",
    "CheckResult",
    "DomainEntry",
    "FileEntry",
    "InputSpec",
    "Macs",
    "Manifest",
    "OrtSettings",
    "OutputSpec",
    "Params",
    "PreprocessSpec",
    "RuntimeSettings",
    "SourceRun",
    "SpecialisedEntry",
    "ValidationReport",
    "manifest_from_onnx",
    "read_manifest",
    "validate_manifest",
]

MANIFEST_FORMAT = "bap.export/1"
METADATA_KEY = "bap.manifest"
RESERVED_VALIDATION_KEYS = ("passed", "atol", "allow_mismatch", "models", "batch_sizes")
PREPROCESS_POLICY = "resize shorter side to load_size, center-crop load_size, center-crop crop"


# ------------------------------------------------------------------------------------------------ field readers
def _fail(where: str, what: str) -> IncompatibleArtifactError:
    return IncompatibleArtifactError(f"manifest {where}: {what}", "re-export the model with bap export")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda x: isinstance(x, str) and x != "", "a non-empty string"),
    "num": (_is_num, "a finite number"),
    "int": (_is_int, "an integer"),
    "nat": (lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    "bool": (lambda x: isinstance(x, bool), "true/false"),
    "dict": (lambda x: isinstance(x, dict), "an object"),
    "list": (lambda x: isinstance(x, list), "a list"),
    "label": (lambda x: isinstance(x, (str, dict)), "a name or an object"),
}


class _Reader:
    """Typed access to one JSON object, with error messages that name the key's path."""

    def __init__(self, doc: Any, where: str = ""):
        if not isinstance(doc, dict):
            raise _fail(where or "root", f"must be a JSON object, got {type(doc).__name__}")
        self.doc, self.where = doc, where

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: str, default: Any = ...) -> Any:
        if key not in self.doc or (self.doc[key] is None and default is not ...):
            if default is ...:
                raise _fail(self.path(key), "is missing")
            return default
        v = self.doc[key]
        check, what = _KINDS[kind]
        if not check(v):
            raise _fail(self.path(key), f"must be {what}, got {type(v).__name__}")
        return v

    def sub(self, key: str, default: Any = ...) -> _Reader:
        return _Reader(self.get(key, "dict", default), self.path(key))

    def items(self) -> Iterable[tuple[str, Any]]:
        return self.doc.items()


def _num_map(r: _Reader, keys: Iterable[str], kind: str = "num") -> dict[str, Any]:
    return {k: r.get(k, kind) for k in keys}


# ------------------------------------------------------------------------------------------------ parts
@dataclass(frozen=True)
class DomainEntry:
    """One served domain: its id in the ``domain`` input and its class names (logit order)."""

    name: str
    index: int
    classes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "index": self.index, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, doc: Any, where: str, index: int) -> DomainEntry:
        r = _Reader(doc, where)
        name = r.get("name", "str")
        if name in RESERVED_VALIDATION_KEYS:
            raise _fail(where, f"domain name {name!r} is reserved")
        if r.get("index", "int") != index:
            raise _fail(f"{where}.index", f"must be {index} (domains are listed in index order)")
        classes = r.get("classes", "list")
        if not classes or not all(isinstance(c, str) for c in classes):
            raise _fail(f"{where}.classes", "must be a non-empty list of class names")
        return cls(name, index, tuple(classes))


@dataclass(frozen=True)
class PreprocessSpec:
    """How a domain's images become inputs: resize + center-crop ``load_size``, center-crop ``crop``."""

    load_size: int
    crop: int
    pad: int = 0
    flip: bool = False
    policy: str = PREPROCESS_POLICY

    def to_dict(self) -> dict[str, Any]:
        return {
            "load_size": self.load_size,
            "crop": self.crop,
            "pad": self.pad,
            "flip": self.flip,
            "policy": self.policy,
        }

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> PreprocessSpec:
        if not isinstance(doc, dict):
            raise _fail(where, "is missing")
        r = _Reader(doc, where)
        for k in ("load_size", "crop"):
            v = doc.get(k)
            if not (_is_int(v) and 1 <= v <= 8192):
                raise _fail(f"{where}.{k}", f"must be an integer in [1, 8192], got {v!r}")
        if doc["crop"] > doc["load_size"]:
            raise _fail(where, "crop is larger than load_size")
        return cls(
            doc["load_size"], doc["crop"], r.get("pad", "nat", 0), r.get("flip", "bool", False),
            r.get("policy", "str", PREPROCESS_POLICY),
        )  # fmt: skip


@dataclass(frozen=True)
class InputSpec:
    """The ``image`` input (and the per-sample ``domain`` input of multi-domain models)."""

    shape: tuple[int, int, int, int]
    preprocess: dict[str, PreprocessSpec]
    pixel_range: tuple[float, float] = (0.0, 1.0)
    name: str = "image"
    dtype: str = "float32"
    layout: str = "NCHW"
    color: str = "RGB"
    dynamic: tuple[str, ...] = ("batch", "height", "width")
    domain_input: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "domain", "dtype": "int64", "shape": [-1], "meaning": "index into domains, per sample",
        }
    )  # fmt: skip
    normalization: str = "per-domain mean/std applied inside the model"

    @property
    def size(self) -> int:
        """The square spatial size the model was exported at."""
        return int(self.shape[2])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout,
            "color": self.color, "pixel_range": list(self.pixel_range), "dynamic": list(self.dynamic),
            "domain_input": dict(self.domain_input), "preprocess": {k: v.to_dict() for k, v in self.preprocess.items()},
            "normalization": self.normalization,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any, names: list[str]) -> InputSpec:
        r = _Reader(doc, "input")
        shape = r.get("shape", "list")
        if len(shape) != 4 or not all(_is_int(s) for s in shape) or shape[1] != 3:
            raise _fail("input.shape", f"must be [B, 3, H, W] integers (-1 = dynamic), got {shape}")
        rng = r.get("pixel_range", "list")
        if len(rng) != 2 or not all(_is_num(v) for v in rng) or not rng[0] < rng[1]:
            raise _fail("input.pixel_range", f"must be [low, high], got {rng}")
        pre = r.sub("preprocess")
        spec = {n: PreprocessSpec.from_dict(pre.doc.get(n), f"input.preprocess.{n}") for n in names}
        return cls(
            tuple(shape), spec, (float(rng[0]), float(rng[1])),
            r.get("name", "str", "image"), r.get("dtype", "str", "float32"), r.get("layout", "str", "NCHW"),
            r.get("color", "str", "RGB"), tuple(r.get("dynamic", "list", ["batch", "height", "width"])),
            r.get("domain_input", "dict", cls.__dataclass_fields__["domain_input"].default_factory()),
            r.get("normalization", "str", cls.normalization),
        )  # fmt: skip


@dataclass(frozen=True)
class OutputSpec:
    """The ``logits`` output: ``[B, K_max]``, ``-inf`` beyond each domain's classes."""

    shape: tuple[int, int]
    name: str = "logits"
    padding: str = "-inf beyond each domain's classes"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "padding": self.padding}

    @classmethod
    def from_dict(cls, doc: Any, k_max: int) -> OutputSpec:
        if doc is None:
            return cls((-1, k_max))
        r = _Reader(doc, "output")
        shape = r.get("shape", "list", [-1, k_max])
        return cls(tuple(shape), r.get("name", "str", "logits"), r.get("padding", "str", cls.padding))


@dataclass(frozen=True)
class Macs:
    """Conv MACs per sample: each domain's own network, the exported model (mean over domains), the backbone."""

    per_domain: dict[str, int]
    model: int
    backbone: int

    def to_dict(self) -> dict[str, int]:
        return {**self.per_domain, "model": self.model, "backbone": self.backbone}

    @classmethod
    def from_dict(cls, doc: Any, names: list[str]) -> Macs:
        r = _Reader(doc, "macs")
        per = _num_map(r, [*names, "backbone"], "nat")
        model = r.get("model", "num", per["backbone"])
        return cls({n: per[n] for n in names}, round(model), per["backbone"])


@dataclass(frozen=True)
class Params:
    """Float weights: stored in the model file, held after the runtime loads it, and the backbone's."""

    model: int
    backbone: int
    loaded: int | None = None
    model_bits: int | None = None
    backbone_bits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "loaded": self.loaded, "backbone": self.backbone,
            "model_bits": self.model_bits, "backbone_bits": self.backbone_bits,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any) -> Params:
        r = _Reader(doc, "params")
        return cls(
            r.get("model", "nat"), r.get("backbone", "nat"), r.get("loaded", "nat", None),
            r.get("model_bits", "nat", None), r.get("backbone_bits", "nat", None),
        )  # fmt: skip


@dataclass(frozen=True)
class CheckResult:
    """One validation comparison: ONNX Runtime against the trained PyTorch model."""

    max_abs_diff: float
    top1_agreement: float
    samples: int = 0
    logit_scale: float = 0.0
    padding_ok: bool = True

    def within(self, atol: float) -> bool:
        """``max|Δ| <= atol * max(1, max|logit|)``: absolute for logits of order 1, relative for large ones."""
        return self.max_abs_diff <= atol * max(1.0, self.logit_scale) and self.padding_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement, "padding_ok": self.padding_ok,
            "samples": self.samples, "logit_scale": self.logit_scale,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> CheckResult:
        if not isinstance(doc, dict) or not _is_num(doc.get("max_abs_diff")) or not _is_num(doc.get("top1_agreement")):
            raise _fail(where, "must hold max_abs_diff and top1_agreement")
        r = _Reader(doc, where)
        return cls(
            float(doc["max_abs_diff"]), float(doc["top1_agreement"]), r.get("samples", "nat", 0),
            float(r.get("logit_scale", "num", 0.0)), r.get("padding_ok", "bool", True),
        )  # fmt: skip


@dataclass(frozen=True)
class ValidationReport:
    """Every comparison the exporter made before publishing, and whether all were within tolerance."""

    domains: dict[str, CheckResult]
    models: dict[str, CheckResult]
    atol: float
    passed: bool
    allow_mismatch: bool = False
    batch_sizes: tuple[int, ...] = (1,)

    @classmethod
    def judge(
        cls, domains: dict[str, CheckResult], models: dict[str, CheckResult], atol: float, **kw: Any
    ) -> ValidationReport:
        """A report whose ``passed`` says whether every check is within ``atol``."""
        ok = all(c.within(atol) for c in [*domains.values(), *models.values()])
        return cls(domains, models, atol, ok, **kw)

    def failures(self) -> list[tuple[str, CheckResult]]:
        """The checks outside tolerance, worst first."""
        bad = [(k, c) for k, c in [*self.domains.items(), *self.models.items()] if not c.within(self.atol)]
        return sorted(bad, key=lambda kc: -kc[1].max_abs_diff)

    def lines(self) -> list[str]:
        """One human line per check."""
        out = []
        for k, c in [*self.domains.items(), *self.models.items()]:
            mark = "ok" if c.within(self.atol) else "fail"
            out.append(f"[{mark}] {k}: max|Δ| {c.max_abs_diff:.2e}, top-1 agreement {100 * c.top1_agreement:.1f}%")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: c.to_dict() for k, c in self.domains.items()},
            "passed": self.passed, "atol": self.atol, "allow_mismatch": self.allow_mismatch,
            "models": {k: c.to_dict() for k, c in self.models.items()}, "batch_sizes": list(self.batch_sizes),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any, names: list[str]) -> ValidationReport:
        r = _Reader(doc, "validation")
        passed = r.get("passed", "bool")
        domains = {n: CheckResult.from_dict(r.doc.get(n), f"validation.{n}") for n in names}
        models = {k: CheckResult.from_dict(v, f"validation.models.{k}") for k, v in r.sub("models", {}).items()}
        return cls(
            domains, models, float(r.get("atol", "num", 1e-4)), passed, r.get("allow_mismatch", "bool", False),
            tuple(r.get("batch_sizes", "list", [1])),
        )  # fmt: skip


@dataclass(frozen=True)
class FileEntry:
    """One file of the export, with the checksum every reader verifies."""

    sha256: str
    bytes: int
    role: str

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes, "role": self.role}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> FileEntry:
        r = _Reader(doc, where)
        return cls(r.get("sha256", "str"), r.get("bytes", "nat"), r.get("role", "str", "file"))


@dataclass(frozen=True)
class SpecialisedEntry:
    """A single-domain model written beside the multi-domain one."""

    file: str
    macs: int
    rel_macs: float

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "macs": self.macs, "rel_macs": self.rel_macs}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> SpecialisedEntry:
        r = _Reader(doc, where)
        return cls(r.get("file", "str"), r.get("macs", "nat"), float(r.get("rel_macs", "num", 0.0)))


@dataclass(frozen=True)
class OrtSettings:
    """What ONNX Runtime needs to run the model as it was measured (applied by ``bap.runtime``)."""

    disabled_optimizers: tuple[str, ...] = ()
    session_config: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"disabled_optimizers": list(self.disabled_optimizers), "session_config": dict(self.session_config)}

    @classmethod
    def from_dict(cls, doc: Any) -> OrtSettings:
        r = _Reader(doc, "runtime.onnxruntime")
        opts = r.get("disabled_optimizers", "list", [])
        cfg = r.get("session_config", "dict", {})
        if not all(isinstance(o, str) for o in opts):
            raise _fail("runtime.onnxruntime.disabled_optimizers", "must be a list of optimizer names")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in cfg.items()):
            raise _fail("runtime.onnxruntime.session_config", "must map strings to strings")
        return cls(tuple(opts), dict(cfg))


@dataclass(frozen=True)
class RuntimeSettings:
    """Runtime settings that are part of the contract, per runtime."""

    onnxruntime: OrtSettings = field(default_factory=OrtSettings)

    def to_dict(self) -> dict[str, Any]:
        return {"onnxruntime": self.onnxruntime.to_dict()}

    @classmethod
    def from_dict(cls, doc: Any) -> RuntimeSettings:
        if doc is None:
            return cls()
        r = _Reader(doc, "runtime")
        return cls(OrtSettings.from_dict(r.get("onnxruntime", "dict", {})))


@dataclass(frozen=True)
class SourceRun:
    """The trained run and budget an export was made from."""

    path: str
    hash: str
    budget: str | None = None
    config_sha256: str | None = None
    data_origin: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "budget": self.budget, "hash": self.hash, "config_sha256": self.config_sha256,
            "data_origin": self.data_origin,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any) -> SourceRun:
        r = _Reader(doc, "source_run")
        return cls(
            r.get("path", "str"), r.get("hash", "str"), r.get("budget", "str", None),
            r.get("config_sha256", "str", None), r.get("data_origin", "dict", None),
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the manifest
@dataclass(frozen=True)
class Manifest:
    """Everything a runtime, a benchmark or a person needs to know about an export.

    Opaque, descriptive parts (``kept_channels``, ``plan_summary``, ``graph_facts``, ``trt_readiness``,
    ``engine``, ``export_config``) are kept as the JSON the exporter wrote; everything a program acts on is typed.
    """

    domains: tuple[DomainEntry, ...]
    input: InputSpec
    output: OutputSpec
    budget: float
    method: str
    macs: Macs
    params: Params
    rel_macs: dict[str, float]
    rel_macs_mean: float
    rel_params: float
    validation: ValidationReport
    versions: dict[str, Any]
    source_run: SourceRun
    kept_channels: dict[str, Any]
    model: str = "model.onnx"
    graph: str = "tables"
    budget_unit: str | None = None
    lambda_ps: float | None = None
    criterion: str | dict[str, Any] | None = None  # dgprune records its importance settings
    precision: str = "fp32"
    opset: int | None = None
    round_to: int = 1
    plan_summary: list[dict[str, Any]] = field(default_factory=list)
    macs_executed: dict[str, int] = field(default_factory=dict)
    rel_macs_executed: float | None = None
    graph_facts: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, float | None] = field(default_factory=dict)
    trt_readiness: dict[str, Any] = field(default_factory=dict)
    onnx_ops: dict[str, int] = field(default_factory=dict)
    specialised: dict[str, SpecialisedEntry] = field(default_factory=dict)
    backbone_model: dict[str, Any] = field(default_factory=lambda: {"file": "backbone.onnx"})
    engine: dict[str, Any] | None = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    export_config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: str | None = None
    format: str = MANIFEST_FORMAT

    # -------------------------------------------------------------------------------------- convenience
    @property
    def domain_names(self) -> list[str]:
        """Served domain names; the position is the domain id."""
        return [d.name for d in self.domains]

    @property
    def classes(self) -> dict[str, list[str]]:
        """Class names per domain."""
        return {d.name: list(d.classes) for d in self.domains}

    @property
    def k_max(self) -> int:
        """Width of the logits (the largest class count)."""
        return max(len(d.classes) for d in self.domains)

    @property
    def backbone_file(self) -> str:
        """The unpruned backbone's ONNX file."""
        return str(self.backbone_model.get("file", "backbone.onnx"))

    def executed_macs(self, domains: list[str] | None = None) -> float:
        """MACs per sample over an even mix of ``domains`` (routed graphs run each sample's own branch)."""
        domains = domains or self.domain_names
        if self.macs_executed and all(d in self.macs_executed for d in domains):
            return sum(self.macs_executed[d] for d in domains) / len(domains)
        return float(self.macs.model)

    def embedded(self) -> dict[str, Any]:
        """The JSON embedded in ``model.onnx`` (without ``files``: a file cannot carry its own checksum)."""
        d = self.to_dict()
        d.pop("files")
        return d

    def with_files(self, files: Mapping[str, FileEntry]) -> Manifest:
        """A copy listing ``files`` (merged over the ones already listed)."""
        return replace(self, files={**self.files, **files})

    # -------------------------------------------------------------------------------------- integrity
    def verify_files(self, root: str | Path, names: Iterable[str] | None = None) -> None:
        """Check files of the export against their recorded size and sha256.

        Args:
            root: the export directory.
            names: the files to check (default: every file listed).

        Raises:
            IntegrityError: a file is missing, truncated or modified (named in the message).
        """
        from bap.core.io import file_sha256  # torch-free; imported late to keep this module dependency-light

        root = Path(root)
        for name in list(names) if names is not None else list(self.files):
            p = root / name
            if not p.is_file():
                raise IntegrityError(f"{p} is missing from the export", "re-export the model (bap export)")
            info = self.files.get(name)
            if info is None:
                continue  # exports written before files were listed carry no checksum for it
            size = p.stat().st_size
            if size != info.bytes:
                what = "truncated" if size < info.bytes else "modified"
                raise IntegrityError(
                    f"{p} is {what}: {size} bytes, manifest.json records {info.bytes}", "re-export the model"
                )
            if file_sha256(p) != info.sha256:
                raise IntegrityError(f"{p} is modified: its sha256 differs from manifest.json", "re-export the model")

    # -------------------------------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``manifest.json``)."""
        return {
            "format": self.format, "created": self.created, "model": self.model,
            "domains": [d.to_dict() for d in self.domains], "input": self.input.to_dict(),
            "output": self.output.to_dict(), "budget": self.budget, "budget_unit": self.budget_unit,
            "method": self.method, "lambda_ps": self.lambda_ps, "criterion": self.criterion,
            "precision": self.precision, "opset": self.opset, "round_to": self.round_to, "graph": self.graph,
            "kept_channels": self.kept_channels, "plan_summary": self.plan_summary, "macs": self.macs.to_dict(),
            "macs_executed": dict(self.macs_executed), "params": self.params.to_dict(), "rel_macs": dict(self.rel_macs),
            "rel_macs_mean": self.rel_macs_mean, "rel_macs_executed": self.rel_macs_executed,
            "graph_facts": self.graph_facts, "rel_params": self.rel_params, "accuracy": dict(self.accuracy),
            "validation": self.validation.to_dict(), "trt_readiness": self.trt_readiness, "onnx_ops": self.onnx_ops,
            "specialised": {k: v.to_dict() for k, v in self.specialised.items()},
            "backbone_model": dict(self.backbone_model), "engine": self.engine, "runtime": self.runtime.to_dict(),
            "versions": self.versions, "source_run": self.source_run.to_dict(), "export_config": self.export_config,
            "files": {k: v.to_dict() for k, v in self.files.items()},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Any) -> Manifest:
        """Parse and check a manifest.

        Raises:
            IncompatibleArtifactError: wrong format / version, or a missing or mistyped key (named in the message).
        """
        r = _Reader(doc)
        _check_format(doc.get("format"))
        domains = _domains(r)
        names = [d.name for d in domains]
        budget = r.get("budget", "num")
        if not 0 < budget <= 1:
            raise _fail("budget", f"must be in (0, 1], got {budget}")
        rel = r.sub("rel_macs")
        return cls(
            domains=domains,
            input=InputSpec.from_dict(r.get("input", "dict"), names),
            output=OutputSpec.from_dict(r.get("output", "dict", None), max(len(d.classes) for d in domains)),
            budget=float(budget),
            method=r.get("method", "str"),
            macs=Macs.from_dict(r.get("macs", "dict"), names),
            params=Params.from_dict(r.get("params", "dict")),
            rel_macs={k: float(v) for k, v in _num_map(rel, names).items()},
            rel_macs_mean=float(r.get("rel_macs_mean", "num")),
            rel_params=float(r.get("rel_params", "num")),
            validation=ValidationReport.from_dict(r.get("validation", "dict"), names),
            versions=r.get("versions", "dict"),
            source_run=SourceRun.from_dict(r.get("source_run", "dict")),
            kept_channels=r.get("kept_channels", "dict"),
            **_optional_fields(r),
        )


def _check_format(fmt: Any) -> None:
    if fmt == MANIFEST_FORMAT:
        return
    if isinstance(fmt, str) and fmt.startswith("bap.export/"):
        raise IncompatibleArtifactError(
            f"manifest format {fmt} is not supported by this bap (reads {MANIFEST_FORMAT})",
            "upgrade bap or re-export with this version",
        )
    raise _fail("format", f"must be {MANIFEST_FORMAT!r}, got {fmt!r} (not a bap export)")


def _domains(r: _Reader) -> tuple[DomainEntry, ...]:
    items = r.get("domains", "list")
    if not items:
        raise _fail("domains", "is empty")
    out = tuple(DomainEntry.from_dict(d, f"domains[{i}]", i) for i, d in enumerate(items))
    seen: set[str] = set()
    for i, d in enumerate(out):
        if d.name in seen:
            raise _fail(f"domains[{i}]", f"repeats domain {d.name!r}")
        seen.add(d.name)
    return out


def _optional_fields(r: _Reader) -> dict[str, Any]:
    """Fields with defaults: descriptive JSON, and keys added after the first ``bap.export/1`` exports."""
    spec = r.sub("specialised", {})
    files = r.sub("files", {})
    lam = r.get("lambda_ps", "num", None)
    rme = r.get("rel_macs_executed", "num", None)
    return {
        "model": r.get("model", "str"),
        "graph": r.get("graph", "str", "tables"),
        "budget_unit": r.get("budget_unit", "str", None),
        "lambda_ps": None if lam is None else float(lam),
        "criterion": r.get("criterion", "label", None),
        "precision": r.get("precision", "str", "fp32"),
        "opset": r.get("opset", "int", None),
        "round_to": r.get("round_to", "int", 1),
        "plan_summary": r.get("plan_summary", "list", []),
        "macs_executed": _num_map(r.sub("macs_executed", {}), r.get("macs_executed", "dict", {}), "nat"),
        "rel_macs_executed": None if rme is None else float(rme),
        "graph_facts": r.get("graph_facts", "dict", {}),
        "accuracy": r.get("accuracy", "dict", {}),
        "trt_readiness": r.get("trt_readiness", "dict", {}),
        "onnx_ops": r.get("onnx_ops", "dict", {}),
        "specialised": {k: SpecialisedEntry.from_dict(v, f"specialised.{k}") for k, v in spec.items()},
        "backbone_model": r.get("backbone_model", "dict", {"file": "backbone.onnx"}),
        "engine": r.get("engine", "dict", None),
        "runtime": RuntimeSettings.from_dict(r.get("runtime", "dict", None)),
        "export_config": r.get("export_config", "dict", {}),
        "files": {k: FileEntry.from_dict(v, f"files.{k}") for k, v in files.items()},
        "created": r.get("created", "str", None),
    }


# ------------------------------------------------------------------------------------------------ readers
def validate_manifest(doc: Any) -> dict[str, Any]:
    """Check ``doc`` against ``bap.export/1`` and return it unchanged (see :meth:`Manifest.from_dict`)."""
    Manifest.from_dict(doc)
    return doc


def read_manifest(path: str | Path) -> Manifest:
    """Read ``manifest.json`` (or an export directory containing one) and parse it."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise IncompatibleArtifactError(f"no manifest at {path}", "pass an export directory written by bap export")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise IncompatibleArtifactError(f"manifest {path} is not valid JSON ({e})", "re-export the model") from None
    return Manifest.from_dict(doc)


def manifest_from_onnx(metadata: Mapping[str, str] | Any) -> Manifest:
    """The manifest embedded in an ONNX model's metadata.

    Args:
        metadata: ``{key: value}`` metadata (e.g. ONNX Runtime's ``get_modelmeta().custom_metadata_map``) or an
            ``onnx.ModelProto`` (its ``metadata_props``).
    """
    if not isinstance(metadata, Mapping):
        metadata = {p.key: p.value for p in metadata.metadata_props}
    if METADATA_KEY not in metadata:
        raise IncompatibleArtifactError(
            "the ONNX file carries no bap manifest (metadata key bap.manifest)", "pass a model written by bap export"
        )
    try:
        doc = json.loads(metadata[METADATA_KEY])
    except (json.JSONDecodeError, ValueError) as e:
        raise IncompatibleArtifactError(f"embedded manifest is not valid JSON ({e})", "re-export the model") from None
    return Manifest.from_dict(doc)
