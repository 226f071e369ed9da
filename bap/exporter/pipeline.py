"""``bap export`` as stages, each a function with typed inputs and outputs.

:func:`resolve` (load the run, check domains and ``--out``) -> :func:`make_plan` -> :func:`build_layout` ->
:func:`write_files` (staging directory) -> :func:`validate_files` -> :func:`make_manifest` -> :func:`publish`
-> :func:`build_engines_for` (``--target trt``). :func:`export` runs them in order.

Everything is built in a staging directory next to ``--out`` and swapped in only after validation passed and
every file matched the checksums the manifest records, so an interrupted or failed export never leaves a
half-written or unvalidated model where a deployment would pick it up.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import torch

from bap.core.compact import ChannelPlan, SpecialisedNet, build_specialised, net_macs, plan_channels
from bap.core.env import versions
from bap.core.io import atomic_write_bytes, atomic_write_json, file_sha256, publish_dir, staging_dir
from bap.data.transforms import eval_view
from bap.errors import ConfigError
from bap.exporter.config import ExportConfig
from bap.exporter.layouts import LAYOUTS, Built, Layout, LayoutJob, export_single, resolve_layout
from bap.exporter.manifest import (
    METADATA_KEY,
    CheckResult,
    DomainEntry,
    FileEntry,
    InputSpec,
    Macs,
    Manifest,
    OrtSettings,
    OutputSpec,
    Params,
    PreprocessSpec,
    RuntimeSettings,
    SourceRun,
    SpecialisedEntry,
    ValidationReport,
    read_manifest,
)
from bap.exporter.onnx_io import clean_graph, convert_fp16, export_module, op_histogram, set_metadata
from bap.exporter.trt import (
    Builder,
    build_engine,
    build_engines,
    engine_jobs,
    plan_name,
    profile_shapes,
    readiness,
    tensorrt_available,
)
from bap.exporter.validate import (
    ValidationSamples,
    check_model,
    held_weights,
    require_passed,
    validate_multidomain,
    validate_single,
)
from bap.trainer.artifacts import LoadedRun, load_run
from bap.trainer.config import budget_key

__all__ = [
    "BACKBONE_FILE",
    "MODEL_FILE",
    "ExportResult",
    "Laid",
    "Planned",
    "Resolved",
    "SingleCheck",
    "Validated",
    "Written",
    "build_engines_for",
    "build_layout",
    "check_readiness",
    "export",
    "fp32_twin",
    "make_manifest",
    "make_plan",
    "plan_summary",
    "publish",
    "resolve",
    "stage_of",
    "validate_files",
    "write_files",
]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
BACKBONE_FILE = "backbone.onnx"
Say = Callable[[str, str], None]


@dataclass
class ExportResult:
    """What ``export`` produced: the directory, its manifest, timings and the validation lines."""

    out_dir: Path
    manifest: Manifest
    timings: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    engine_error: str | None = None


def stage_of(conv: str) -> str:
    """Group a conv into its stage: ``layers.1.0.conv1`` -> ``layers.1``, ``net.layer2.0.conv1`` -> ``net.layer2``."""
    parts = conv.split(".")
    for i in range(len(parts) - 1):
        if parts[i].isdigit() and not parts[i + 1].isdigit():
            return ".".join(parts[:i]) or "stem"
    return "stem" if len(parts) <= 2 else ".".join(parts[:-1])


def _layer_macs(kept_in: int, kept_out: int, conv) -> int:
    return kept_in * kept_out * conv.kernel[0] * conv.kernel[1] * conv.out_hw[0] * conv.out_hw[1]


def plan_summary(
    graph,
    plan: ChannelPlan,
    on: torch.Tensor,
    executed: list[ChannelPlan] | None = None,
    stored: dict[str, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Per stage: stored/total input and output channels, executed MACs, and each domain's own MACs.

    Args:
        graph: the coupling analysis.
        plan: the union plan of the served domains (``plan.domains`` names the columns).
        on: their binary switches.
        executed: the plans samples execute, averaged over an even mix of domains (default ``[plan]``; the
            routed graph runs one plan per domain).
        stored: per conv, (output, input) channels stored in the file (default: ``plan``'s).
    """
    executed = executed or [plan]
    rows: dict[str, dict[str, Any]] = {}
    domain_macs = [graph.masked_macs(row) for row in on]
    for c in graph.convs:
        lp = plan.layers[c.name]
        n_out, n_in = stored[c.name] if stored else (len(lp.out_keep), len(lp.in_keep))
        r = rows.setdefault(
            stage_of(c.name),
            {"stage": stage_of(c.name), "convs": 0, "in_kept": 0, "in_total": 0, "out_kept": 0, "out_total": 0,
             "macs_executed": 0, "macs_backbone": 0, "macs": dict.fromkeys(plan.domains, 0)},
        )  # fmt: skip
        r["convs"] += 1
        r["in_kept"] += n_in
        r["in_total"] += lp.in_total
        r["out_kept"] += n_out
        r["out_total"] += lp.out_total
        per_plan = [_layer_macs(len(p.layers[c.name].in_keep), len(p.layers[c.name].out_keep), c) for p in executed]
        r["macs_executed"] += sum(per_plan) / len(per_plan)
        r["macs_backbone"] += _layer_macs(c.in_channels, c.out_channels, c)
        for d, per_conv in zip(plan.domains, domain_macs, strict=True):
            r["macs"][d] += per_conv[c.name]
    return list(rows.values())


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def fp32_twin(onnx_file: str) -> str:
    """The fp32 copy of an fp16 file that TensorRT 8.x builds fp16 engines from: ``model.onnx`` -> ``model_fp32.onnx``."""
    return onnx_file.removesuffix(".onnx") + "_fp32.onnx"


