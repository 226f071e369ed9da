"""Rich consoles, logging set-up and the progress callback the library reports to.

Results (tables, summaries, the lines a script would keep) go to ``console`` on stdout; progress bars, status
lines and logs go to ``err_console`` on stderr, so ``bap eval EXPORT > acc.txt`` keeps only the results.
"""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["RichCallback", "console", "err_console", "setup_logging"]

console = Console(highlight=False)  # results: stdout
err_console = Console(stderr=True, highlight=False)  # progress, status and logs: stderr


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Library logs go to stderr through rich; INFO with ``--verbose``, WARNING otherwise, ERROR with ``--quiet``."""
    level = logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING
    handler = RichHandler(console=err_console, show_path=False, show_time=verbose, markup=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("bap").setLevel(level)
    for noisy in ("thop", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


class RichCallback:
    """A live progress bar per phase with the latest loss / switch usage, on stderr (``enabled=False``: silent)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.progress: Progress | None = None
        self.task = None
        self._stats: dict[str, float] = {}

    def on_phase(self, name: str, total: int) -> None:
        """Start a bar."""
        if not self.enabled:
            return
        self.on_phase_end()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, stats="")

    def on_advance(self, n: int = 1, **stats: float) -> None:
        """Advance and show the running means."""
        if not self.enabled or self.progress is None:
            return
        for k, v in stats.items():
            self._stats[k] = v if k == "epoch" else 0.9 * self._stats.get(k, v) + 0.1 * v
        text = " ".join(f"ep {int(v)}" if k == "epoch" else f"{k} {v:.3f}" for k, v in self._stats.items())
        self.progress.update(self.task, advance=n, stats=text)

    def on_phase_end(self, message: str | None = None) -> None:
        """Close the bar."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self._stats = {}
        if message and self.enabled:
            err_console.print(message)

    def on_budget_end(self, result: dict[str, Any]) -> None:
        """One line per finished budget."""
        if not self.enabled:
            return
        err_console.print(
            f"  β={result['budget']:g}: mean acc {result['mean_accuracy']:.3f}, "
            f"rel MACs {result.get('rel_macs_mean', float('nan')):.3f}, rel params {result.get('rel_params', float('nan')):.3f}"
        )
