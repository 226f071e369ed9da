"""``bap export``: one compact multi-domain ONNX model (and TensorRT engine), validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from bap.cli._console import console, setup_logging
from bap.cli._options import DataRootOpt, QuietOpt, VerboseOpt, parse_csv

__all__ = ["register"]


def plan_table(manifest: dict) -> Table:
    """Per-stage kept/total channels and MACs (executed by the compact model and per domain)."""
    names = [d["name"] for d in manifest["domains"]]
    t = Table(title="channel plan (kept/total; MACs relative to the backbone stage)")
    for col in ("stage", "convs", "in ch.", "out ch.", "executed", *names):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in manifest["plan_summary"]:
        base = max(1, r["macs_backbone"])
        t.add_row(
            r["stage"],
            str(r["convs"]),
            f"{r['in_kept']}/{r['in_total']}",
            f"{r['out_kept']}/{r['out_total']}",
            f"{r['macs_executed'] / base:.2f}",
            *[f"{r['macs'][n] / base:.2f}" for n in names],
        )
    t.add_row(
        "[bold]total",
        "",
        "",
        "",
        f"[bold]{manifest['rel_macs_executed']:.3f}",
        *[f"[bold]{manifest['rel_macs'][n]:.3f}" for n in names],
    )
    return t


def export(
    run_dir: Annotated[Path, typer.Argument(help="A bap train run directory.", show_default=False)],
    budget: Annotated[
        float | None,
        typer.Option(help="Trained budget to export (required if the run has several).", show_default=False),
    ] = None,
    target: Annotated[str, typer.Option(help="onnx, or trt (also build a TensorRT engine on this machine).")] = "onnx",
    graph: Annotated[
        str,
        typer.Option(
            help="Multi-domain graph: routed (each domain runs its own channels on its samples; fastest on ONNX Runtime, "
            "weights folded per domain at load), tables (union of channels + per-sample BN tables; weights held once), "
            "or auto (routed for --target onnx with several domains of a per-domain method; tables for --target trt, "
            "one domain, or dgprune/feature runs, whose domains share one network)."
        ),
    ] = "auto",
    precision: Annotated[str, typer.Option(help="fp32 or fp16 (fp16 is carried by the ONNX file).")] = "fp32",
    domains: Annotated[
        str, typer.Option(help="Domains the model serves: all, or a,b. Naming one also writes its specialised model.")
    ] = "all",
    specialise: Annotated[
        str, typer.Option(help="Also write single-domain specialised models: none, all, or a,b.")
    ] = "none",
    round_to: Annotated[
        int,
        typer.Option(
            help="Pad kept channel counts to a multiple of 1, 8, 16 or 32: ONNX Runtime's fast CPU convs need 16 on AVX-512, 8 on AVX2; TensorRT likes 8."
        ),
    ] = 1,
    gather_threshold: Annotated[
        float,
        typer.Option(
            help="Stream convs gather their kept inputs only when keeping at most this fraction; else they read the full stream with zero weight columns."
        ),
    ] = 1.0,
    batch_size: Annotated[
        int, typer.Option(help="Mixed-domain validation batch; TensorRT profile's optimal batch.")
    ] = 16,
    max_batch: Annotated[int, typer.Option(help="Largest batch of the TensorRT profile.")] = 64,
    opset: Annotated[int, typer.Option(help="ONNX opset (13-21; 17 parses on TensorRT 8.5+).")] = 17,
    atol: Annotated[
        float | None,
        typer.Option(help="Max |ONNX - PyTorch| on logits (default 1e-4 fp32, 5e-2 fp16).", show_default=False),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Export directory (default exports/<run>-b<budget>).", show_default=False),
    ] = None,
    allow_mismatch: Annotated[
        bool, typer.Option("--allow-mismatch", help="Publish even if validation fails (marked in the manifest).")
    ] = False,
    data_root: DataRootOpt = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace (MiB).")] = 1024,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Export a trained budget as ONE compact ONNX model serving every domain (+ backbone.onnx for comparison).

    The model takes image float32 [B,3,H,W] in [0,1] and domain int64 [B] (per sample) and returns logits [B,K_max]
    padded with -inf. Validation against the trained model always runs; nothing is published if it fails.
    """
    from bap.exporter import ExportConfig
    from bap.exporter import export as run_export

    setup_logging(verbose, quiet)
    low = specialise.strip().lower()
    spec = () if low in ("none", "") else ("all",) if low == "all" else parse_csv(specialise)
    cfg = ExportConfig(
        run_dir=str(run_dir),
        budget=budget,
        target=target,
        graph=graph,
        precision=precision,
        domains=parse_csv(domains),
        specialise=spec,
        round_to=round_to,
        gather_threshold=gather_threshold,
        batch_size=batch_size,
        max_batch=max_batch,
        opset=opset,
        atol=atol,
        out=str(out) if out else None,
        allow_mismatch=allow_mismatch,
        data_root=str(data_root) if data_root else None,
        workspace_mb=workspace_mb,
    )

    def say(stage: str, msg: str) -> None:
        if not quiet:
            style = "green" if msg.startswith("[ok]") else "red" if msg.startswith("[fail]") else "cyan"
            console.print(f"[{style}]{stage:>9}[/] {msg}")

    res = run_export(cfg, say)
    if not quiet:
        console.print(plan_table(res.manifest))
        timing = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
        m = res.manifest
        console.print(
            f"exported {res.out_dir} ({m['graph']} graph): rel MACs executed per sample {m['rel_macs_executed']:.3f} "
            f"(domains' own mean {m['rel_macs_mean']:.3f}), rel params {m['rel_params']:.3f}; {timing}"
        )


def register(app: typer.Typer) -> None:
    """Add the command to the root app."""
    app.command("export")(export)
