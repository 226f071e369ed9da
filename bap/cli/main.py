"""``bap``: train per-domain channel switches, export one compact multi-domain model, benchmark it.

Commands are registered here; each lives in its own module and only builds a config and calls the library.
"""

from __future__ import annotations

import sys

import typer

from bap import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="bap",
    help=(
        "Budget-aware pruning for multi-domain CNNs.\n\n"
        "bap train -> bap export --budget 0.5 -> bap bench: learn which channels each domain needs under a budget, "
        "ship ONE compact ONNX model (and TensorRT engine) that serves every domain, and measure it against "
        "the unpruned backbone."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Budget-aware pruning for multi-domain CNNs."""


def _register() -> None:
    from bap.cli import data, export, runtime, train

    data.register(app)
    train.register(app)
    export.register(app)
    runtime.register(app)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app with bap's error handling (one line + exit 2 for user errors)."""
    from bap.cli._errors import report_error

    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="bap", standalone_mode=False)
    except SystemExit as e:  # typer.Exit inside commands
        raise e
    except BaseException as e:
        sys.exit(report_error(e))
    sys.exit(rv if isinstance(rv, int) else 0)
