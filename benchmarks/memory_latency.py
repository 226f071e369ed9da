"""Issue 14: memory and latency of every multi-domain graph layout against the unpruned backbone, 5 and 10 domains.

ResNet-50 at 224x224, budget 0.5, ONNX Runtime CPU fp32, fixed threads. For each run (the 5 embedded domains; 10 =
those plus ``mnist-inv, mnist_m-rot, digits-inv, faces-rot, textures-inv``, derived on the fly from the embedded
suite) the trained budget is exported once per layout of ``--layouts`` (``ExportConfig(graph=LAYOUT)``; a layout
the registry ``bap.exporter.layouts.LAYOUTS`` does not know, or whose export fails, is skipped with a printed note)
and every layout's multi-domain model is timed in ONE interleaved ``bap bench`` run with the unpruned backbone
exported alongside (``bap.runtime.bench``: chunks alternate between models, the order rotates, batch 1 and 16).
Measured per model:

* weights held after the runtime loads the model, relative to the backbone: float elements of the graph ONNX
  Runtime holds after its load-time optimisation (saved with ``optimized_model_filepath``, same session settings
  and disabled optimizers as the bench); the exporter's own count (``manifest.params.loaded``) is shown beside it.
  ``bap bench`` itself records only the floats *stored* in the file (``params``), not those held after loading;
* peak RSS of a fresh process after loading and running the model (batch 1 and 16; ``bap bench``'s probe);
* latency ratio to the backbone (ratio of medians) at batch 1 and 16; the multi-domain models rotate the domain
  of every sample per iteration, so every branch runs equally often.

Prints the acceptance lines of issue 14 as PASS/FAIL rows (5 domains: weights held <= 1.0x, peak RSS at batch 1
<= the backbone's, latency <= 0.80x at batch 16 and <= 0.85x at batch 1; 10 domains: weights held <= 1.2x, latency
<= 0.85x at batch 16), writes ``benchmarks/results/NAME.json/.md`` and a plot ``NAME.png`` (latency ratio at batch 16
against held weights ratio; backbone at (1, 1); acceptance boxes drawn).

    python benchmarks/memory_latency.py                  # trains both runs the first time (long), then times
    python benchmarks/memory_latency.py --run5 benchmarks/results/_work/memlat/run5
    python benchmarks/memory_latency.py --reuse --name memory_latency_run2      # a second timing run
    python benchmarks/memory_latency.py --smoke          # cifar_resnet14, tiny training, 64 px: checks the script
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, WORK, command_line, md_table, save_plot, write_results

EMBEDDED = ("mnist", "mnist_m", "digits", "faces", "textures")
DERIVED = ("mnist-inv", "mnist_m-rot", "digits-inv", "faces-rot", "textures-inv")
DOMAIN_SETS = {5: EMBEDDED, 10: EMBEDDED + DERIVED}
BATCHES = (1, 16)
# issue 14 acceptance, per number of domains: (label, metric key, bound); "rss_b1" is relative to the backbone's
ACCEPTANCE = {
    5: (("weights held <= 1.0x", "held", 1.0), ("peak RSS b1 <= backbone", "rss_b1", 1.0),
        ("latency <= 0.80x at b16", "lat_b16", 0.80), ("latency <= 0.85x at b1", "lat_b1", 0.85)),
    10: (("weights held <= 1.2x", "held", 1.2), ("latency <= 0.85x at b16", "lat_b16", 0.85)),
}  # fmt: skip
SMOKE = dict(backbone="cifar_resnet14", size=64, duration_s=0.5, warmup_s=0.2, train_epochs=1, train_steps=2,
             pretrain_epochs=1, bn_recal_images=32, validation_images=1, work=WORK / "memory_latency_smoke",
             name="memory_latency_smoke")  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default="shared,routed,tables,shared@1.5",
                   help="graph layouts (--graph) to export and time; LAYOUT@X exports with --max-weights X")  # fmt: skip
    p.add_argument("--domains-sets", default="5,10", help="which runs: 5 (embedded suite) and/or 10 (plus derived)")
    p.add_argument("--backbone", default=None, help="default resnet50 (cifar_resnet14 with --smoke)")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--size", type=int, default=None, help="benchmark input size (default 224; 64 with --smoke)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-s", type=float, default=None, help="default 2 (0.2 with --smoke)")
    p.add_argument("--duration-s", type=float, default=None, help="default 10 (0.5 with --smoke)")
    p.add_argument("--max-weights", type=float, default=None, help="ExportConfig.max_weights (default: its own)")
    p.add_argument("--run5", type=Path, default=None, help="use this trained 5-domain run (default: WORK/run5)")
    p.add_argument("--run10", type=Path, default=None, help="use this trained 10-domain run (default: WORK/run10)")
    p.add_argument("--train-epochs", type=int, default=None, help="default 4 (as benchmarks/export_latency.py)")
    p.add_argument("--train-steps", type=int, default=None, help="rounds per epoch, default 24")
    p.add_argument("--work", type=Path, default=None, help="default benchmarks/results/_work/memory_latency")
    p.add_argument("--reuse", action="store_true", help="never train (runs must exist); reuse exports in --work")
    p.add_argument("--name", default=None, help="result file stem (default memory_latency; a second run: _run2)")
    p.add_argument("--smoke", action="store_true", help="cifar_resnet14, tiny training, 64 px, 0.5 s per case")
    a = p.parse_args()
    full = dict(backbone="resnet50", size=224, duration_s=10.0, warmup_s=2.0, train_epochs=4, train_steps=24,
                pretrain_epochs=4, bn_recal_images=256, validation_images=4, work=WORK / "memory_latency",
                name="memory_latency")  # fmt: skip
    for k, v in (SMOKE if a.smoke else full).items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    a.layouts = [x.strip() for x in a.layouts.split(",") if x.strip()]
    a.sets = [int(x) for x in a.domains_sets.split(",")]
    if not a.layouts or any(n not in DOMAIN_SETS for n in a.sets):
        p.error(f"--layouts must name at least one layout; --domains-sets takes {sorted(DOMAIN_SETS)}")
    return a


# ------------------------------------------------------------------------------------------------ train / export
def ensure_run(a: argparse.Namespace, n: int) -> tuple[Path, float]:
    """The trained run of ``n`` domains (trained like benchmarks/export_latency.py unless it exists) and train s."""
    from bap.trainer import TrainConfig, train

    run_dir = getattr(a, f"run{n}") or a.work / f"run{n}"
    if (run_dir / "report.json").is_file():
        print(f"{n} domains: reusing the trained run {run_dir}")
        return run_dir, 0.0
    if a.reuse:
        raise SystemExit(f"--reuse: no trained run at {run_dir} (drop --reuse to train it, or pass --run{n})")
    t0 = time.time()
    print(f"{n} domains: training {a.backbone} into {run_dir} ...", flush=True)
    # the TrainConfig of benchmarks/export_latency.py (ResNet-50 at 32 px: longer pretraining, lambda-scaled sharing)
    train(TrainConfig(out=str(run_dir), backbone=a.backbone, budgets=(a.budget,), epochs=a.train_epochs,
                      steps_per_epoch=a.train_steps, batch_size=16, lr_milestones=(a.train_epochs,),
                      pretrain_epochs=a.pretrain_epochs, lambda_lr=0.5, lambda_ps=0.5, ps_scale="lambda",
                      bn_recal_images=a.bn_recal_images, domains=() if n == 5 else DOMAIN_SETS[n],
                      resume=run_dir.exists(), quiet=True))  # fmt: skip
    return run_dir, time.time() - t0


def export_layouts(a: argparse.Namespace, n: int, run_dir: Path) -> tuple[dict[str, Path], dict[str, str], dict]:
    """Export the budget once per known layout: ``({layout: export dir}, {skipped layout: why}, {layout: s})``."""
    from bap.exporter import ExportConfig, export, read_manifest
    from bap.exporter.layouts import LAYOUTS

    outs: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    extra = {} if a.max_weights is None else {"max_weights": a.max_weights}
    for layout in a.layouts:  # LAYOUT or LAYOUT@MAX_WEIGHTS (a frontier point of --max-weights)
        graph, _, limit = layout.partition("@")
        if graph not in LAYOUTS:
            skipped[layout] = f"not a registered graph layout (known: {', '.join(LAYOUTS.names())})"
            print(f"note: skipping layout {layout!r}: {skipped[layout]}")
            continue
        this = {**extra, "max_weights": float(limit)} if limit else extra
        out = a.work / f"export{n}-{layout}"
        if a.reuse and (out / "manifest.json").is_file():
            outs[layout] = out
            print(f"{n} domains, {layout}: reusing the export {out} ({read_manifest(out).graph} graph)")
            continue
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        try:
            res = export(ExportConfig(run_dir=str(run_dir), budget=a.budget, out=str(out), graph=graph,
                                      validation_images=a.validation_images, **this))  # fmt: skip
        except Exception as e:  # a layout being written may fail: the others are still measured
            skipped[layout] = f"export failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            print(f"note: skipping layout {layout!r}: {skipped[layout]}")
            continue
        m = res.manifest
        seconds[layout] = time.time() - t0
        outs[layout] = out
        stages = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
        print(f"{n} domains, {layout}: exported in {seconds[layout]:.1f} s ({stages}; {m.graph} graph) -> {out}")
    return outs, skipped, seconds


# ------------------------------------------------------------------------------------------------ held weights
def held_floats(onnx_file: Path, settings: Any, threads: int) -> int | None:
    """Float elements of the graph ONNX Runtime holds after loading ``onnx_file`` (its optimised graph, saved).

    The session gets the bench's options (threads, the manifest's session config and disabled optimizers). Counted:
    float/float16/bfloat16 initializers and Constant tensors after ORT's load-time optimisation (constant folding,
    BN fusion, NCHWc weight reordering). Not counted: kernel-private prepacked copies (peak RSS shows those).
    """
    import onnx
    import onnxruntime as ort

    from bap.runtime.backends import ort_session_options

    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

    def numel(t: onnx.TensorProto) -> int:
        k = 1
        for d in t.dims:
            k *= int(d)
        return k if t.data_type in floats else 0

    with tempfile.TemporaryDirectory() as tmp:
        so = ort_session_options(threads, settings)
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        disabled = list(settings.disabled_optimizers) if settings else []
        try:
            sess = ort.InferenceSession(str(onnx_file), so, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=disabled)  # fmt: skip
            del sess
            model = onnx.load(so.optimized_model_filepath, load_external_data=False)
        except Exception as e:  # the latency / RSS numbers still stand; the table says n/a
            print(f"note: could not read ONNX Runtime's optimised graph of {onnx_file}: {e}")
            return None
    total = 0
    graphs = [model.graph]
    while graphs:  # subgraphs of If/Loop nodes hold weights too
        g = graphs.pop()
        total += sum(numel(t) for t in g.initializer)
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    total += numel(attr.t)
                graphs += [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
    return total


# ------------------------------------------------------------------------------------------------ one run
def measure(a: argparse.Namespace, n: int, outs: dict[str, Path]) -> dict[str, Any]:
    """Bench every layout's multi-domain model and the backbone interleaved; per-model facts and ratios."""
    from bap.exporter import read_manifest
    from bap.runtime.bench import BenchConfig, bench, failures

    layouts = list(outs)
    main_dir, others = outs[layouts[0]], [outs[k] for k in layouts[1:]]
    doc = bench(BenchConfig(export=str(main_dir), batch_sizes=BATCHES, warmup_s=a.warmup_s, duration_s=a.duration_s,
                            iterations=10, threads=a.threads, input_size=a.size, memory=True, specialised=False,
                            compare=tuple(str(o) for o in others)))  # fmt: skip
    for r in failures(doc):
        print(f"note: {n} domains, {r['role']} at batch {r['batch']} failed: {r['error']}")
    # the bench labels a compared export by its graph, by its directory when that graph was already taken
    compare_label: dict[str, str] = {}
    for k in layouts[1:]:
        label = read_manifest(outs[k]).graph or outs[k].resolve().name
        if label in compare_label:
            label = f"{outs[k].resolve().parent.name}/{outs[k].resolve().name}"
        compare_label[label] = k

    def layout_of(role: str) -> str:
        if role in ("multi-domain", "backbone"):
            return layouts[0] if role == "multi-domain" else "backbone"
        return compare_label[role.split(":", 1)[1]]

    res = {(layout_of(r["role"]), r["batch"]): r for r in doc["results"]}
    rat = {(layout_of(q["role"]), q["batch"]): q for q in doc["ratios"]}
    m_main = read_manifest(main_dir)
    settings = {k: read_manifest(p) for k, p in outs.items()}
    backbone_onnx = main_dir / m_main.backbone_file
    held_bb = held_floats(backbone_onnx, m_main.runtime.onnxruntime, a.threads)
    models: dict[str, dict[str, Any]] = {}
    for name in ["backbone", *layouts]:
        row: dict[str, Any] = {"layout": name}
        if name == "backbone":
            row.update(held=1.0 if held_bb else None, held_floats=held_bb, held_manifest=1.0, stored=1.0,
                       file=str(backbone_onnx), rel_macs=1.0)  # fmt: skip
        else:
            m = settings[name]
            onnx_file = outs[name] / m.model
            h = held_floats(onnx_file, m.runtime.onnxruntime, a.threads)
            row.update(held=h / held_bb if h and held_bb else None, held_floats=h, graph=m.graph,
                       held_manifest=(m.params.loaded or m.params.model) / m.params.backbone,
                       stored=m.params.model / m.params.backbone, file=str(onnx_file),
                       rel_macs=m.executed_macs() / m.macs.backbone,
                       disabled_optimizers=list(m.runtime.onnxruntime.disabled_optimizers))  # fmt: skip
        for b in BATCHES:
            r = res.get((name, b), {})
            row[f"rss_mb_b{b}"] = r.get("peak_rss_mb")
            row[f"rss_delta_mb_b{b}"] = r.get("rss_delta_mb")
            row[f"median_ms_b{b}"] = r.get("latency_ms", {}).get("median")
            row[f"lat_b{b}"] = (
                1.0 if name == "backbone" and "latency_ms" in r else rat.get((name, b), {}).get("latency")
            )
            if "error" in r or "memory_error" in r:
                row[f"error_b{b}"] = r.get("error") or r.get("memory_error")
        models[name] = row
    bb_rss = models["backbone"]["rss_mb_b1"]
    for row in models.values():
        row["rss_b1"] = row["rss_mb_b1"] / bb_rss if row["rss_mb_b1"] and bb_rss else None
    return {"domains": list(m_main.domain_names), "models": models, "bench": doc}


