"""``bap export``: one compact multi-domain ONNX model (and TensorRT engines), validated.

Every default comes from :class:`~bap.exporter.config.ExportConfig` (one default per option).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bap.cli._console import console, err_console, setup_logging
from bap.cli._options import DataRootOpt, QuietOpt, VerboseOpt, parse_csv
from bap.cli._tables import Grid, grid_fits, print_grid
from bap.exporter.config import ExportConfig

if TYPE_CHECKING:
    from bap.exporter.manifest import Manifest

__all__ = ["config_from_cli", "plan_grid", "print_plan", "register"]

D = ExportConfig  # class attributes of the dataclass are its defaults


def plan_grid(manifest: Manifest) -> Grid:
    """Per-stage kept/total channels and MACs (executed by the compact model and per domain)."""
    names = manifest.domain_names
    g = Grid(
        ["stage", "convs", "in ch.", "out ch.", "executed", *names],
        title="channel plan (kept/total channels; MACs relative to the backbone's stage)",
        caption="executed: MACs the multi-domain model runs per sample; a domain's column: its own network's MACs.",
        right=set(range(1, 5 + len(names))),
    )
    for r in manifest.plan_summary:
        base = max(1, r["macs_backbone"])
        g.add_row(
            r["stage"],
            str(r["convs"]),
            f"{r['in_kept']}/{r['in_total']}",
            f"{r['out_kept']}/{r['out_total']}",
            f"{r['macs_executed'] / base:.2f}",
            *[f"{r['macs'][n] / base:.2f}" for n in names],
        )
    executed = manifest.rel_macs_executed if manifest.rel_macs_executed is not None else manifest.rel_macs_mean
    g.add_row("[bold]total", "", "", "", f"[bold]{executed:.3f}", *[f"[bold]{manifest.rel_macs[n]:.3f}" for n in names])
    return g


def print_plan(manifest: Manifest, out: Console) -> None:
    """The channel plan as one table when it fits ``out``, else channels and per-domain MACs as two tables."""
    g = plan_grid(manifest)
    if grid_fits(g, out):
        print_grid(g, out)
        return
    cut = 5  # stage, convs, in ch., out ch., executed | one column per domain
    channels = Grid(
        g.headers[:cut],
        [r[:cut] for r in g.rows],
        title=g.title,
        caption="executed: MACs the multi-domain model runs per sample.",
        right=set(range(1, cut)),
    )
    per_domain = Grid(
        g.headers[:1] + g.headers[cut:],
        [r[:1] + r[cut:] for r in g.rows],
        title="MACs of each domain's own network, relative to the backbone's stage",
        right=set(range(1, len(g.headers) - cut + 1)),
    )
    print_grid(channels, out)
    print_grid(per_domain, out)


def _csv_or_all(value: str, empty: tuple[str, ...]) -> tuple[str, ...]:
    low = value.strip().lower()
    return empty if low in ("none", "") else ("all",) if low == "all" else parse_csv(value)


def config_from_cli(
    run_dir: Path, domains: str, specialise: str, out: Path | None, data_root: Path | None, **options
) -> ExportConfig:
    """The :class:`ExportConfig` of a command line (``domains``/``specialise`` as typed: ``all``, ``none``, ``a,b``)."""
    doms = parse_csv(domains) if domains.strip().lower() != "all" else ()
    return ExportConfig(
        run_dir=str(run_dir),
        domains=doms,
        specialise=_csv_or_all(specialise, ()),
        out=str(out) if out else None,
        data_root=str(data_root) if data_root else None,
        **options,
    )


def export(
    run_dir: Annotated[Path, typer.Argument(help="A bap train run directory.", show_default=False, metavar="RUN_DIR")],
    budget: Annotated[
        float | None,
        typer.Option(help="Trained budget to export (required if the run has several).", show_default=False),
    ] = D.budget,
    target: Annotated[
        str, typer.Option(help="onnx, or trt (also build TensorRT engines for every model file on this machine).")
    ] = D.target,
    graph: Annotated[
        str,
        typer.Option(
            help="Multi-domain graph: shared (each domain runs its own channels on its samples; the conv blocks the "
            "domains have in common are held once, as much as --max-weights needs), routed (own channels, every "
            "domain's weights folded separately at load: fastest, most memory), tables (union of channels + per-sample "
            "BN tables: leanest, slowest on ONNX Runtime), or auto (shared for --target onnx with several domains of a "
            "per-domain method; tables for --target trt, one domain, or dgprune/feature runs)."
        ),
    ] = D.graph,
    precision: Annotated[str, typer.Option(help="fp32 or fp16 (fp16 is carried by the ONNX file).")] = D.precision,
    domains: Annotated[
        str, typer.Option(help="Domains the model serves: all, or a,b. Naming one also writes its specialised model.")
    ] = "all",  # ExportConfig.domains == () (see config_from_cli)
    specialise: Annotated[
        str, typer.Option(help="Also write single-domain specialised models: none, all, or a,b.")
    ] = "none",  # ExportConfig.specialise == ()
    round_to: Annotated[
        int,
        typer.Option(
            help=f"Pad kept channel counts to a multiple of 1, 8, 16 or 32 (default {D.round_to}: ONNX Runtime's CPU "
            "blocked NCHWc convs need multiples of 8, else they fall back to slow kernels; measured fastest on "
            "ResNet-50 and cifar_resnet14 at 224 px)."
        ),
    ] = D.round_to,
    gather_threshold: Annotated[
        float,
        typer.Option(
            help=f"Stream convs gather their kept inputs only when keeping at most this fraction (default "
            f"{D.gather_threshold}: above it a Gather costs more than the zero weight columns it saves), else they "
            "read the full stream."
        ),
    ] = D.gather_threshold,
    max_weights: Annotated[
        float,
        typer.Option(
            help=f"Most weights the multi-domain model may hold once ONNX Runtime has loaded it, x the backbone's "
            f"(default {D.max_weights:g}: never more than the model it replaces); --graph shared stores common blocks "
            "once until it fits (measured at export)."
        ),
    ] = D.max_weights,
    batch_size: Annotated[
        int, typer.Option(help="Mixed-domain validation batch; TensorRT profile's optimal batch.")
    ] = D.batch_size,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile.")] = D.max_batch,
    opset: Annotated[int, typer.Option(help="ONNX opset (13-21; 17 parses on TensorRT 8.5+).")] = D.opset,
    atol: Annotated[
        float | None,
        typer.Option(
            help="Max |ONNX - PyTorch| on logits (default: the graph layout's tolerance, 1e-4 fp32, 5e-2 fp16).",
            show_default=False,
        ),
    ] = D.atol,
    validation_images: Annotated[
        int, typer.Option(help="Test images per served domain that validation compares (at least 1).")
    ] = D.validation_images,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Export directory (default exports/<run>-b<budget>).", show_default=False),
    ] = None,  # ExportConfig.out
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Publish even if validation fails (marked in the manifest).")
    ] = D.allow_mismatch,
    data_root: DataRootOpt = None,  # ExportConfig.data_root
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace (MiB).")] = D.workspace_mb,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export a trained budget as ONE compact ONNX model serving every domain (+ backbone.onnx for comparison).

    The model takes image float32 [B,3,H,W] in [0,1] and domain int64 [B] (per sample) and returns logits [B,K_max]
    padded with -inf. Validation against the trained model always runs; nothing is published if it fails.
    """
    from bap.exporter import export as run_export

    setup_logging(verbose, quiet)
    cfg = config_from_cli(
        run_dir, domains, specialise, out, data_root, budget=budget, target=target, graph=graph, precision=precision,
        round_to=round_to, gather_threshold=gather_threshold, max_weights=max_weights, batch_size=batch_size, max_batch=max_batch, opset=opset,
        atol=atol, allow_mismatch=allow_mismatch, workspace_mb=workspace_mb, validation_images=validation_images,
    )  # fmt: skip

    def say(stage: str, msg: str) -> None:
        if not quiet:
            style = "green" if msg.startswith("[ok]") else "red" if msg.startswith("[fail]") else "cyan"
            err_console.print(f"[{style}]{stage:>9}[/] {escape(msg)}")

    res = run_export(cfg, say)
    m = res.manifest  # the results print with --quiet too
    print_plan(m, console)
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    console.print(
        f"exported {res.out_dir} ({m.graph} graph): rel MACs executed per sample {m.rel_macs_executed:.3f} "
        f"(domains' own mean {m.rel_macs_mean:.3f}), rel params {m.rel_params:.3f}; {timing}"
    )


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("export")(export)