def _save(model: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, model.SerializeToString())


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t = time.time()
    yield
    timings[stage] = timings.get(stage, 0.0) + time.time() - t


# ------------------------------------------------------------------------------------------------ 1. resolve
@dataclass(frozen=True)
class Resolved:
    """The config checked against the run: what is served, specialised, where it goes and how it is laid out."""

    cfg: ExportConfig
    run: LoadedRun
    names: tuple[str, ...]  # the run's domains, in its order (rows of the masked model)
    served: tuple[str, ...]  # the exported model's domains; the position is the id it takes
    specialise: tuple[str, ...]
    out: Path
    layout: str
    tolerance: float

    @property
    def rows(self) -> list[int]:
        """Each served domain's row in the trained model."""
        return [self.names.index(n) for n in self.served]

    @property
    def size(self) -> int:
        """The square input size the backbone was analysed at."""
        return int(self.run.model.graph.input_size)


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory", "pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(
            f"--out {out} is a non-empty directory that is not a bap export", "pass a new or existing export directory"
        )


def _check_domains(names: tuple[str, ...], served: tuple[str, ...], specialise: tuple[str, ...]) -> None:
    have = ", ".join(names)
    # (offending value or None, what is wrong, how to fix it): the first offence is raised
    rules: tuple[tuple[str | None, Callable[[str], str], str], ...] = (
        (next((n for n in served if n not in names), None), lambda v: f"unknown domain {v!r}", f"the run has: {have} (--domains)"),
        (",".join(served) if len(set(served)) != len(served) else None, lambda v: f"--domains {v} repeats a domain", "list each domain once"),
        (next((n for n in specialise if n not in names), None), lambda v: f"unknown domain {v!r} in --specialise", f"the run has: {have}"),
    )  # fmt: skip
    for bad, problem, fix in rules:
        if bad is not None:
            raise ConfigError(problem(bad), fix)


