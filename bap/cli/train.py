"""``bap train`` and ``bap pretrain``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bap.cli._console import RichCallback, console, err_console, setup_logging
from bap.cli._options import (
    DataRootOpt,
    DomainsOpt,
    LayoutOpt,
    QuietOpt,
    VerboseOpt,
    parse_csv,
    parse_floats,
    parse_ints,
)
from bap.cli._tables import Grid, grid_fits, print_grid

__all__ = ["print_results", "register", "results_grid", "results_grid_narrow"]


RESULTS_TITLE = "bap train: results"
RESULTS_LEGEND = (
    "Accuracy on each domain's test split. S: Visual Decathlon score (1000 per error-free domain, 0 at twice the "
    "fine-tuned baseline's error). MACs and params relative to the backbone. max usage: the largest share of "
    "switches a domain keeps on; AND: share kept by every domain; prunable: share kept by none."
)


def _cells(run: dict[str, Any], names: list[str]) -> dict[str, str]:
    """One run's formatted metrics by column name."""
    s = run.get("s_score")
    return {
        "max usage": f"{max(run['active_fraction'].values()):.3f}",
        **{n: f"{run['accuracy'][n]:.3f}" for n in names},
        "mean": f"{run['mean_accuracy']:.3f}",
        "S": "-" if s is None else f"{s:.0f}",
        "rel MACs": f"{run['rel_macs_mean']:.3f}",
        "rel params": f"{run['rel_params']:.3f}",
        "AND": f"{run['and_fraction']:.2f}",
        "prunable": f"{run['prunable_fraction']:.2f}",
    }


def results_grid(report: dict[str, Any]) -> Grid:
    """The paper-style table of a training report, one row per method x budget (wide terminals)."""
    names = [d["name"] for d in report["domains"]]
    metrics = ["max usage", *names, "mean", "S", "rel MACs", "rel params", "AND", "prunable"]
    g = Grid(
        ["method", "β", *metrics], title=RESULTS_TITLE, caption=RESULTS_LEGEND, right=set(range(1, 3 + len(metrics)))
    )
    for r in report["runs"]:
        cells = _cells(r, names)
        g.add_row(r["method"], f"{r['budget']:g}", *(cells[m] for m in metrics))
    return g


def results_grid_narrow(report: dict[str, Any]) -> Grid:
    """The same numbers transposed (one column per method x budget, one row per metric) for narrow terminals."""
    names = [d["name"] for d in report["domains"]]
    runs = report["runs"]
    g = Grid(
        ["", *(f"{r['method']} β={r['budget']:g}" for r in runs)],
        title=RESULTS_TITLE,
        caption=RESULTS_LEGEND,
        right=set(range(1, 1 + len(runs))),
    )
    cells = [_cells(r, names) for r in runs]
    labels = {"mean": "mean accuracy", "S": f"S (of {1000 * len(names)})"}
    for m in [*names, "mean", "S", "max usage", "rel MACs", "rel params", "AND", "prunable"]:
        g.add_row(labels.get(m, m), *(c[m] for c in cells), section=m in (names[-1], "S"))
    return g


def print_results(report: dict[str, Any], out: Console) -> None:
    """The results of ``bap train``: the wide table when it fits ``out``, else the transposed one."""
    wide = results_grid(report)
    print_grid(wide if grid_fits(wide, out) else results_grid_narrow(report), out)


def _explicit_fields(ctx: typer.Context) -> tuple[str, ...]:
    """Names of the train flags given on the command line (or by environment): a preset does not override them."""
    import dataclasses

    from typer._click.core import ParameterSource

    from bap.trainer import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return tuple(sorted(n for n in ctx.params if n in fields and ctx.get_parameter_source(n) in given))


def _preset_line(cfg: Any) -> str | None:
    """One status line saying what ``--preset`` set (and which preset fields the command line kept)."""
    if not cfg.preset or cfg.resume:
        return None
    changes, kept = cfg.preset_changes()

    def fmt(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in d.items())

    line = f"preset {cfg.preset} set {fmt(changes) or 'nothing'}"
    return line + (f"; kept from the command line: {fmt(kept)}" if kept else "")


