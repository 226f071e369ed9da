"""Latency across budgets: compact multi-domain, specialised and backbone models on ONNX Runtime CPU fp32.

For every budget of a bap run (the paper-table run, reused from --work, or trained here) the model is exported
with every specialised model, and again with the other graph layout (``--graph tables`` beside the default
``routed``), and everything is benchmarked interleaved at batch 1 and 16. The plot shows latency ratio versus
relative MACs with the y = x line, the compute-bound limit.

    python benchmarks/latency_sweep.py               # about 5 minutes on 2 cores when the run exists
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from _common import RESULTS, WORK, command_line, md_table, save_plot, write_results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=WORK / "paper" / "bap-s0", help="bap run with several budgets")
    p.add_argument("--budgets", default="1.0,0.75,0.5,0.25")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--duration-s", type=float, default=2.0)
    p.add_argument("--round-to", type=int, default=16)
    p.add_argument("--gather-threshold", type=float, default=0.5)
    p.add_argument("--input-size", type=int, default=None, help="benchmark at this size (default: the run's, 32)")
    p.add_argument("--work", type=Path, default=WORK / "latency_sweep")
    p.add_argument("--name", default="latency_sweep")
    return p.parse_args()


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    from bap.exporter import ExportConfig, export
    from bap.runtime.bench import BenchConfig, bench
    from bap.trainer import TrainConfig, train

    budgets = tuple(float(b) for b in a.budgets.split(","))
    if not (a.run / "report.json").is_file():
        print(f"training {a.run} ...", flush=True)
        train(TrainConfig(out=str(a.run), budgets=budgets, resume=a.run.exists(), quiet=True))
    sizes = tuple(int(b) for b in a.batch_sizes.split(","))
    rows, points, docs = [], [], {}
    for beta in budgets:
        out = a.work / f"export-b{beta:g}"
        m = export(ExportConfig(run_dir=str(a.run), budget=beta, out=str(out), specialise=("all",), round_to=a.round_to,
                                gather_threshold=a.gather_threshold, validation_images=8)).manifest  # fmt: skip
        graph = m.graph
        other = "tables" if graph == "routed" else "routed"
        out_other = a.work / f"export-b{beta:g}-{other}"
        export(ExportConfig(run_dir=str(a.run), budget=beta, out=str(out_other), graph=other, round_to=a.round_to,
                            gather_threshold=a.gather_threshold, validation_images=8))  # fmt: skip
        doc = bench(BenchConfig(export=str(out), batch_sizes=sizes, warmup_s=a.warmup_s, duration_s=a.duration_s,
                                iterations=20, threads=a.threads, memory=False, input_size=a.input_size,
                                compare=(str(out_other),)))  # fmt: skip
        docs[f"{beta:g}"] = doc
        for b in sizes:
            q = [r for r in doc["ratios"] if r["batch"] == b]
            md = next(r for r in q if r["role"] == "multi-domain")
            ot = next(r for r in q if r["role"].startswith("compare:"))  # the other graph (one --compare)
            sp = [r for r in q if r["role"].startswith("specialised:")]
            base = next(r for r in doc["results"] if r["role"] == "backbone" and r["batch"] == b)
            sp_lat = statistics.mean(r["latency"] for r in sp)
            sp_mac = statistics.mean(r["macs"] for r in sp)
            rows.append([f"{beta:g}", b, f"{base['latency_ms']['median']:.3f}", f"{md['macs']:.3f}", f"{md['latency']:.3f}",
                         f"{ot['macs']:.3f}", f"{ot['latency']:.3f}", f"{sp_mac:.3f}", f"{sp_lat:.3f}",
                         f"{md['latency'] / sp_lat:.2f}"])  # fmt: skip
            points.append({"budget": beta, "batch": b, "multi": (md["macs"], md["latency"]),
                           "other": (ot["macs"], ot["latency"]),
                           "specialised": [(r["macs"], r["latency"]) for r in sp]})  # fmt: skip
    png = _plot(points, RESULTS / f"{a.name}.png", graph, other)
    header = ["β", "batch", "backbone ms", f"{graph} rel MACs", f"{graph} latency ratio", f"{other} rel MACs",
              f"{other} latency ratio", "spec. rel MACs (mean)", "spec. latency ratio (mean)", f"{graph} / spec."]  # fmt: skip
    size = a.input_size or 32
    text = (f"### Latency sweep: ONNX Runtime CPU fp32, {a.threads} threads, batch {', '.join(map(str, sizes))}, {size}x{size} inputs\n\n"
            f"Run `{a.run.name}` (embedded suite, trained at 32x32; round-to {a.round_to}, gather threshold {a.gather_threshold}); ratios are to `backbone.onnx` at the same batch, models "
            f"interleaved. Multi-domain models: the default export ({graph} graph: each sample runs its own domain's "
            f"channels) and the {other} graph of the same budget; their rel MACs are per sample over an even mix of "
            f"domains (the bench rotates domains every iteration; tables executes the union of all domains' channels).\n\n"
            + md_table(header, rows) + f"\n\n![latency vs MACs]({png.name})")  # fmt: skip
    write_results(a.name, {"rows": rows, "points": points, "bench": docs}, text)
    print(text)
    print(f"\nregenerate: {command_line()}")


def _plot(points: list[dict[str, Any]], path: Path, graph: str, other: str) -> Path:
    from bap.runtime.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for b, marker in ((1, "o"), (16, "s")):
        pts = [p for p in points if p["batch"] == b]
        if not pts:
            continue
        for key, color, name in (("multi", "C0", graph), ("other", "C2", other)):
            xy = [p[key] for p in pts]
            ax.scatter(
                [x for x, _ in xy],
                [y for _, y in xy],
                marker=marker,
                color=color,
                label=f"multi-domain ({name}), batch {b}",
            )
        xs = [x for p in pts for x, _ in p["specialised"]]
        ys = [y for p in pts for _, y in p["specialised"]]
        ax.scatter(xs, ys, marker=marker, color="C1", alpha=0.5, label=f"specialised, batch {b}")
        for p in pts:
            ax.annotate(f"β={p['budget']:g}", p["multi"], fontsize=6)
    ax.plot([0, 1.2], [0, 1.2], "k--", lw=1, label="y = x (compute-bound)")
    ax.set_xlabel("MACs / backbone")
    ax.set_ylabel("latency / backbone")
    return save_plot(fig, path, ax)


if __name__ == "__main__":
    main()
