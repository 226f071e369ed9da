"""``bap export``: plan -> compact module -> ONNX -> validate -> manifest -> publish (-> TensorRT engine).

Everything is built in a staging directory next to ``--out`` and swapped in only after validation passed, so an
interrupted or failed export never leaves a half-written or unvalidated model where a deployment would pick it
up.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch

from bap.core.compact import ChannelPlan, build_specialised, net_macs, plan_channels
from bap.core.env import versions
from bap.core.io import atomic_write_bytes, atomic_write_json, file_sha256, publish_dir, staging_dir
from bap.data.transforms import eval_view
from bap.errors import ConfigError, ValidationError
from bap.exporter.config import ExportConfig
from bap.exporter.layouts import LAYOUTS, LayoutJob, export_single, resolve_layout
from bap.exporter.manifest import MANIFEST_FORMAT, METADATA_KEY, read_manifest
from bap.exporter.onnx_io import clean_graph, convert_fp16, export_module, op_histogram, set_metadata
from bap.exporter.trt import build_engine, profile_shapes, readiness
from bap.exporter.validate import (
    ValidationSamples,
    check_model,
    validate_multidomain,
    validate_single,
    within_tolerance,
)
from bap.trainer.artifacts import LoadedRun, load_run
from bap.trainer.config import budget_key

__all__ = ["ExportResult", "export", "plan_summary", "stage_of"]

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What ``export`` produced: the directory, its manifest, timings and the validation lines."""

    out_dir: Path
    manifest: dict[str, Any]
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


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory", "pass a directory path")
    if out.is_dir() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ConfigError(
            f"--out {out} is a non-empty directory that is not a bap export", "pass a new or existing export directory"
        )


def _samples(run: LoadedRun, served: list[str], n: int, data_root: str | None) -> ValidationSamples:
    ds = run.domains(data_root)
    names = [d.name for d in run.model.domains]
    images = []
    for name in served:
        dom = ds.get(name)
        idx = torch.arange(min(n, len(dom.test)))
        x, _ = dom.test.get_batch(idx)
        images.append(eval_view(x, dom.preprocess).contiguous())
    return ValidationSamples(
        served, images, [names.index(s) for s in served], [run.model.heads.num_classes[names.index(s)] for s in served]
    )


def _save(model: onnx.ModelProto, path: Path) -> None:
    atomic_write_bytes(path, model.SerializeToString())


