"""``bap summary``: what a train -> export -> bench round trip measured, in sentences a newcomer can follow.

:func:`collect_summary` reads the run's ``report.json``, the export's manifest and ``bap.bench/1`` JSONs into a
:class:`Summary`; :func:`print_summary` prints plain sentences and one latency table that fit 80 columns. ``make demo``
ends with it. Every number comes from those files (nothing is estimated).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bap.cli._console import console, err_console
from bap.cli._tables import Grid, print_grid

__all__ = ["LatencyRow", "Summary", "collect_summary", "latency_grid", "print_summary", "register", "summary_lines"]

# Why a domain of the embedded suite is hard, for the domains whose reason is known.
DOMAIN_NOTES = {
    "mnist_m": "MNIST digits blended over colour photo crops; the frozen backbone was pretrained on plain MNIST only, "
    "so it is the domain furthest from the source",
}


OVERHEAD_BOUND_MS = 2.0  # below this per image, bap bench notes that operator overhead sets the ratios
# the export settings the latency sentence names "export defaults" when they equal ExportConfig's defaults
SPEED_SETTINGS = ("graph", "precision", "round_to", "gather_threshold")


@dataclass(frozen=True)
class LatencyRow:
    """Median latency of the backbone and the multi-domain model at one input size and batch (one bench run)."""

    size: int
    batch: int
    backbone_ms: float
    model_ms: float
    latency: float  # model / backbone
    macs: float  # model / backbone


@dataclass(frozen=True)
class Summary:
    """The numbers the demo exists to show, read from a run, its export and bench JSONs."""

    backbone: str
    source: str | None  # the domain the backbone was pretrained on (None: weights given or unknown)
    method: str
    budget: float
    graph: str
    accuracy: dict[str, float]
    s_score: float | None
    params_model: int
    params_loaded: int | None
    params_backbone: int
    macs_executed: float  # relative to the backbone, per sample over an even mix of domains
    macs_own: float  # mean of the domains' own networks, relative to the backbone
    macs_backbone: int
    latency: list[LatencyRow] = field(default_factory=list)
    cpu: str | None = None
    cpus: int | None = None
    trained_size: int | None = None
    round_to: int | None = None
    gather_threshold: float | None = None
    operators: int | None = None  # ONNX nodes of the multi-domain model
    export_defaults: bool = False  # exported with ExportConfig's defaults for SPEED_SETTINGS
    benches: int = 0  # bench JSONs read (latency may still be empty: no batch where both models ran)
    warnings: tuple[str, ...] = ()  # the files given do not belong together

    @property
    def mean_accuracy(self) -> float:
        """Mean test accuracy over the served domains."""
        return sum(self.accuracy.values()) / max(1, len(self.accuracy))


def _read_report(run_dir: Path) -> dict[str, Any]:
    from bap.errors import IncompatibleArtifactError

    fix = "pass the directory bap train wrote (--run)"
    if not run_dir.exists():
        raise IncompatibleArtifactError(f"the run directory {run_dir} does not exist", fix)
    if not run_dir.is_dir():
        raise IncompatibleArtifactError(f"--run {run_dir} is not a directory", fix)
    path = run_dir / "report.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IncompatibleArtifactError(f"{path} cannot be read ({type(e).__name__})", fix) from None
    if not isinstance(doc, dict):
        raise IncompatibleArtifactError(f"{path} is not a JSON object", "re-create it (bap train)")
    return doc


def _read_bench(path: Path) -> dict[str, Any]:
    from bap.errors import IncompatibleArtifactError
    from bap.runtime.bench import validate_bench

    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IncompatibleArtifactError(
            f"{path} cannot be read ({type(e).__name__})", "pass a JSON written by bap bench --json"
        ) from None
    return validate_bench(doc)


def _latency_rows(doc: dict[str, Any]) -> list[LatencyRow]:
    """Multi-domain vs backbone per batch of one bench document (batches where both ran)."""
    med = {
        (r["role"], r["batch"]): r["latency_ms"]["median"] for r in doc["results"] if "error" not in r
    }  # fmt: skip
    rows = []
    for q in doc["ratios"]:
        b = q["batch"]
        if q["role"] == "multi-domain" and ("backbone", b) in med and ("multi-domain", b) in med:
            size = int(doc.get("input_size") or doc.get("settings", {}).get("input_size") or 0)
            rows.append(LatencyRow(size, b, med[("backbone", b)], med[("multi-domain", b)], q["latency"], q["macs"]))
    return rows


def _run_of(report: dict[str, Any], method: str, budget: float) -> dict[str, Any] | None:
    for r in report.get("runs", []):
        if r.get("method") == method and abs(float(r.get("budget", -1)) - budget) < 1e-9:
            return r
    return None


def _source(report: dict[str, Any]) -> str | None:
    cfg = report.get("config", {})
    if cfg.get("weights"):
        return None
    return cfg.get("pretrain_source") or ("mnist" if cfg.get("data_root") is None else None)


def _export_defaults(export_config: dict[str, Any]) -> bool:
    """Whether the export used ``ExportConfig``'s defaults for every setting that shapes its speed."""
    from bap.exporter.config import ExportConfig

    defaults = {f.name: f.default for f in dataclasses.fields(ExportConfig)}
    return all(k in export_config and export_config[k] == defaults[k] for k in SPEED_SETTINGS)


