"""``bap eval``, ``bap predict`` and ``bap bench``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from bap.cli._console import RichCallback, console, setup_logging
from bap.cli._options import DataRootOpt, JsonOpt, QuietOpt, VerboseOpt, parse_csv, parse_ints
from bap.cli._tables import Grid, print_grid

__all__ = ["bench_failures", "bench_grid", "eval_grid", "register"]

ExportArg = Annotated[
    Path,
    typer.Argument(help="An export directory (or a self-describing model.onnx).", show_default=False, metavar="EXPORT"),
]
BenchExportArg = Annotated[
    Path,
    typer.Argument(
        help="The directory bap export wrote (bench compares its models against its backbone.onnx).",
        show_default=False,
        metavar="EXPORT",
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or jetson (no silent CPU fallback).")]
BackendOpt = Annotated[str, typer.Option(help="ort (ONNX Runtime) or trt (the export's TensorRT engine).")]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="ONNX Runtime intra-op threads (default: ORT's choice).", show_default=False)
]


def evaluate(
    export: ExportArg,
    data_root: DataRootOpt = None,
    split: Annotated[str, typer.Option(help="test, val or train.")] = "test",
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "ort",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Accuracy of the exported model on every domain's test split (equals the trainer's report)."""
    from bap.errors import ConfigError
    from bap.runtime import load
    from bap.runtime.evaluate import evaluate_export

    setup_logging(verbose, quiet)
    if split not in ("test", "val", "train"):
        raise ConfigError(f"unknown split {split!r}", "use --split test, val or train")
    model = load(export, backend=backend, device=device, threads=threads)
    res = evaluate_export(
        model, str(data_root) if data_root else None, split, callback=RichCallback(not (quiet or as_json))
    )
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    print_grid(eval_grid(res, f"bap eval: {export} ({split} split, {', '.join(res['providers'])})"), console)
    if res["s_score"] is not None:
        console.print(
            f"S-score: {res['s_score']:.0f} (of {1000 * len(res['accuracy'])}; Visual Decathlon score: 1000 per "
            "error-free domain, 0 for a domain at twice the fine-tuned baseline's error or worse)"
        )


def eval_grid(res: dict[str, Any], title: str) -> Grid:
    """Accuracy per domain and the mean, from :func:`bap.runtime.evaluate.evaluate_export`'s result."""
    g = Grid(["domain", "images", "accuracy"], title=title, right={1, 2})
    for d, a in res["accuracy"].items():
        g.add_row(d, str(res["samples"][d]), f"{a:.4f}", section=d == list(res["accuracy"])[-1])
    g.add_row("[bold]mean", "", f"[bold]{res['mean_accuracy']:.4f}")
    return g