def export(cfg: ExportConfig, callback: Callable[[str, str], None] | None = None) -> ExportResult:
    """Export a trained budget as configured.

    Args:
        cfg: the export config.
        callback: ``callback(stage, message)`` for progress lines (the CLI prints them).

    Raises:
        IncompatibleArtifactError: missing / corrupt run, budget not trained (lists the trained ones).
        ConfigError: unknown domain, unusable ``--out``.
        ValidationError: the exported model differs from the trained one (nothing published).
        MissingDependencyError / UnsupportedDeviceError: ``--target trt`` without TensorRT / GPU (raised after the
            ONNX files were published, see :attr:`ExportResult.engine_error`).
    """
    say = callback or (lambda stage, msg: log.info("%s: %s", stage, msg))
    timings: dict[str, float] = {}
    t = time.time()

    # ------------------------------------------------------------------ load + plan
    run = load_run(cfg.run_dir, cfg.budget)
    model = run.model.cpu().eval()
    graph = model.graph
    names = [d.name for d in model.domains]
    served = list(cfg.domains) or names
    for n in served:
        if n not in names:
            raise ConfigError(f"unknown domain {n!r}", f"the run has: {', '.join(names)} (--domains)")
    if len(set(served)) != len(served):
        raise ConfigError(f"--domains {','.join(served)} repeats a domain", "list each domain once")
    specialise = names if tuple(cfg.specialise) == ("all",) else list(cfg.specialise)
    if len(cfg.domains) == 1 and cfg.domains[0] not in specialise:
        specialise.append(cfg.domains[0])
    for n in specialise:
        if n not in names:
            raise ConfigError(f"unknown domain {n!r} in --specialise", f"the run has: {', '.join(names)}")
    key = budget_key(run.budget)
    out = cfg.out_dir(key)
    _check_out_dir(out)
    rows = [names.index(n) for n in served]
    on_all = model.switches.binary()
    prio_all = model.switches.priority()
    plan = plan_channels(
        graph,
        on_all[rows],
        served,
        round_to=cfg.round_to,
        priority=prio_all[rows],
        gather_threshold=cfg.gather_threshold,
    )
    timings["plan"] = time.time() - t
    say("plan", f"{sum(len(lp.in_keep) for lp in plan.layers.values())}/{graph.num_switches} input channels kept")

    # ------------------------------------------------------------------ build + measure
    t = time.time()
    size = graph.input_size
    shared_bn = run.shared_network
    layout_name = resolve_layout(cfg.graph, cfg.target, shared_bn, len(served))
    layout = LAYOUTS.get(layout_name)()

    def to_onnx(module, example, input_names, dynamic_axes) -> onnx.ModelProto:
        return clean_graph(export_module(module, example, input_names, ["logits"], dynamic_axes, cfg.opset))

    job = LayoutJob(model, plan, rows, served, cfg.round_to, cfg.gather_threshold, size, shared_bn, to_onnx)
    built = layout.build(job)
    summary = plan_summary(graph, plan, on_all[rows], built.plans, built.stored)
    spec_nets = {n: build_specialised(model, names.index(n), round_to=1) for n in served}
    macs = {n: net_macs(m, size) for n, m in spec_nets.items()}
    backbone_macs = graph.total_macs
    executed = built.macs_mean
    pb = built.params
    timings["build"] = time.time() - t
    say(
        "build",
        f"{layout_name} graph: {executed / backbone_macs:.3f} of the backbone's MACs executed per sample, "
        f"params {pb['rel_params']:.3f}",
    )

    with staging_dir(out) as stage:
        # ------------------------------------------------------------------ export
        t = time.time()
        m = layout.to_onnx(job, built)
        m32 = m
        if cfg.precision == "fp16":
            m = convert_fp16(m)
            if cfg.target == "trt":
                _save(m32, stage / "model_fp32.onnx")  # TensorRT 8.x builds fp16 from fp32 + FP16 flag
        _save(m, stage / "model.onnx")
        files = {"model.onnx": f"multi-domain ({layout_name} graph)"}
        bb_row = rows[0]
        mb = export_single(job, build_specialised(model, bb_row, all_on=True))
        _save(convert_fp16(mb) if cfg.precision == "fp16" else mb, stage / "backbone.onnx")
        files["backbone.onnx"] = f"unpruned backbone, domain {names[bb_row]}"
        spec_files = {}
        for n in specialise:
            branch = built.branches.get(n)  # the routed graph has exported these already (same settings)
            if branch is not None and branch.proto is not None:
                net, ms = branch.net, branch.proto
            else:
                net = build_specialised(
                    model, names.index(n), round_to=cfg.round_to, gather_threshold=cfg.gather_threshold
                )
                ms = export_single(job, net)
            fname = f"specialised-{_safe(n)}.onnx"
            _save(convert_fp16(ms) if cfg.precision == "fp16" else ms, stage / fname)
            spec_files[n] = {"file": fname, "macs": net_macs(net, size)}
            spec_files[n]["rel_macs"] = spec_files[n]["macs"] / backbone_macs
            files[fname] = f"specialised to {n}"
        timings["export"] = time.time() - t
        say("export", f"wrote {', '.join(files)} (opset {cfg.opset}, {cfg.precision}) in {timings['export']:.1f}s")

        # ------------------------------------------------------------------ validate
        t = time.time()
        for f in files:
            check_model(stage / f)
        samples = _samples(run, served, cfg.validation_images, cfg.data_root)
        tol = cfg.tolerance
        per = validate_multidomain(stage / "model.onnx", model, samples, cfg.batch_size)
        lines = []
        passed = True
        for n, e in per.items():
            ok = within_tolerance(e, tol)
            passed &= ok
            lines.append(
                f"[{'ok' if ok else 'fail'}] {n}: max|Δ| {e['max_abs_diff']:.2e}, top-1 agreement {100 * e['top1_agreement']:.1f}% "
                f"({e['samples']} checks at batch 1 and mixed batch {cfg.batch_size})"
            )
        models_check = {}
        ref_model = _all_on(model)
        i0 = served.index(names[bb_row])
        models_check["backbone.onnx"] = validate_single(
            stage / "backbone.onnx",
            lambda x: ref_model(x, bb_row),
            samples.images[i0],
            samples.num_classes[i0],
            cfg.batch_size,
        )
        for n, info in spec_files.items():
            r = names.index(n)
            xs = (
                samples.images[served.index(n)]
                if n in served
                else _samples(run, [n], cfg.validation_images, cfg.data_root).images[0]
            )
            models_check[info["file"]] = validate_single(
                stage / info["file"], lambda x, r=r: model(x, r), xs, model.heads.num_classes[r], cfg.batch_size
            )
        for f, e in models_check.items():
            ok = within_tolerance(e, tol)
            passed &= ok
            lines.append(
                f"[{'ok' if ok else 'fail'}] {f}: max|Δ| {e['max_abs_diff']:.2e}, top-1 agreement {100 * e['top1_agreement']:.1f}%"
            )
        for line in lines:
            say("validate", line)
        timings["validate"] = time.time() - t

        # ------------------------------------------------------------------ TensorRT readiness + manifest
        ready = readiness(m32, cfg.opset, cfg.batch_size, cfg.max_batch, size, size)
        say(
            "trt-check",
            "TensorRT readiness: "
            + ("ok" if ready["ok"] else f"problems: unsupported {ready['unsupported_ops']}")
            + ("; " + "; ".join(ready["notes"]) if ready["notes"] else ""),
        )
        validation: dict[str, Any] = {
            **per,
            "passed": bool(passed),
            "atol": tol,
            "allow_mismatch": cfg.allow_mismatch,
            "models": models_check,
            "batch_sizes": [1, cfg.batch_size],
        }
        manifest = _manifest(
            cfg, run, served, plan, summary, macs, built, backbone_macs, validation, ready, spec_files, size, m
        )
        manifest["graph"] = layout_name
        if not passed and not cfg.allow_mismatch:
            bad = [
                f"{k} max|Δ| {e['max_abs_diff']:.2e}"
                for k, e in [*per.items(), *models_check.items()]
                if not within_tolerance(e, tol)
            ]
            raise ValidationError(
                f"exported model differs from the trained model ({', '.join(bad)}; atol {tol:g}); nothing was published",
                "report this bug, or pass --allow-mismatch to publish anyway (marked in the manifest)",
            )
        embedded = {k: v for k, v in manifest.items() if k != "files"}
        _save(set_metadata(onnx.load(str(stage / "model.onnx")), {METADATA_KEY: embedded}), stage / "model.onnx")
        manifest["files"] = {
            f: {"sha256": file_sha256(stage / f), "bytes": (stage / f).stat().st_size, "role": role}
            for f, role in files.items()
        }
        atomic_write_json(stage / "manifest.json", manifest)
        read_manifest(stage / "manifest.json")  # what we publish must parse
        publish_dir(stage, out)
    say("publish", f"{out}")
    result = ExportResult(out, manifest, timings, lines)

    # ------------------------------------------------------------------ engine
    if cfg.target == "trt":
        t = time.time()
        src = out / "model.onnx"
        shapes = profile_shapes(m32, cfg.batch_size, cfg.max_batch, size, size)
        info = build_engine(
            src,
            out / "model.plan",
            cfg.precision,
            shapes,
            cfg.workspace_mb,
            out / "timing.cache",
            out / "model_fp32.onnx",
        )
        manifest["engine"] = info
        manifest["files"]["model.plan"] = {
            "sha256": file_sha256(out / "model.plan"),
            "bytes": info["bytes"],
            "role": "TensorRT engine",
        }
        atomic_write_json(out / "manifest.json", manifest)
        timings["engine"] = time.time() - t
        say("engine", f"TensorRT {info['tensorrt']} engine for {info['gpu']} in {info['seconds']}s")
    return result