def _same_dir(a: str | Path, b: Path) -> bool:
    return Path(a).resolve() == b.resolve()


def _mismatches(run_dir: Path, export_dir: Path, m: Any, bench: list[Path], docs: list[dict]) -> tuple[str, ...]:
    """One line per file that does not belong with the others (the summary still prints)."""
    out = []
    if m.source_run.path and not _same_dir(m.source_run.path, run_dir):
        out.append(f"the export {export_dir} was made from {m.source_run.path}, not from --run {run_dir}")
    for p, d in zip(bench, docs, strict=True):
        if isinstance(d.get("export"), str) and not _same_dir(d["export"], export_dir):
            out.append(f"the bench JSON {p} timed {d['export']}, not --export {export_dir}")
    return tuple(out)


def collect_summary(run_dir: Path, export_dir: Path, bench: list[Path]) -> Summary:
    """Read ``run_dir/report.json``, the export's manifest and the bench JSONs into a :class:`Summary`.

    Raises:
        IncompatibleArtifactError: a file is missing or unreadable (named in the message).
        ConfigError: ``export_dir`` is a file other than an export's ONNX model or manifest.
    """
    from bap.errors import IncompatibleArtifactError
    from bap.exporter.manifest import read_manifest
    from bap.runtime.bench import export_dir as as_export_dir

    report = _read_report(Path(run_dir))
    export_dir = as_export_dir(export_dir, "bap summary --export", "it reads manifest.json")
    if not export_dir.exists():
        raise IncompatibleArtifactError(
            f"the export directory {export_dir} does not exist", "pass the directory bap export wrote (--export)"
        )
    m = read_manifest(export_dir)
    run = _run_of(report, m.method, m.budget) or {}
    accuracy = {n: float(a) for n, a in m.accuracy.items() if a is not None} or dict(run.get("accuracy", {}))
    docs = [_read_bench(p) for p in bench]
    device = docs[0]["device"] if docs else {}
    threshold = m.export_config.get("gather_threshold")
    return Summary(
        backbone=str(report.get("backbone", {}).get("name", "?")),
        source=_source(report),
        method=m.method,
        budget=m.budget,
        graph=m.graph,
        accuracy=accuracy,
        s_score=run.get("s_score"),
        params_model=m.params.model,
        params_loaded=m.params.loaded,
        params_backbone=m.params.backbone,
        macs_executed=m.executed_macs() / max(1, m.macs.backbone),
        macs_own=m.rel_macs_mean,
        macs_backbone=m.macs.backbone,
        latency=[row for d in docs for row in _latency_rows(d)],
        cpu=device.get("cpu"),
        cpus=device.get("logical_cpus"),
        trained_size=m.input.size,
        round_to=m.round_to,
        gather_threshold=float(threshold) if isinstance(threshold, (int, float)) else None,
        operators=sum(m.onnx_ops.values()) or None,
        export_defaults=_export_defaults(m.export_config),
        benches=len(docs),
        warnings=_mismatches(Path(run_dir), export_dir, m, bench, docs),
    )


