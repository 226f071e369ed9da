"""Plots of bench results (matplotlib, optional: ``pip install 'bap[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bap.errors import MissingDependencyError

__all__ = ["plot_bench", "pyplot"]


def pyplot():
    """matplotlib.pyplot with a non-interactive backend, or a one-line error."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib", "pip install 'bap[plot]'") from None
    return plt


def plot_bench(doc: dict[str, Any], path: str | Path) -> Path:
    """Median latency per model vs batch, and latency ratio vs MAC ratio (with the y = x compute-bound line)."""
    from bap.core.io import atomic_write_bytes

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    roles = sorted({r["role"] for r in doc["results"]}, key=lambda s: (s != "backbone", s != "multi-domain", s))
    for role in roles:
        rows = [r for r in doc["results"] if r["role"] == role and "error" not in r]
        if rows:
            a.plot([r["batch"] for r in rows], [r["latency_ms"]["median"] for r in rows], marker="o", label=role)
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("batch size")
    a.set_ylabel("median latency (ms)")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    for r in doc["ratios"]:
        b.scatter(
            r["macs"],
            r["latency"],
            marker="o" if r["role"] == "multi-domain" else "x",
            label=f"{r['role']} b{r['batch']}",
        )
    b.plot([0, 1.2], [0, 1.2], "k--", lw=1, label="y = x (compute-bound)")
    b.axhline(1.0, color="grey", lw=0.5)
    b.set_xlabel("MACs / backbone")
    b.set_ylabel("latency / backbone")
    b.legend(fontsize=6)
    b.grid(alpha=0.3)
    fig.suptitle(f"bap bench: {doc['device'].get('device')} ({doc['device'].get('cpu', '')})", fontsize=9)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
