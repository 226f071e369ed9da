r"""Leave-one-domain-out: does the variance term of ``--method dgprune`` help a domain the model never saw?

The digit domains of the embedded suite share one label space (0-9): MNIST, the MNIST-M style domain and the UCI
digits. For each of them held out, the backbone is pretrained on the union of the other two, then ``bap train
--method dgprune`` fine-tunes and prunes one shared network on those two at MAC budgets 0.75 / 0.5 / 0.25 (and
1.0: fine-tuned, not pruned) with variance weight 0 (the plain Taylor criterion) and a tuned weight. The
held-out domain's test accuracy is measured on the shared network (shared head and normalisation). The
weights of --grid are tried at beta = 0.5 only; the "tuned" one is chosen WITHOUT looking at the held-out
domains (best mean validation accuracy of the training domains, averaged over the three splits) and then
trained at the other budgets. Every run lands in --work and is reused.

    python benchmarks/dg_lodo.py           # about 25 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import RESULTS, WORK, md_table, save_plot, write_results

GROUP = ("mnist", "mnist_m", "digits")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domains", default=",".join(GROUP), help="domains sharing one label space")
    p.add_argument("--budgets", default="0.75,0.5,0.25", help="must include 0.5 (where the weight is tuned)")
    p.add_argument("--grid", default="1,4", help="variance weights > 0 to try (0 is always run)")
    p.add_argument("--backbone", default="cifar_resnet14")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=32)
    p.add_argument("--pretrain-epochs", type=int, default=6)
    p.add_argument("--data-root", default=None)
    p.add_argument("--layout", default="imagefolder")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=WORK / "dg_lodo")
    p.add_argument("--name", default="dg_lodo")
    return p.parse_args()


def _train(a: argparse.Namespace, out: Path, domains: list[str], budgets: tuple[float, ...], w: float) -> None:
    from bap.trainer import TrainConfig, train

    if (out / "report.json").is_file():
        return
    print(f"training {out.name} ...", flush=True)
    train(TrainConfig(out=str(out), method="dgprune", budgets=budgets, domains=tuple(domains), backbone=a.backbone,
                      epochs=a.epochs, steps_per_epoch=a.steps_per_epoch, lr_milestones=(a.epochs,),
                      pretrain_epochs=a.pretrain_epochs, pretrain_source="union", dg_variance_weight=w, dg_head="shared",
                      data_root=a.data_root, layout=a.layout, device=a.device, resume=out.exists(), quiet=True))  # fmt: skip


def _measure(out: Path, beta: float, heldout) -> dict[str, Any]:
    from bap.trainer import load_run
    from bap.trainer.dgprune import heldout_accuracy

    run = load_run(out, beta)
    r = run.result
    return {
        "heldout": heldout_accuracy(run.model, heldout),
        "in_domain": sum(r["accuracy"].values()) / len(r["accuracy"]),
        "in_domain_val": sum(r["val_accuracy"].values()) / len(r["val_accuracy"]),
        "rel_macs": max(r["rel_macs"].values()),
        "rel_params": r["rel_params"],
    }


def _plot(rows: dict, weights: list[float], budgets: list[float], path: Path) -> Path:
    from bap.runtime.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    xs = [1.0, *budgets]
    for i, w in enumerate(weights):
        held = [sum(rows[h][w][b]["heldout"] for h in rows) / len(rows) * 100 for b in xs]
        ind = [sum(rows[h][w][b]["in_domain"] for h in rows) / len(rows) * 100 for b in xs]
        ax.plot(xs, held, "o-", color=f"C{i}", label=f"held-out, w={w:g}")
        ax.plot(xs, ind, "s--", color=f"C{i}", alpha=0.6, label=f"in-domain, w={w:g}")
    ax.set_xlabel("MAC budget (fraction of the backbone)")
    ax.set_ylabel("accuracy % (mean over the 3 splits)")
    ax.invert_xaxis()
    return save_plot(fig, path, ax)


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(2)
    from bap.data.sources import load_domains

    group = a.domains.split(",")
    budgets = [float(b) for b in a.budgets.split(",")]
    grid = [float(w) for w in a.grid.split(",")]
    if 0.5 not in budgets:
        raise SystemExit("--budgets must include 0.5: the variance weight is tuned there")
    data = load_domains(a.data_root, a.layout, group, seed=0)
    classes = {tuple(d.classes) for d in data}
    if len(classes) != 1:
        raise SystemExit(f"--domains {a.domains} do not share one label space")
    rows: dict[str, dict[float, dict[float, dict[str, Any]]]] = {h: {} for h in group}
    others = [b for b in budgets if b != 0.5]
    for h in group:  # the plain criterion at every budget, and every candidate weight at beta 0.5
        train_doms = [d for d in group if d != h]
        _train(a, a.work / f"{h}-w0", train_doms, (1.0, *budgets), 0.0)
        rows[h][0.0] = {b: _measure(a.work / f"{h}-w0", b, data.get(h)) for b in (1.0, *budgets)}
        for w in grid:
            _train(a, a.work / f"{h}-w{w:g}-b0.5", train_doms, (0.5,), w)
            rows[h][w] = {0.5: _measure(a.work / f"{h}-w{w:g}-b0.5", 0.5, data.get(h)), 1.0: rows[h][0.0][1.0]}
    # chosen on the training domains' validation accuracy only, never on the held-out domain
    sel = {w: sum(rows[h][w][0.5]["in_domain_val"] for h in group) / len(group) for w in grid}
    tuned = max(sel, key=sel.get)
    for h in group:  # the tuned weight at the other budgets (beta 1.0 does not prune: the criterion plays no part)
        out = a.work / f"{h}-w{tuned:g}"
        _train(a, out, [d for d in group if d != h], tuple(others), tuned)
        rows[h][tuned].update({b: _measure(out, b, data.get(h)) for b in others})
    weights = [0.0, tuned]

    table = []
    for h in group:
        for b in [1.0, *budgets]:
            p, t = rows[h][0.0][b], rows[h][tuned][b]
            table.append([h, f"{b:g}", f"{p['rel_macs']:.3f} / {t['rel_macs']:.3f}",
                          f"{100 * p['heldout']:.1f}", f"{100 * t['heldout']:.1f}", f"{100 * (t['heldout'] - p['heldout']):+.1f}",
                          f"{100 * p['in_domain']:.1f}", f"{100 * t['in_domain']:.1f}",
                          f"{100 * (t['in_domain'] - p['in_domain']):+.1f}"])  # fmt: skip
    summary = []
    for b in budgets:
        for w in weights + ([g for g in grid if g != tuned] if b == 0.5 else []):
            held = sum(rows[h][w][b]["heldout"] for h in group) / len(group)
            ind = sum(rows[h][w][b]["in_domain"] for h in group) / len(group)
            summary.append(
                [f"{b:g}", f"{w:g}" + (" (tuned)" if w == tuned else ""), f"{100 * held:.1f}", f"{100 * ind:.1f}"]
            )
    png = _plot(rows, weights, budgets, RESULTS / f"{a.name}.png")
    header = ["held out", "β", "rel MACs (w=0 / tuned)", "held-out w=0", f"held-out w={tuned:g}", "Δ",
              "in-domain w=0", f"in-domain w={tuned:g}", "Δ"]  # fmt: skip
    text = (
        f"### Leave-one-domain-out, `dgprune` on {', '.join(group)} ({a.backbone}, embedded suite)\n\n"
        f"Each row: trained (pretrained on the union, then fine-tuned and pruned, {a.epochs} epochs x "
        f"{a.steps_per_epoch} rounds) on the two other domains, tested on the held-out one. w = 0 is the plain "
        f"Taylor criterion; the tuned weight w = {tuned:g} was chosen from {{{', '.join(f'{w:g}' for w in grid)}}} by the "
        f"training domains' validation accuracy at β = 0.5 ({', '.join(f'w={w:g}: {100 * v:.1f}%' for w, v in sel.items())}), "
        "never by the held-out domain. β = 1.0 is fine-tuned without pruning (the criterion plays no part). "
        "Accuracy in % (test).\n\n"
        + md_table(header, table)
        + "\n\nMean over the three held-out domains:\n\n"
        + md_table(["β", "w", "held-out acc", "in-domain acc"], summary)
        + f"\n\n![held-out and in-domain accuracy vs budget]({png.name})"
    )
    doc = {"rows": {h: {f"{w:g}": {f"{b:g}": v for b, v in r.items()} for w, r in ws.items()} for h, ws in rows.items()},
           "tuned_weight": tuned, "selection": {f"{w:g}": v for w, v in sel.items()}}  # fmt: skip
    write_results(a.name, json.loads(json.dumps(doc)), text)
    print(text)


if __name__ == "__main__":
    main()