def predict(
    export: ExportArg,
    images: Annotated[list[Path], typer.Argument(help="Image files.", show_default=False, metavar="IMAGE")],
    domain: Annotated[
        str, typer.Option("--domain", "-d", help="Domain name or id of every image (or a,b,... one per image).")
    ] = ...,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to show per image.")] = 5,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "ort",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Classify image files with an exported model: top-k (class, probability) per image."""
    from bap.runtime import load

    setup_logging(verbose, False)
    model = load(export, backend=backend, device=device)
    names: Any = parse_csv(domain)
    doms: Any = [int(d) if d.isdigit() else d for d in names]
    if len(doms) == 1:
        doms = doms[0]
    preds = model.predict(list(images), doms, top_k=top_k)
    if as_json:
        typer.echo(json.dumps([p.to_dict() for p in preds], indent=2))
        return
    for p in preds:
        top = ", ".join(f"{c} {prob:.3f}" for c, prob in p.top_k)
        console.print(f"{p.source} ({p.domain}): {top}", markup=False)


def _sig(ms: float) -> str:
    """Three significant digits: 0.525, 65.7, 1149 (keeps the table inside 80 columns)."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.3g}"


BENCH_CAPTION = "latency in ms; peak RSS and file size in MB; MACs× and lat× relative to the backbone"


def bench_grid(doc: dict[str, Any]) -> Grid:
    """Per model x batch: latency percentiles, throughput, memory, size and ratios to the backbone."""
    ratios = {(r["batch"], r["role"]): r for r in doc["ratios"]}  # by role: compared exports share file names
    dev = doc["device"]
    # short headers (units in the caption): the whole table fits in 80 columns
    g = Grid(
        ["model", "batch", "median", "p90", "p99", "img/s", "RSS", "file", "MACs×", "lat×"],
        title=f"bap bench ({dev.get('device')}, {dev.get('backend')}, {dev.get('threads') or 'auto'} threads, "
        f"{doc.get('input_size') or '?'} px)",
        caption=BENCH_CAPTION,
        right=set(range(1, 10)),
    )
    for r in doc["results"]:
        if "error" in r:  # the whole error is printed under the table (bench_failures)
            g.add_row(r["role"], str(r["batch"]), "[red]failed", *[""] * 7)
            continue
        q = ratios.get((r["batch"], r["role"]))
        lat = r["latency_ms"]
        g.add_row(
            r["role"],
            str(r["batch"]),
            _sig(lat["median"]),
            _sig(lat["p90"]),
            _sig(lat["p99"]),
            f"{r['throughput']:.0f}",
            f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "-",  # --no-memory
            f"{r['file_mb']:.1f}",
            "1.00" if r["role"] == "backbone" else f"{q['macs']:.2f}" if q else "-",
            "1.00" if r["role"] == "backbone" else f"{q['latency']:.2f}" if q else "-",
        )
    return g


def bench_failures(doc: dict[str, Any]) -> list[str]:
    """One full line per failed model x batch, printed under the bench table."""
    from bap.runtime.bench import failures

    return [f"failed: {r['role']} at batch {r['batch']}: {r['error']}" for r in failures(doc)]


def _check_output(path: Path | None, flag: str) -> None:
    """Refuse an output path the bench could not write, before anything is timed."""
    from bap.errors import ConfigError

    if path is None:
        return
    fix = f"give {flag} a file path in a writable directory"
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a directory", fix)
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: the directory {parent} does not exist", f"create it first or {fix}")
    try:  # the same temp file atomic_write_* makes next to the target
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise ConfigError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e})", fix) from None
    os.close(fd)
    os.unlink(tmp)


def bench(
    export: BenchExportArg,
    device: DeviceOpt = "cpu",
    backend: BackendOpt = "ort",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    warmup_s: Annotated[float, typer.Option(help="Warm-up seconds per model and batch.")] = 1.0,
    duration_s: Annotated[float, typer.Option(help="Minimum measured seconds per model and batch.")] = 3.0,
    iterations: Annotated[int, typer.Option(help="Minimum iterations per model and batch.")] = 20,
    threads: ThreadsOpt = None,
    domains: Annotated[
        str | None,
        typer.Option(help="Domains cycled through the multi-domain batches (default all).", show_default=False),
    ] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Square input size (default: the manifest's).", show_default=False)
    ] = None,
    memory: Annotated[bool, typer.Option(help="Peak RSS per model in a fresh process.")] = True,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Other exports of the same domains (comma-separated dirs) whose multi-domain models are timed in the "
            "same interleaved run, e.g. the budget exported with --graph tables.",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the bap.bench/1 JSON here.", show_default=False)
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a latency plot (PNG).", show_default=False)] = None,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Latency / throughput / memory of the compact model against backbone.onnx, interleaved, with ratios."""
    from bap.core.io import atomic_write_json
    from bap.runtime.bench import BenchConfig
    from bap.runtime.bench import bench as run_bench

    setup_logging(verbose, quiet)
    _check_output(json_out, "--json")
    _check_output(plot, "--plot")
    if plot:  # before the timing run, not after it
        from bap.runtime.plots import pyplot

        pyplot()
    cfg = BenchConfig(
        export=str(export),
        device=device,
        backend=backend,
        batch_sizes=parse_ints(batch_sizes, "--batch-sizes"),
        warmup_s=warmup_s,
        duration_s=duration_s,
        iterations=iterations,
        threads=threads,
        domains=parse_csv(domains),
        input_size=input_size,
        memory=memory,
        compare=parse_csv(compare),
    )
    doc = run_bench(cfg, RichCallback(False))
    if json_out:
        atomic_write_json(json_out, doc)
    _print_bench(doc)  # results print with --quiet too
    if plot:
        from bap.runtime.plots import plot_bench

        plot_bench(doc, plot)
    _raise_for_failures(doc)


def _raise_for_failures(doc: dict[str, Any]) -> None:
    """Exit non-zero when the subject failed, or the backbone did (no ratios); other models' failures are rows."""
    from bap.errors import IncompatibleArtifactError
    from bap.runtime.bench import failures

    for role, what, consequence in (
        ("multi-domain", "the multi-domain model", ""),
        ("backbone", "the backbone", " (no ratios can be computed)"),
    ):
        if failed := failures(doc, role):
            r = failed[0]
            raise IncompatibleArtifactError(
                f"{what} failed at batch {r['batch']}{consequence}: {r['error']}",
                "fix that as the error says, or bench on a device that can run the model",
            )


def _print_bench(doc: dict[str, Any]) -> None:
    """The bench table and its one-line summaries."""
    print_grid(bench_grid(doc), console)
    for line in bench_failures(doc):
        console.print(f"[red]{escape(line)}")
    md = [r for r in doc["ratios"] if r["role"] == "multi-domain"]
    for r in md:
        console.print(
            f"batch {r['batch']}: multi-domain/backbone latency {r['latency']:.2f}x at {r['macs']:.2f}x MACs, params {r['params']:.2f}x, file {r['file_size']:.2f}x"
        )
    fast = [r for r in doc["results"] if r["role"] == "backbone" and r.get("latency_ms", {}).get("median", 1e9) < 2]
    if fast:
        console.print(
            f"[yellow]note:[/] the backbone takes {fast[0]['latency_ms']['median']:.2f} ms at batch {fast[0]['batch']}: "
            "at this size per-operator overhead, not compute, sets the ratios (the multi-domain model has more "
            "operators); --input-size 224 shows the compute-bound picture"
        )


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
    app.command("eval")(evaluate)
    app.command("predict")(predict)
    app.command("bench")(bench)
