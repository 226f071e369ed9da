"""One error path for every command: user errors are one line + exit 2, internal errors are logged + exit 1."""

from __future__ import annotations

import datetime as _dt
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from bap.errors import BapError, TrainingInterrupted

__all__ = ["crash_log_dir", "report_error"]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def crash_log_dir() -> Path:
    """Where full tracebacks of internal errors go."""
    from bap.core.env import cache_dir

    return cache_dir() / "logs"


def report_error(exc: BaseException) -> int:
    """Print ``exc`` for a user and return the process exit code."""
    if isinstance(exc, TrainingInterrupted):  # not a mistake: the user stopped it, and can continue
        err_console.print(f"[yellow]interrupted:[/] {escape(exc.one_line())}", markup=True)
        return exc.exit_code
    if isinstance(exc, BapError):
        err_console.print(f"[bold red]error:[/] {escape(exc.one_line())}", markup=True, highlight=False)
        return exc.exit_code
    name = type(exc).__name__
    mro = {c.__name__ for c in type(exc).__mro__}
    if "NoArgsIsHelpError" in mro:  # help was printed already
        return 0
    if "UsageError" in mro:  # click's or typer's vendored click: bad flag, value or missing argument
        ctx = getattr(exc, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "bap"
        msg = " ".join(exc.format_message().split())
        err_console.print(
            f"[bold red]error:[/] {escape(msg)} (see '{escape(cmd)} --help')", markup=True, highlight=False
        )
        return 2
    if isinstance(exc, KeyboardInterrupt) or "Abort" in mro:
        err_console.print("aborted")
        return 130
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = crash_log_dir() / f"crash-{stamp}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(exc)) + f"\nargv: {sys.argv}\n")
        where = str(path)
    except OSError:
        where = "(could not write the log)"
    first = str(exc).splitlines()[0] if str(exc) else ""
    err_console.print(
        f"[bold red]internal error:[/] {escape(name)}: {escape(first[:300])} - this is a bug in bap; full traceback in {escape(where)}",
        markup=True,
        highlight=False,
    )
    return 1