def _count(n: float) -> str:
    """1234 -> 1.2k, 2318336 -> 2.3M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"


def _accuracy_lines(s: Summary) -> list[str]:
    acc = ", ".join(f"{d} {a:.1%}" for d, a in s.accuracy.items())
    lines = [f"Test accuracy per domain: {acc} (mean {s.mean_accuracy:.1%})."]
    worst = min(s.accuracy, key=s.accuracy.get) if s.accuracy else None
    for d, why in DOMAIN_NOTES.items():
        if d in s.accuracy:
            lowest = "the lowest accuracy" if d == worst else f"{s.accuracy[d]:.1%}"
            lines.append(f"{d} ({lowest}) is hard by design: {why}.")
    n = len(s.accuracy)
    if s.s_score is not None:
        lines.append(
            f"S = {s.s_score:.0f} of {1000 * n}: the Visual Decathlon score gives a domain 1000 points when it is "
            "error-free and 0 when its error is twice the fine-tuned baseline's or worse (quadratic in between); "
            f"the maximum is 1000 x {n} domains."
        )
    return lines


def _size_lines(s: Summary) -> list[str]:
    pb = s.params_backbone
    stored = f"{_count(s.params_model)} parameters stored ({s.params_model / pb:.2f}x the backbone's {_count(pb)})"
    if s.params_loaded is not None and s.params_loaded != s.params_model:
        held = (
            f"{_count(s.params_loaded)} held after load ({s.params_loaded / pb:.2f}x; the {s.graph} graph folds "
            "each domain's weights when the runtime loads it)"
        )
    else:
        held = "the same held after load"
    macs = (
        f"MACs per sample: {s.macs_executed:.2f}x the backbone's {_count(s.macs_backbone)} executed by the "
        f"multi-domain model; each domain's own network needs {s.macs_own:.2f}x on average."
    )
    return [f"Size: {stored}, {held}.", macs]


def _by_size(rows: list[LatencyRow]) -> str:
    """``32 px (1.74x at batch 1, 1.13x at batch 16) and 224 px (...)``."""
    sizes = sorted({r.size for r in rows})
    parts = [
        f"{z} px (" + ", ".join(f"{r.latency:.2f}x at batch {r.batch}" for r in rows if r.size == z) + ")"
        for z in sizes
    ]
    return " and ".join(parts)


def _settings(s: Summary) -> str:
    """``export defaults (round-to 8, gather threshold 0.5)``, or ``export settings (...)`` when not the defaults."""
    parts = [f"round-to {s.round_to}"] if s.round_to else []
    parts += [f"gather threshold {s.gather_threshold:g}"] if s.gather_threshold is not None else []
    which = "export defaults" if s.export_defaults else "export settings"
    return f"{which} ({', '.join(parts)})" if parts else which


def _latency_lines(s: Summary) -> list[str]:
    if not s.latency and s.benches:
        return [
            "Latency: the bench JSON has no batch where both the backbone and the model ran (see the errors "
            "bap bench printed; re-run it)."
        ]
    if not s.latency:
        return ["Latency: no bench JSON given (bap bench EXPORT --json FILE, then --bench FILE)."]
    cpu = f"{s.cpus}-core CPU" if s.cpus else "CPU"
    trained = f"; {s.trained_size} px is the trained size" if s.trained_size else ""
    lines = [f"Latency on this {cpu} ({s.cpu or '?'}), medians of interleaved runs, {_settings(s)}{trained}:"]
    slower = [r for r in s.latency if r.latency > 1.0]
    # per-operator overhead explains a loss only where the backbone itself takes little time per image
    tiny = [r for r in slower if r.backbone_ms / r.batch < OVERHEAD_BOUND_MS]
    if tiny:
        fewer = min(r.macs for r in tiny)
        saves = f", which costs more than the {1 - fewer:.0%} of MACs it saves" if fewer < 1 else ""
        lines.append(
            f"The multi-domain model is slower than the backbone at {_by_size(tiny)}. There the backbone takes under "
            f"{OVERHEAD_BOUND_MS:g} ms per image, so on this {cpu} per-operator overhead outweighs compute, and the "
            f"multi-domain graph routes each sample to its domain's branch and back{saves}."
        )
        if s.operators:
            lines.append(
                f"The multi-domain graph has {s.operators} ONNX nodes (routing, padding and the constant nodes that "
                "derive each branch's weights; ONNX Runtime folds the latter when it loads the model)."
            )
    heavy = [r for r in slower if r not in tiny]
    if heavy:
        lines.append(
            f"It is also slower at {_by_size(heavy)}, where compute dominates: the runtime did not turn the saved "
            "MACs into time there (see benchmarks/RESULTS.md for measured layouts and settings)."
        )
    faster = [r for r in s.latency if r.latency <= 1.0]
    if faster:
        lines.append(f"The multi-domain model is as fast as the backbone or faster at {_by_size(faster)}.")
    return lines


def summary_lines(s: Summary) -> dict[str, list[str]]:
    """The sentences of the summary by topic (``accuracy``, ``size``, ``latency``)."""
    return {"accuracy": _accuracy_lines(s), "size": _size_lines(s), "latency": _latency_lines(s)}


def latency_grid(s: Summary) -> Grid:
    """Median latency (ms) of the backbone and the multi-domain model per input size and batch."""
    g = Grid(
        ["input", "batch", "backbone ms", "model ms", "lat×", "MACs×"],
        caption="lat× and MACs×: multi-domain model relative to the backbone (below 1: faster / fewer)",
        right=set(range(6)),
    )
    for r in s.latency:
        g.add_row(f"{r.size} px", str(r.batch), f"{r.backbone_ms:.3g}", f"{r.model_ms:.3g}", f"{r.latency:.2f}",
                  f"{r.macs:.2f}")  # fmt: skip
    return g


def print_summary(s: Summary, out: Console) -> None:
    """The summary as plain sentences and one latency table (fits 80 columns)."""
    src = f", pretrained on {s.source} only" if s.source else ""
    out.print(
        f"[bold]Summary[/]: {escape(s.method)} trained channel switches for {len(s.accuracy)} domains on a frozen "
        f"{escape(s.backbone)}{escape(src)}; budget {s.budget:g} was exported as ONE {s.graph} ONNX model that "
        "serves every domain."
    )
    parts = summary_lines(s)
    for topic in ("accuracy", "size"):
        out.print()
        for line in parts[topic]:
            out.print(escape(line))
    out.print()
    out.print(escape(parts["latency"][0]))
    if s.latency:
        print_grid(latency_grid(s), out)
    for line in parts["latency"][1:]:
        out.print(escape(line))


def summary(
    run: Annotated[Path, typer.Option("--run", help="The bap train run directory.", metavar="RUN_DIR")],
    export: Annotated[Path, typer.Option("--export", help="The bap export directory.", metavar="EXPORT")],
    bench: Annotated[
        list[Path] | None,
        typer.Option("--bench", help="A bap bench --json file (repeat for several input sizes).", metavar="JSON"),
    ] = None,
) -> None:
    """Explain what a train -> export -> bench round trip measured: accuracy, S, size and latency (make demo)."""
    s = collect_summary(run, export, list(bench or []))
    for w in s.warnings:  # the summary still prints: the user decides whether the files belong together
        err_console.print(f"[yellow]warning:[/] {escape(w)}")
    print_summary(s, console)


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("summary")(summary)
