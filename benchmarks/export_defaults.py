"""Pick ``bap export``'s ``--round-to`` / ``--gather-threshold`` defaults by measurement on ONNX Runtime CPU.

Exports one trained budget with every setting of a grid and times all of them against the unpruned backbone in one
interleaved ``bap bench`` run (fp32, fixed threads, batch 1 and 16, 224 px by default). The first setting of the grid
is exported with *no flags at all* (``ExportConfig`` defaults, i.e. what ``bap export RUN --budget B`` does), so the
table also shows that the default gives the ratios of the setting it claims to be.

Why a grid: ONNX Runtime's CPU provider runs convs in a blocked NCHWc layout only when channel counts are
multiples of 8 (16 on AVX-512 for the best blocking); a pruned layer of 50 channels falls back to a plain conv.
Rounding kept counts up costs MACs; gathering a consumer's input channels costs a ``Gather`` copy.

    python benchmarks/export_defaults.py --run RUN_DIR            # about 6 minutes for ResNet-50 on 2 cores
    python benchmarks/export_defaults.py --run RUN_DIR --name export_defaults_run2
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from _common import WORK, command_line, md_table, write_results

GRID = ((1, 1.0), (1, 0.5), (8, 0.5), (8, 1.0), (16, 0.5), (16, 1.0), (32, 0.5))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained run (e.g. benchmarks/export_latency.py's)")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--size", type=int, default=224, help="benchmark input size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--duration-s", type=float, default=6.0)
    p.add_argument("--grid", default=",".join(f"{r}:{g:g}" for r, g in GRID), help="ROUND:GATHER pairs")
    p.add_argument("--work", type=Path, default=WORK / "export_defaults")
    p.add_argument("--name", default="export_defaults", help="result file stem")
    p.add_argument("--reuse", action="store_true", help="time the exports already in --work (a second timing run)")
    return p.parse_args()


def _label(role: str, by_dir: dict[str, str], labels: list[str]) -> str:
    """Bench role -> grid label: the first compared export is labelled by its graph, later ones by directory."""
    if role == "multi-domain":
        return "default"
    return by_dir[role.split("/")[-1]] if "/" in role else labels[1]


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    from bap.exporter import ExportConfig, export, read_manifest
    from bap.runtime.bench import BenchConfig, bench

    defaults = ExportConfig(run_dir=str(a.run))
    grid = [(int(r), float(g)) for r, g in (x.split(":") for x in a.grid.split(","))]
    a.work.mkdir(parents=True, exist_ok=True)
    outs: dict[str, Path] = {}
    params: dict[str, tuple[float, float]] = {}
    for label, kw in [("default", {}), *((f"r{r}-g{g:g}", {"round_to": r, "gather_threshold": g}) for r, g in grid)]:
        out = a.work / f"{a.run.name}-{label}"
        t0 = time.time()
        if a.reuse and (out / "manifest.json").is_file():
            m = read_manifest(out)
        else:
            shutil.rmtree(out, ignore_errors=True)
            m = export(
                ExportConfig(run_dir=str(a.run), budget=a.budget, out=str(out), validation_images=4, **kw)
            ).manifest
        outs[label] = out
        params[label] = (m.params.model / m.params.backbone, (m.params.loaded or m.params.model) / m.params.backbone)
        how = "reused" if a.reuse and time.time() - t0 < 1 else f"exported in {time.time() - t0:.1f} s"
        print(f"{label} ({m.graph}): {how}")
    sizes = tuple(int(b) for b in a.batch_sizes.split(","))
    doc = bench(BenchConfig(export=str(outs["default"]), batch_sizes=sizes, warmup_s=a.warmup_s,
                            duration_s=a.duration_s, iterations=5, threads=a.threads, input_size=a.size, memory=False,
                            specialised=False, compare=tuple(str(outs[k]) for k in outs if k != "default")))  # fmt: skip
    by_dir = {str(Path(p).resolve().name): k for k, p in outs.items()}
    rows = []
    for b in sizes:
        for q in (q for q in doc["ratios"] if q["batch"] == b):
            label = _label(q["role"], by_dir, list(outs))
            rows.append([b, label, f"{q['macs']:.3f}", f"{q['latency']:.3f}", f"{q['latency'] / q['macs']:.2f}",
                         f"{params[label][0]:.3f}", f"{params[label][1]:.3f}"])  # fmt: skip
    header = ["batch", "setting", "rel MACs", "latency / backbone", "latency / MACs", "params stored", "params held"]
    text = (f"### Export defaults: {a.run.name} at {a.size}x{a.size}, ONNX Runtime CPU fp32, {a.threads} threads\n\n"
            f"Budget {a.budget}. `default` is `bap export RUN --budget {a.budget}` with no flags "
            f"(round_to {defaults.round_to}, gather_threshold {defaults.gather_threshold:g}); `rR-gG` sets "
            f"`--round-to R --gather-threshold G`. All models timed interleaved in one `bap bench` run against the "
            f"unpruned backbone.\n\n" + md_table(header, rows))  # fmt: skip
    write_results(a.name, {"bench": doc, "rows": rows, "params": params,
                           "defaults": dataclasses.asdict(defaults)}, text)  # fmt: skip
    print(text)
    print(f"regenerate: {command_line()}")


if __name__ == "__main__":
    main()