def resolve(cfg: ExportConfig) -> Resolved:
    """Load the run and check the config against it.

    Raises:
        IncompatibleArtifactError: missing / corrupt run, budget not trained (lists the trained ones).
        ConfigError: unknown or repeated domain, unusable ``--out``.
    """
    run = load_run(cfg.run_dir, cfg.budget)
    run.model.cpu().eval()
    names = tuple(d.name for d in run.model.domains)
    served = tuple(cfg.domains) or names
    specialise = names if tuple(cfg.specialise) == ("all",) else tuple(cfg.specialise)
    if len(cfg.domains) == 1 and cfg.domains[0] not in specialise:
        specialise = (*specialise, cfg.domains[0])  # one named domain implies its specialised model
    _check_domains(names, served, specialise)
    out = cfg.out_dir(budget_key(run.budget))
    _check_out_dir(out)
    layout = resolve_layout(cfg.graph, cfg.target, run.shared_network, len(served))
    return Resolved(cfg, run, names, served, specialise, out, layout, cfg.tolerance(layout))


# ------------------------------------------------------------------------------------------------ 2. plan
@dataclass(frozen=True)
class Planned:
    """The channel plan of the served domains and their binary switches."""

    plan: ChannelPlan
    on: torch.Tensor


def make_plan(r: Resolved) -> Planned:
    """Which channels the compact model keeps (union over the served domains, rounded, gathered)."""
    model, rows = r.run.model, r.rows
    on = model.switches.binary()[rows]
    plan = plan_channels(
        model.graph,
        on,
        list(r.served),
        round_to=r.cfg.round_to,
        priority=model.switches.priority()[rows],
        gather_threshold=r.cfg.gather_threshold,
    )
    return Planned(plan, on)


# ------------------------------------------------------------------------------------------------ 3. build
@dataclass
class Laid:
    """The multi-domain model laid out in PyTorch and measured."""

    layout: Layout
    job: LayoutJob
    built: Built
    summary: list[dict[str, Any]]
    own_macs: dict[str, int]  # each served domain's own network (no rounding): the budget's accounting
    backbone_macs: int


def build_layout(r: Resolved, p: Planned) -> Laid:
    """Build the layout's PyTorch side, the per-stage summary and each domain's own MACs."""
    model, cfg = r.run.model, r.cfg
    layout: Layout = LAYOUTS.get(r.layout)()

    def to_onnx(module, example, input_names, dynamic_axes) -> onnx.ModelProto:
        return clean_graph(export_module(module, example, input_names, list(layout.outputs), dynamic_axes, cfg.opset))

    job = LayoutJob(
        model,
        p.plan,
        r.rows,
        list(r.served),
        cfg.round_to,
        cfg.gather_threshold,
        r.size,
        r.run.shared_network,
        to_onnx,
        cfg.max_weights,
    )
    built = layout.build(job)
    summary = plan_summary(model.graph, p.plan, p.on, built.plans, built.stored)
    own = {n: net_macs(build_specialised(model, r.names.index(n), round_to=1), r.size) for n in r.served}
    return Laid(layout, job, built, summary, own, int(model.graph.total_macs))


# ------------------------------------------------------------------------------------------------ 4. write
@dataclass(frozen=True)
class SingleCheck:
    """A single-domain file to validate: the domain whose images check it and its PyTorch reference."""

    file: str
    domain: str
    reference: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Written:
    """The files written to the staging directory.

    Attributes:
        files: every file written, with its role (the multi-domain model first).
        twins: per fp16 model file, its fp32 twin (``--target trt --precision fp16``: TensorRT 8.x builds from it).
        checks: the single-domain files to validate.
        model_fp32: the multi-domain graph before any fp16 conversion (TensorRT readiness).
        model_ops: operator histogram of the written multi-domain model.
        specialised: the specialised models, by domain.
        backbone_domain: the domain whose BN / head the backbone model uses.
    """

    files: dict[str, str]
    twins: dict[str, str]
    checks: list[SingleCheck]
    model_fp32: onnx.ModelProto
    model_ops: dict[str, int]
    specialised: dict[str, SpecialisedEntry]
    backbone_domain: str


