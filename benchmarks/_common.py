"""Shared helpers of the benchmark scripts: result files, machine facts, the command line that regenerates them."""

from __future__ import annotations

import json
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
WORK = RESULTS / "_work"


def command_line() -> str:
    """The exact command that produced this result (printed under every table)."""
    return "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def machine_facts() -> dict[str, Any]:
    """CPU, threads, architecture, RAM, library versions and date."""
    from bap.core.env import machine, versions

    return {**machine(), "arch": platform.machine(), "ram_gib": ram_gib(),
            "versions": versions("onnx-graphsurgeon", "ultralytics-thop", "torch-pruning"),
            "date": time.strftime("%Y-%m-%d %H:%M %Z")}  # fmt: skip


def ram_gib() -> float | None:
    """Total physical memory in GiB (one decimal), or None where psutil cannot tell."""
    try:
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # psutil absent or unsupported here: the fact is optional
        return None


def write_results(name: str, doc: dict[str, Any], markdown: str, out: Path = RESULTS) -> tuple[Path, Path]:
    """Write ``NAME.json`` and ``NAME.md`` (atomically) and return their paths."""
    from bap.core.io import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    doc = {**doc, "command": command_line(), "machine": machine_facts()}
    j, m = out / f"{name}.json", out / f"{name}.md"
    atomic_write_json(j, json.loads(json.dumps(doc, default=str)))
    atomic_write_text(m, markdown.rstrip() + f"\n\nRegenerate: `{command_line()}`\n")
    return j, m


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def save_plot(fig: Any, path: Path, *axes: Any, dpi: int = 120) -> Path:
    """Legend and grid on ``axes``, tight layout, PNG at ``path``; closes the figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