def train(
    ctx: typer.Context,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory to create (or continue with --resume).")
    ] = Path("runs/default"),
    method: Annotated[
        str,
        typer.Option(
            help="bap (sharing loss), ba2 (no sharing loss), feature (heads only), finetune (full network per domain), "
            "dgprune (one shared network, channels pruned by a domain-generalised Taylor importance)."
        ),
    ] = "bap",
    budgets: Annotated[
        str,
        typer.Option(
            "--budgets",
            "--budget",
            help="Comma-separated budgets in (0, 1]; one model per budget (dgprune: fractions of the backbone's MACs).",
        ),
    ] = "1.0,0.5",
    budget_unit: Annotated[
        str,
        typer.Option(
            help="switches (paper: mean of switches) or macs (switches weighted by the compute they control)."
        ),
    ] = "switches",
    lambda_ps: Annotated[float, typer.Option("--lambda-ps", help="Weight of the parameter-sharing loss (bap).")] = 1.0,
    ps_scale: Annotated[
        str, typer.Option(help="none, or lambda: scale the sharing weight by max(1, budget multiplier).")
    ] = "none",
    sharing_loss: Annotated[
        str,
        typer.Option(
            help="bap's sharing loss: intersection (ICIAP 2023: pull domains onto the positions all others use), "
            "union (push each domain off the positions only it uses) or jaccard (both)."
        ),
    ] = "intersection",
    ps_weight: Annotated[
        str,
        typer.Option(help="fixed (--lambda-ps) or learned (starts at --lambda-ps, learned within x0.1..x10 of it)."),
    ] = "fixed",
    union_softness: Annotated[
        float,
        typer.Option(
            help="union/jaccard: each other domain's switch counts as 1 - q in the relaxed union, so a position c "
            "other domains use is pushed off with strength q^c (0: exact, only positions no other domain uses)."
        ),
    ] = 0.5,
    ps_ramp_epochs: Annotated[
        int, typer.Option(help="Raise the sharing weight linearly from 0 to full over this many epochs (0: none).")
    ] = 0,
    projection: Annotated[
        str,
        typer.Option(
            help="After training, bring each domain onto its budget by switching off its lowest switches (lowest) "
            "or the positions the fewest domains use first (sharing: frees positions for pruning); swap: sharing, "
            "then trade each domain's unique positions for ones all other domains use, at fixed usage."
        ),
    ] = "lowest",
    domain_sampling: Annotated[
        str,
        typer.Option(
            help="Batches per epoch of each domain: uniform (the same for all), proportional (to its training size, "
            "the paper's protocol) or sqrt (to its square root); budget multiplier steps are scaled to match."
        ),
    ] = "uniform",
    backbone: Annotated[str, typer.Option(help="Registered backbone (see bap models).")] = "cifar_resnet14",
    weights: Annotated[
        str | None,
        typer.Option(
            help="Backbone weights: a state_dict file, or torchvision:TAG. Default: pretrain on the source domain (cached).",
            show_default=False,
        ),
    ] = None,
    data_root: DataRootOpt = None,
    layout: LayoutOpt = "imagefolder",
    domains: DomainsOpt = None,
    epochs: Annotated[int, typer.Option(help="Epochs per budget.")] = 6,
    steps_per_epoch: Annotated[
        int,
        typer.Option(help="Rounds per epoch (one batch of every domain each); 0 = one pass over the largest domain."),
    ] = 32,
    batch_size: Annotated[int, typer.Option(help="Batch size (single-domain batches).")] = 64,
    lr_head: Annotated[
        float | None,
        typer.Option(help="SGD learning rate of the heads (default: 0.1 x 64 / feature width).", show_default=False),
    ] = None,
    lr_bn: Annotated[float, typer.Option(help="SGD learning rate of the per-domain BN.")] = 0.01,
    lr_switch: Annotated[
        float, typer.Option(help="Adam learning rate of the switches (keep <= init/10 = 1e-4).")
    ] = 1e-4,
    lr_milestones: Annotated[str, typer.Option(help="Epochs at which learning rates drop x0.1.")] = "5",
    lambda_lr: Annotated[
        float | None,
        typer.Option(help="Step of the budget multiplier (default: 0.1 for β >= 0.5, else 0.5).", show_default=False),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Paper settings: paper-decathlon (batch 32, 60 epochs) or paper-i2s (batch 12, 45 epochs, "
            "lambda-PS 0.125); flags given explicitly win over the preset.",
            show_default=False,
        ),
    ] = None,
    reference_errors: Annotated[
        Path | None,
        typer.Option(
            help="JSON file {domain: error} (fractions) defining the S-score; default: the embedded suite's own, "
            "or the Visual Decathlon's fine-tuned baseline (Rebuffi et al. 2017) for --layout decathlon.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and batch order.")] = 0,
    pretrain_epochs: Annotated[
        int, typer.Option(help="Epochs of backbone pretraining on the source domain (when no --weights; cached).")
    ] = 6,
    pretrain_source: Annotated[
        str | None,
        typer.Option(
            help="Domain the backbone is pretrained on (or 'union' of all training splits); default: mnist for the embedded suite.",
            show_default=False,
        ),
    ] = None,
    dg_variance_weight: Annotated[
        float,
        typer.Option(
            help="dgprune: weight of the across-domain variance of the importance (0 = plain Taylor; 4 was "
            "chosen on the embedded digit domains' validation accuracy, see benchmarks/RESULTS.md)."
        ),
    ] = 4.0,
    dg_head: Annotated[
        str, typer.Option(help="dgprune: auto (shared head iff the label spaces agree), shared or per-domain.")
    ] = "auto",
    dg_variance: Annotated[
        str,
        typer.Option(
            help="dgprune: approx (the variance of the importance) or exact (the change in the risk's variance "
            "across domains, 2 Cov + Var)."
        ),
    ] = "approx",
    dg_score: Annotated[
        str, typer.Option(help="dgprune: taylor (first-order loss change) or squared (its square, Molchanov 2019).")
    ] = "taylor",
    round_to: Annotated[int, typer.Option(help="Channel rounding used for the MAC/param metrics (1, 8, 16, 32).")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    amp: Annotated[bool, typer.Option(help="bfloat16 autocast on CUDA.")] = True,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the interrupted run in --out (other flags are read from it).")
    ] = False,
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Learn per-domain channel switches on a frozen backbone under one or more budgets.

    With no arguments: the embedded 5-domain suite, the default backbone (pretrained on the source domain and
    cached the first time), budgets 1.0 and 0.5, into runs/default. Runs under torchrun for several processes.
    """
    import os

    from bap.trainer import TrainConfig
    from bap.trainer import train as run_train

    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    quiet = quiet or not rank0
    setup_logging(verbose, quiet and not verbose)
    cfg = TrainConfig(
        out=str(out),
        method=method,
        budgets=parse_floats(budgets, "--budgets"),
        budget_unit=budget_unit,
        backbone=backbone,
        weights=weights,
        data_root=str(data_root) if data_root else None,
        layout=layout,
        domains=parse_csv(domains),
        seed=seed,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        lr_head=lr_head,
        lr_bn=lr_bn,
        lr_switch=lr_switch,
        lr_milestones=parse_ints(lr_milestones, "--lr-milestones"),
        lambda_ps=lambda_ps,
        ps_scale=ps_scale,
        sharing_loss=sharing_loss,
        ps_weight=ps_weight,
        ps_ramp_epochs=ps_ramp_epochs,
        union_softness=union_softness,
        projection=projection,
        domain_sampling=domain_sampling,
        lambda_lr=lambda_lr,
        preset=preset,
        reference_errors=str(reference_errors) if reference_errors else None,
        dg_variance_weight=dg_variance_weight,
        dg_head=dg_head,
        dg_variance=dg_variance,
        dg_score=dg_score,
        round_to=round_to,
        pretrain_epochs=pretrain_epochs,
        pretrain_source=pretrain_source,
        device=device,
        amp=amp,
        resume=resume,
        quiet=quiet,
        explicit=_explicit_fields(ctx),
    )
    line = _preset_line(cfg)
    if line and not quiet:
        err_console.print(line, markup=False, soft_wrap=True)
    report = run_train(cfg, RichCallback(enabled=not quiet))
    if rank0:  # --quiet silences progress, not results
        print_results(report, console)
        console.print(f"run directory: {cfg.out}  (next: bap export {cfg.out} --budget 0.5)")


def pretrain(
    backbone: Annotated[str, typer.Option(help="Registered backbone.")] = "cifar_resnet14",
    epochs: Annotated[int, typer.Option(help="Epochs on the source domain.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    data_root: DataRootOpt = None,
    layout: LayoutOpt = "imagefolder",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    quiet: QuietOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Pretrain a backbone on the source domain and cache it (bap train does this on first use)."""
    from bap.core.env import resolve_device
    from bap.data import load_domains
    from bap.models.backbones import BACKBONES
    from bap.trainer.pretrain import ensure_pretrained

    setup_logging(verbose, quiet)
    BACKBONES.get(backbone)
    ds = load_domains(str(data_root) if data_root else None, layout)
    path, info = ensure_pretrained(backbone, ds, epochs, seed, resolve_device(device), RichCallback(not quiet))
    console.print(f"{backbone}: val accuracy on {info['source']} {info['val_accuracy']:.3f} -> {path}")


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
    app.command("train")(train)
    app.command("pretrain")(pretrain)