def acceptance(n: int, models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 14's lines for ``n`` domains, per layout: value, bound, PASS/FAIL (a missing number fails)."""
    out = []
    for name, row in models.items():
        if name == "backbone":
            continue
        for label, key, bound in ACCEPTANCE[n]:
            v = row.get(key)
            held_from = " (manifest)" if key == "held" and v is None else ""
            if key == "held" and v is None:  # ORT's optimised graph could not be read: the exporter's count
                v = row.get("held_manifest")
            out.append({"domains": n, "layout": name, "check": label + held_from, "value": v, "bound": bound,
                        "pass": v is not None and v <= bound + 1e-12})  # fmt: skip
    return out


def _f(v: Any, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def run_table(n: int, r: dict[str, Any]) -> str:
    header = ["model", "weights held / backbone (ORT)", "held / backbone (exporter)", "stored / backbone",
              "peak RSS b1 MB", "peak RSS b16 MB", "latency ratio b1", "latency ratio b16", "median ms b1",
              "median ms b16", "rel MACs"]  # fmt: skip
    rows = []
    for name, m in r["models"].items():
        rows.append([name if name == "backbone" else f"{name} ({m.get('graph', name)})", _f(m["held"]),
                     _f(m["held_manifest"]), _f(m["stored"]), _f(m["rss_mb_b1"], 1), _f(m["rss_mb_b16"], 1),
                     _f(m["lat_b1"]), _f(m["lat_b16"]), _f(m["median_ms_b1"], 2), _f(m["median_ms_b16"], 2),
                     _f(m["rel_macs"])])  # fmt: skip
    return md_table(header, rows)


def plot(runs: dict[int, dict[str, Any]], path: Path, title: str) -> Path:
    """Latency ratio at batch 16 against held weights ratio; backbone at (1, 1); the acceptance boxes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    ax.add_patch(Rectangle((0, 0), 1.0, 0.80, facecolor="tab:green", alpha=0.12, edgecolor="tab:green",
                           label="issue 14, 5 domains: held <= 1.0x, latency b16 <= 0.80x"))  # fmt: skip
    if 10 in runs:
        ax.add_patch(Rectangle((0, 0), 1.2, 0.85, fill=False, edgecolor="tab:olive", linestyle="--",
                               label="10 domains: held <= 1.2x, latency b16 <= 0.85x"))  # fmt: skip
    colours = dict(zip(["routed", "tables", "shared"], ["tab:blue", "tab:orange", "tab:red"], strict=True))
    xs, ys = [1.0], [1.0]
    ax.scatter([1.0], [1.0], marker="*", s=160, color="black", label="backbone (1, 1)", zorder=3)
    for n, r in runs.items():
        for name, m in r["models"].items():
            x, y = m["held"] if m["held"] is not None else m["held_manifest"], m["lat_b16"]
            if name == "backbone" or x is None or y is None:
                continue
            xs.append(x)
            ys.append(y)
            ax.scatter([x], [y], marker="o" if n == 5 else "s", s=60, color=colours.get(name, "tab:gray"),
                       label=f"{name}, {n} domains", zorder=3)  # fmt: skip
            ax.annotate(f"{name}/{n}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlim(0, max(1.3, max(xs) * 1.1))
    ax.set_ylim(0, max(1.2, max(ys) * 1.1))
    ax.set_xlabel("weights held after load / backbone")
    ax.set_ylabel("latency / backbone at batch 16")
    ax.set_title(title, fontsize=9)
    return save_plot(fig, path, ax)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    from bap.exporter import ExportConfig

    if a.max_weights is not None and "max_weights" not in {f.name for f in dataclasses.fields(ExportConfig)}:
        raise SystemExit("--max-weights: this ExportConfig has no max_weights field")
    a.work.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, Any]] = {}
    for n in a.sets:
        run_dir, train_s = ensure_run(a, n)
        outs, skipped, export_s = export_layouts(a, n, run_dir)
        if not outs:
            print(f"note: {n} domains: no layout could be exported; nothing to time")
            runs[n] = {"run": str(run_dir), "skipped": skipped, "models": {}, "train_seconds": train_s}
            continue
        print(f"{n} domains: timing {', '.join(outs)} and the backbone interleaved ...", flush=True)
        r = measure(a, n, outs)
        runs[n] = {"run": str(run_dir), "train_seconds": train_s, "export_seconds": export_s, "skipped": skipped, **r}
        runs[n]["acceptance"] = acceptance(n, r["models"])
    versions = next((r["bench"]["device"]["versions"] for r in runs.values() if "bench" in r), {})
    smoke = " (SMOKE: tiny training, not the issue 14 setting)" if a.smoke else ""
    title = f"{a.backbone} at {a.size} px, budget {a.budget}, ORT CPU fp32, {a.threads} threads{smoke}"
    parts = [f"### Memory and latency per graph layout: {title}\n\n"
             f"Every layout's multi-domain model and the unpruned backbone timed interleaved in one `bap bench` run "
             f"per domain set (median latency ratio to the backbone, {a.duration_s:g} s per model and batch). Weights "
             f"held (ORT) = floats in the graph ONNX Runtime holds after its load-time optimisation, relative to the "
             f"backbone's; the exporter's count (`manifest.params.loaded`) and the floats stored in the file are "
             f"beside it. Peak RSS: a fresh process that loads and runs the model (`bap bench` probe).\n"]  # fmt: skip
    checks = []
    for n, r in runs.items():
        parts.append(f"#### {n} domains ({', '.join(r.get('domains', DOMAIN_SETS[n]))})\n\nrun `{r['run']}`\n")
        if r["models"]:
            parts.append(run_table(n, r) + "\n")
        for layout, why in r["skipped"].items():
            parts.append(f"- skipped `{layout}`: {why}")
        checks += r.get("acceptance", [])
    acc_rows = [[c["domains"], c["layout"], c["check"], _f(c["value"]), c["bound"], "PASS" if c["pass"] else "FAIL"]
                for c in checks]  # fmt: skip
    parts.append("\n#### Issue 14 acceptance\n\n" + md_table(["domains", "layout", "check", "value", "bound", "result"],
                                                              acc_rows))  # fmt: skip
    met = []
    for n in runs:
        mine = [c for c in checks if c["domains"] == n]
        names = dict.fromkeys(c["layout"] for c in mine)
        ok = [x for x in names if all(c["pass"] for c in mine if c["layout"] == x)]
        met.append(f"{n} domains: {', '.join(ok) or 'none'}")
    parts.append("\nLayouts meeting every line: " + "; ".join(met))
    parts.append("\nVersions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    text = "\n".join(parts)
    out_dir = a.work if a.smoke else RESULTS  # smoke results stay out of the committed results
    doc = {"smoke": a.smoke, "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
           "acceptance_bounds": {n: [list(x) for x in v] for n, v in ACCEPTANCE.items()}, "versions": versions,
           "runs": {str(n): r for n, r in runs.items()}, "acceptance": checks}  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_title = f"{a.backbone} at {a.size} px, budget {a.budget}, ORT CPU fp32, {a.threads} threads" + (
        "\nSMOKE: tiny training, not the issue 14 setting" if a.smoke else ""
    )
    png = plot({n: r for n, r in runs.items() if r["models"]}, out_dir / f"{a.name}.png", plot_title)
    j, m = write_results(a.name, {**doc, "plot": str(png)}, text + f"\n\n![plot]({png.name})", out=out_dir)
    print("\n" + text)
    print("\nissue 14 acceptance:")
    for c in checks:
        print(f"  {'PASS' if c['pass'] else 'FAIL'}  {c['domains']:>2} domains  {c['layout']:<8} {c['check']:<28} "
              f"{_f(c['value'])} (bound {c['bound']})")  # fmt: skip
    print(f"wrote {j}, {m}, {png}\nregenerate: {command_line()}")


if __name__ == "__main__":
    main()