def _all_on(model):
    import copy

    ref = copy.deepcopy(model)
    ref.switches.set_binary_(torch.ones_like(ref.switches.binary()))
    return ref.eval()


def _manifest(
    cfg, run, served, plan, summary, macs, built, backbone_macs, validation, ready, spec_files, size, m
) -> dict[str, Any]:
    docs = {d["name"]: d for d in run.domain_docs}
    res = run.result
    pb = built.params
    executed = built.macs_mean
    rel = {n: macs[n] / backbone_macs for n in served}
    return {
        "format": MANIFEST_FORMAT,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": "model.onnx",
        "domains": [{"name": n, "index": i, "classes": list(docs[n]["classes"])} for i, n in enumerate(served)],
        "input": {
            "name": "image",
            "shape": [-1, 3, size, size],
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "pixel_range": [0.0, 1.0],
            "dynamic": ["batch", "height", "width"],
            "domain_input": {
                "name": "domain",
                "dtype": "int64",
                "shape": [-1],
                "meaning": "index into domains, per sample",
            },
            "preprocess": {
                n: {
                    **docs[n]["preprocess"],
                    "policy": "resize shorter side to load_size, center-crop load_size, center-crop crop",
                }
                for n in served
            },
            "normalization": "per-domain mean/std applied inside the model",
        },
        "output": {
            "name": "logits",
            "shape": [-1, max(len(docs[n]["classes"]) for n in served)],
            "padding": "-inf beyond each domain's classes",
        },
        "budget": run.budget,
        "budget_unit": run.config.budget_unit,
        "method": run.config.method,
        "lambda_ps": run.config.effective_lambda_ps,
        "criterion": res.get("criterion"),
        "precision": cfg.precision,
        "opset": cfg.opset,
        "round_to": cfg.round_to,
        "kept_channels": plan.to_dict(),
        "plan_summary": summary,
        "macs": {**{n: int(macs[n]) for n in served}, "model": round(executed), "backbone": int(backbone_macs)},
        "macs_executed": {n: int(v) for n, v in built.macs.items()},
        "params": {
            "model": int(pb["model_params"]),
            "loaded": int(pb["loaded_params"]),
            "backbone": int(pb["backbone_params"]),
            "model_bits": int(pb["model_bits"]),
            "backbone_bits": int(pb["backbone_bits"]),
        },
        "rel_macs": rel,
        "rel_macs_mean": sum(rel.values()) / len(rel),
        "rel_macs_executed": executed / backbone_macs,
        "graph_facts": built.facts,
        "rel_params": pb["rel_params"],
        "accuracy": {n: res.get("accuracy", {}).get(n) for n in served},
        "validation": validation,
        "trt_readiness": ready,
        "onnx_ops": op_histogram(m),
        "specialised": spec_files,
        "backbone_model": {"file": "backbone.onnx", "domain": served[0]},
        "engine": None,
        "versions": versions("onnx-graphsurgeon", "ultralytics-thop"),
        "source_run": {
            "path": str(run.run_dir.resolve()),
            "budget": budget_key(run.budget),
            "hash": run.run_hash,
            "config_sha256": file_sha256(run.run_dir / "config.json"),
            "data_origin": run.doc.get("data_origin"),
        },
        "export_config": cfg.to_dict(),
    }
