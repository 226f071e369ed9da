"""``bap``: train per-domain channel switches, export one compact multi-domain model, benchmark it.

Commands are registered here; each lives in its own module and only builds a config and calls the library.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

import typer
from typer.core import TyperCommand

from bap import __version__

__all__ = ["TRAIN_EXTRA", "app", "main", "missing_train_extra", "require_train_extra"]

# Modules of the ``train`` extra (import name -> what to call it) and the commands that need them. The base install
# is the runtime (ONNX Runtime, numpy): ``bap eval / predict / bench`` and ``--help`` work without any of these.
TRAIN_EXTRA: dict[str, str] = {
    "torch": "PyTorch",
    "torchvision": "torchvision",
    "safetensors": "safetensors",
    "thop": "ultralytics-thop",
    "onnx": "onnx",
    "onnx_graphsurgeon": "onnx-graphsurgeon",
    "mlxtend": "mlxtend",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}
NEEDS_TRAIN_EXTRA = ("train", "pretrain", "export", "models", "data list")

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


def missing_train_extra(modules: Iterable[str] = TRAIN_EXTRA) -> list[str]:
    """Names of the ``train`` extra's packages this install lacks (found without importing them)."""
    missing = []
    for mod in modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):  # a broken or blocked package counts as absent
            found = False
        if not found:
            missing.append(TRAIN_EXTRA.get(mod, mod))
    return missing


def require_train_extra(command: str) -> None:
    """Raise a one-line :class:`~bap.errors.MissingDependencyError` if ``bap COMMAND`` cannot run on this install."""
    missing = missing_train_extra()
    if missing:
        from bap.errors import MissingDependencyError

        # PyTorch is the one to name when it is missing (the extra brings the rest); otherwise name what is missing
        what = "PyTorch" if "PyTorch" in missing else ", ".join(missing)
        raise MissingDependencyError(
            f"bap {command} needs {what}, which this install lacks", "pip install 'bap[train]'"
        )


def _needs_train_extra(command: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` behind the dependency check; the signature (typer's options) and --help are unchanged."""

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        require_train_extra(command)
        return fn(*args, **kwargs)

    return checked


class BapCommand(TyperCommand):
    """A typer command whose usage line reads ``bap export [OPTIONS] RUN_DIR``, not ``{RUN_DIR}``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        """Typer's usage pieces without the braces it puts around required arguments."""
        return [re.sub(r"^\{(.*)\}((\.\.\.)?)$", r"\1\2", p) for p in super().collect_usage_pieces(ctx)]


def reflow(doc: str | None) -> str | None:
    """``doc`` with each paragraph on one line.

    Typer's rich help keeps single line breaks, which at 80 columns leave half-empty lines mid-sentence.
    """
    if not doc:
        return doc
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(doc).split("\n\n"))


def _polish_help(typer_app: typer.Typer) -> None:
    """Reflowed help texts and brace-free usage lines for every command."""
    for info in typer_app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = reflow(info.callback.__doc__)
        if info.cls in (None, TyperCommand):
            info.cls = BapCommand
    for group in typer_app.registered_groups:
        _polish_help(group.typer_instance)


def _guard(typer_app: typer.Typer, prefix: str = "") -> None:
    for info in typer_app.registered_commands:
        name = f"{prefix}{info.name or info.callback.__name__}"
        if name in NEEDS_TRAIN_EXTRA and info.callback is not None:
            info.callback = _needs_train_extra(name, info.callback)
    for group in typer_app.registered_groups:
        _guard(group.typer_instance, f"{prefix}{group.name} ")


def _register() -> None:
    # The command modules import their libraries (torch, onnxruntime, ...) inside the command functions, so
    # registering them is cheap and works on a runtime-only install.
    from bap.cli import data, export, runtime, summary, train

    data.register(app)
    train.register(app)
    export.register(app)
    runtime.register(app)
    summary.register(app)
    _polish_help(app)
    _guard(app)


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