class _Writer:
    """Saves models in the export's precision, records each file's role and (for TensorRT fp16) its fp32 twin."""

    def __init__(self, stage: Path, cfg: ExportConfig):
        self.stage, self.cfg = stage, cfg
        self.files: dict[str, str] = {}
        self.twins: dict[str, str] = {}

    def save(self, name: str, model: onnx.ModelProto, role: str) -> onnx.ModelProto:
        fp16 = self.cfg.precision == "fp16"
        out = convert_fp16(model) if fp16 else model
        _save(out, self.stage / name)
        self.files[name] = role
        if fp16 and self.cfg.target == "trt":  # TensorRT 8.x builds fp16 from fp32 + the FP16 flag
            twin = fp32_twin(name)
            _save(model, self.stage / twin)
            self.files[twin] = f"fp32 twin of {name} (TensorRT 8.x fp16 builds)"
            self.twins[name] = twin
        return out


def _all_on(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    ref.switches.set_binary_(torch.ones_like(ref.switches.binary()))
    return ref.eval()


def _specialised(r: Resolved, laid: Laid, name: str) -> tuple[SpecialisedNet, onnx.ModelProto]:
    branch = laid.built.branches.get(name)  # the routed graph has exported these already (same settings)
    if branch is not None and branch.proto is not None:
        return branch.net, branch.proto
    net = build_specialised(
        r.run.model, r.names.index(name), round_to=r.cfg.round_to, gather_threshold=r.cfg.gather_threshold
    )
    return net, export_single(laid.job, net)


def write_files(r: Resolved, laid: Laid, stage: Path) -> Written:
    """Write the multi-domain model, the unpruned backbone and the specialised models to ``stage``."""
    model = r.run.model
    w = _Writer(stage, r.cfg)
    m32 = laid.layout.to_onnx(laid.job, laid.built)
    saved = w.save(MODEL_FILE, m32, f"multi-domain ({r.layout} graph)")
    bb_domain, bb_row = r.served[0], r.rows[0]
    w.save(BACKBONE_FILE, export_single(laid.job, build_specialised(model, bb_row, all_on=True)), f"unpruned backbone, domain {bb_domain}")  # fmt: skip
    ref_all_on = _all_on(model)
    checks = [SingleCheck(BACKBONE_FILE, bb_domain, lambda x: ref_all_on(x, bb_row))]
    spec: dict[str, SpecialisedEntry] = {}
    for n in r.specialise:
        net, proto = _specialised(r, laid, n)
        fname = f"specialised-{_safe(n)}.onnx"
        w.save(fname, proto, f"specialised to {n}")
        macs = int(net_macs(net, r.size))
        spec[n] = SpecialisedEntry(fname, macs, macs / laid.backbone_macs)
        row = r.names.index(n)
        checks.append(SingleCheck(fname, n, lambda x, row=row: model(x, row)))
    return Written(w.files, w.twins, checks, m32, op_histogram(saved), spec, bb_domain)


# ------------------------------------------------------------------------------------------------ 5. validate
class _Images:
    """Eval-view test images per domain, loaded once (the run's data is reloaded at most once)."""

    def __init__(self, run: LoadedRun, n: int, data_root: str | None):
        self.run, self.n, self.data_root = run, n, data_root
        self._domains: Any = None
        self._cache: dict[str, torch.Tensor] = {}

    def __call__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            if self._domains is None:
                self._domains = self.run.domains(self.data_root)
            dom = self._domains.get(name)
            x, _ = dom.test.get_batch(torch.arange(min(self.n, len(dom.test))))
            self._cache[name] = eval_view(x, dom.preprocess).contiguous()
        return self._cache[name]


@dataclass(frozen=True)
class Validated:
    """The validation report, the domain that checked each single-domain file, and one line per check."""

    report: ValidationReport
    file_domains: dict[str, str]
    lines: list[str]
    held: int | None = None  # float weights ONNX Runtime holds for the multi-domain model after loading it


def ort_settings(layout: Any) -> OrtSettings:
    """The ONNX Runtime settings a layout's graph must run with (recorded in the manifest, applied everywhere)."""
    return OrtSettings(disabled_optimizers=tuple(getattr(layout, "ort_disabled_optimizers", ())))


def validate_files(r: Resolved, laid: Laid, written: Written, stage: Path) -> Validated:
    """``onnx.checker`` every file, then compare each model with the trained one on real test images.

    Does not raise on a mismatch (see :func:`bap.exporter.validate.require_passed`): the caller reports first.
    """
    cfg, model = r.cfg, r.run.model
    for f in written.files:
        check_model(stage / f)
    images = _Images(r.run, cfg.validation_images, cfg.data_root)
    k = model.heads.num_classes
    served = list(r.served)
    samples = ValidationSamples(served, [images(n) for n in served], r.rows, [k[i] for i in r.rows])
    io_names = (*laid.layout.inputs, *laid.layout.outputs)
    ort = ort_settings(laid.layout)
    per = validate_multidomain(
        stage / MODEL_FILE,
        model,
        samples,
        cfg.batch_size,
        io_names=io_names,
        disabled_optimizers=ort.disabled_optimizers,
    )
    models: dict[str, CheckResult] = {
        c.file: validate_single(stage / c.file, c.reference, images(c.domain), k[r.names.index(c.domain)], cfg.batch_size)
        for c in written.checks
    }  # fmt: skip
    report = ValidationReport.judge(
        per, models, r.tolerance, allow_mismatch=cfg.allow_mismatch, batch_sizes=(1, cfg.batch_size)
    )
    how = {n: f" ({c.samples} checks at batch 1 and mixed batch {cfg.batch_size})" for n, c in per.items()}
    lines = [line + how.get(key, "") for key, line in zip([*per, *models], report.lines(), strict=True)]
    held = held_weights(stage / MODEL_FILE, ort.disabled_optimizers)
    return Validated(report, {c.file: c.domain for c in written.checks}, lines, held)


def check_readiness(r: Resolved, written: Written, say: Say) -> dict[str, Any]:
    """TensorRT readiness of the multi-domain graph (recorded always; reported for ``--target trt`` or TensorRT)."""
    cfg = r.cfg
    ready = readiness(written.model_fp32, cfg.opset, cfg.batch_size, cfg.max_batch, r.size, r.size)
    if cfg.target == "trt" or tensorrt_available():
        problems = "ok" if ready["ok"] else f"problems: unsupported {ready['unsupported_ops']}"
        say("trt-check", "TensorRT readiness: " + problems + "".join(f"; {n}" for n in ready["notes"]))
    return ready


# ------------------------------------------------------------------------------------------------ 6. manifest
def _preprocess(doc: dict[str, Any]) -> PreprocessSpec:
    return PreprocessSpec(int(doc["load_size"]), int(doc["crop"]), int(doc.get("pad", 0)), bool(doc.get("flip", False)))


def _source_run(run: LoadedRun) -> SourceRun:
    return SourceRun(
        path=str(run.run_dir.resolve()),
        hash=run.run_hash,
        budget=budget_key(run.budget),
        config_sha256=file_sha256(run.run_dir / "config.json"),
        data_origin=run.doc.get("data_origin"),
    )


def make_manifest(
    r: Resolved,
    p: Planned,
    laid: Laid,
    written: Written,
    report: ValidationReport,
    ready: dict[str, Any],
    held: int | None = None,
) -> Manifest:
    """The typed manifest of the export (without ``files``: :func:`publish` adds them).

    ``held``: float weights ONNX Runtime was measured to hold after loading the model (``params.loaded``); the
    layout's estimate is used where it was not measured.
    """
    cfg, run, built = r.cfg, r.run, laid.built
    docs = {d["name"]: d for d in run.domain_docs}
    served, pb, bb = list(r.served), built.params, laid.backbone_macs
    rel = {n: laid.own_macs[n] / bb for n in served}
    return Manifest(
        domains=tuple(DomainEntry(n, i, tuple(docs[n]["classes"])) for i, n in enumerate(served)),
        input=InputSpec((-1, 3, r.size, r.size), {n: _preprocess(docs[n]["preprocess"]) for n in served}),
        output=OutputSpec((-1, max(len(docs[n]["classes"]) for n in served))),
        budget=float(run.budget),
        method=run.config.method,
        macs=Macs({n: int(laid.own_macs[n]) for n in served}, round(built.macs_mean), bb),
        params=Params(
            model=int(pb["model_params"]),
            backbone=int(pb["backbone_params"]),
            loaded=int(held if held is not None else pb["loaded_params"]),
            model_bits=int(pb["model_bits"]),
            backbone_bits=int(pb["backbone_bits"]),
        ),
        rel_macs=rel,
        rel_macs_mean=sum(rel.values()) / len(rel),
        rel_params=float(pb["rel_params"]),
        validation=report,
        versions=versions("onnx-graphsurgeon", "ultralytics-thop"),
        source_run=_source_run(run),
        kept_channels=p.plan.to_dict(),
        model=MODEL_FILE,
        graph=r.layout,
        budget_unit=run.config.budget_unit,
        lambda_ps=run.config.effective_lambda_ps,
        criterion=run.result.get("criterion"),
        precision=cfg.precision,
        opset=cfg.opset,
        round_to=cfg.round_to,
        plan_summary=laid.summary,
        macs_executed={n: int(v) for n, v in built.macs.items()},
        rel_macs_executed=built.macs_mean / bb,
        graph_facts=built.facts,
        accuracy={n: run.result.get("accuracy", {}).get(n) for n in served},
        trt_readiness=ready,
        onnx_ops=written.model_ops,
        specialised=written.specialised,
        backbone_model={"file": BACKBONE_FILE, "domain": written.backbone_domain},
        export_config=cfg.to_dict(),
        runtime=RuntimeSettings(ort_settings(laid.layout)),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


# ------------------------------------------------------------------------------------------------ 7. publish
def _file_entry(path: Path, role: str) -> FileEntry:
    return FileEntry(file_sha256(path), path.stat().st_size, role)


def publish(manifest: Manifest, files: dict[str, str], stage: Path, out: Path) -> Manifest:
    """Embed the manifest in the model, list every file with its checksum, verify, and swap ``stage`` in as ``out``.

    Returns:
        The manifest as published (parsed back from ``manifest.json``).

    Raises:
        IntegrityError: a staged file does not match what the manifest records (nothing is published).
    """
    model_path = stage / manifest.model
    _save(set_metadata(onnx.load(str(model_path)), {METADATA_KEY: manifest.embedded()}), model_path)
    listed = manifest.with_files({f: _file_entry(stage / f, role) for f, role in files.items()})
    atomic_write_json(stage / "manifest.json", listed.to_dict())
    published = read_manifest(stage)  # what we publish must parse
    published.verify_files(stage)
    publish_dir(stage, out)
    return published


# ------------------------------------------------------------------------------------------------ 8. engines
def build_engines_for(out: Path, manifest: Manifest, cfg: ExportConfig, builder: Builder = build_engine) -> Manifest:
    """Build a TensorRT engine for every model file of a published export and record them in its manifest.

    ``model.plan``, ``backbone.plan`` and ``specialised-<d>.plan`` (each ONNX name with ``.plan``) are built with
    the same builder settings and timing cache; each is listed in ``files`` and its facts in
    ``engine["files"]`` (``engine`` itself keeps the ``model.plan`` facts).

    Raises:
        MissingDependencyError / UnsupportedDeviceError: no TensorRT / GPU (the ONNX export stays as published).
        ExportError: the parser or builder failed.
    """
    models = [manifest.model, manifest.backbone_file, *(s.file for s in manifest.specialised.values())]
    twins = {f: fp32_twin(f) for f in models if fp32_twin(f) in manifest.files}
    size = manifest.input.size

    def shapes_of(f: str) -> dict[str, tuple]:
        proto = onnx.load(str(out / f), load_external_data=False)
        return profile_shapes(proto, cfg.batch_size, cfg.max_batch, size, size)

    cache = out / "timing.cache"
    info = build_engines(out, engine_jobs(models, shapes_of, twins), cfg.precision, cfg.workspace_mb, cache, builder)  # fmt: skip
    files = {plan_name(f): _file_entry(out / plan_name(f), f"TensorRT engine of {f}") for f in models}
    if cache.is_file():
        files[cache.name] = _file_entry(cache, "TensorRT timing cache (speeds up rebuilds)")
    engine = {**info[plan_name(manifest.model)], "files": info}
    updated = replace(manifest.with_files(files), engine=engine)
    doc = json.loads(json.dumps(updated.to_dict(), allow_nan=False))
    atomic_write_json(out / "manifest.json", doc)
    return Manifest.from_dict(doc)


# ------------------------------------------------------------------------------------------------ export
def export(cfg: ExportConfig, callback: Say | None = None) -> ExportResult:
    """Export a trained budget as configured.

    Args:
        cfg: the export config.
        callback: ``callback(stage, message)`` for progress lines (the CLI prints them).

    Raises:
        IncompatibleArtifactError: missing / corrupt run, budget not trained (lists the trained ones).
        ConfigError: unknown domain, unusable ``--out``.
        ValidationMismatchError: the exported model differs from the trained model (nothing published; the
            message names the worst file and domain).
        MissingDependencyError / UnsupportedDeviceError: ``--target trt`` without TensorRT / GPU (raised after the
            ONNX files were published).
    """
    say = callback or (lambda stage, msg: log.info("%s: %s", stage, msg))
    timings: dict[str, float] = {}
    with _timed(timings, "plan"):
        r = resolve(cfg)
        planned = make_plan(r)
    kept = sum(len(lp.in_keep) for lp in planned.plan.layers.values())
    say("plan", f"{kept}/{r.run.model.graph.num_switches} input channels kept")
    with _timed(timings, "build"):
        laid = build_layout(r, planned)
    rel = laid.built.macs_mean / laid.backbone_macs
    say("build", f"{r.layout} graph: {rel:.3f} of the backbone's MACs executed per sample, params {laid.built.params['rel_params']:.3f}")  # fmt: skip
    with staging_dir(r.out) as stage:
        with _timed(timings, "export"):
            written = write_files(r, laid, stage)
        say(
            "export",
            f"wrote {', '.join(written.files)} (opset {cfg.opset}, {cfg.precision}) in {timings['export']:.1f}s",
        )
        with _timed(timings, "validate"):
            validated = validate_files(r, laid, written, stage)
        for line in validated.lines:
            say("validate", line)
        if not cfg.allow_mismatch:
            require_passed(validated.report, validated.file_domains, MODEL_FILE)
        ready = check_readiness(r, written, say)
        manifest = make_manifest(r, planned, laid, written, validated.report, ready, validated.held)
        manifest = publish(manifest, written.files, stage, r.out)
    say("publish", f"{r.out}")
    result = ExportResult(r.out, manifest, timings, validated.lines)
    if cfg.target == "trt":
        with _timed(timings, "engine"):
            result.manifest = build_engines_for(r.out, manifest, cfg)
        eng = result.manifest.engine or {}
        say(
            "engine", f"TensorRT {eng.get('tensorrt')} engines ({', '.join(eng.get('files', {}))}) for {eng.get('gpu')}"
        )
    return result
