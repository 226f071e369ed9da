"""``bap data list`` and ``bap models``: what is available."""

from __future__ import annotations

import json

import typer

from bap.cli._console import console
from bap.cli._options import DataRootOpt, JsonOpt, LayoutOpt
from bap.cli._tables import Grid, print_grid

__all__ = ["register"]

data_app = typer.Typer(help="Inspect the data bap trains on.", no_args_is_help=True)


@data_app.command("list")
def data_list(data_root: DataRootOpt = None, layout: LayoutOpt = "imagefolder", as_json: JsonOpt = False) -> None:
    """List the domains (default: the embedded suite built from images inside installed packages)."""
    from bap.data import load_domains

    ds = load_domains(str(data_root) if data_root else None, layout)
    union = ds.source_domain == "union"
    rows = [d.summary() | {"source_domain": union or d.name == ds.source_domain} for d in ds]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    src = "the union of every training split" if union else ds.source_domain
    g = Grid(
        ["name", "classes", "train", "val", "test", "size", "source"],
        title=f"domains ({ds.origin.get('kind')}); default backbone pretrained on {src}",
        caption="train / val / test: images per split; size: input size in pixels",
        right={1, 2, 3, 4, 5},
        wrap={6},
    )
    for r in rows:
        name = r["name"] + (" (source)" if r["source_domain"] and not union else "")
        g.add_row(
            name, str(r["classes"]), str(r["train"]), str(r["val"]), str(r["test"]), str(r["input_size"]), r["source"]
        )
    print_grid(g, console)


def models(as_json: JsonOpt = False) -> None:
    """List the registered backbones (use with bap train --backbone)."""
    from bap.models import list_backbones

    rows = [{"name": s.name, "input_size": s.input_size, "description": s.description} for s in list_backbones()]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    g = Grid(["name", "input", "description"], title="backbones", right={1}, wrap={2})
    for r in rows:
        g.add_row(r["name"], f"{r['input_size']} px", r["description"])
    print_grid(g, console)


def register(app: typer.Typer) -> None:
    """Add the commands to the root app."""
    app.add_typer(data_app, name="data")
    app.command("models")(models)
