r"""Sharper sharing (issue 16): the sharing losses, the sharing-aware projection and domain sampling, side by side.

Stage 1 (selection, validation only): every variant of --variants is trained at β = --select-budget on the
--select-seeds; the new default is chosen on the validation split: among the variants whose mean validation
accuracy is at most --acc-tolerance points below today's (intersection loss, lowest-t projection, uniform
sampling), the one with the lowest Params (compact model / backbone), ties broken by validation accuracy. Test
numbers are shown in the selection table but not used.

Stage 2 (acceptance): the chosen variant (or --default) and today's are trained on --seeds at every --budgets;
the table lists per seed and budget the prunable fraction, Params, FLOP, test accuracy with its bootstrap 95%
interval, and S; the checks of issue 16 are evaluated on it. Every run lands in --work and is reused.

    python benchmarks/sharing_table.py                          # embedded suite, cifar_resnet14, CPU settings
    python benchmarks/sharing_table.py --backbone test_cnn --name sharing_screen --work /tmp/screen   # quick screen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import WORK, md_table, write_results

TODAY = "today"
# variant -> the TrainConfig fields it sets (everything else at the defaults of bap train)
VARIANTS: dict[str, dict[str, Any]] = {
    TODAY: {"sharing_loss": "intersection", "projection": "lowest", "domain_sampling": "uniform", "ps_weight": "fixed"},
    "union0": {"sharing_loss": "union", "projection": "sharing", "union_softness": 0.0},  # the exact union
    "jaccard0": {"sharing_loss": "jaccard", "projection": "sharing", "union_softness": 0.0},
    "union": {"sharing_loss": "union", "projection": "sharing"},  # relaxed union, q = 0.5
    "union75": {"sharing_loss": "union", "projection": "sharing", "union_softness": 0.75},
    "jaccard": {"sharing_loss": "jaccard", "projection": "sharing"},
    "union+lps1.5": {"sharing_loss": "union", "projection": "sharing", "lambda_ps": 1.5},
    "union+lps2": {"sharing_loss": "union", "projection": "sharing", "lambda_ps": 2.0},
    "union+learned": {"sharing_loss": "union", "projection": "sharing", "ps_weight": "learned"},
    "union+ramp2": {"sharing_loss": "union", "projection": "sharing", "ps_ramp_epochs": 2},
    "union+sqrt": {"sharing_loss": "union", "projection": "sharing", "domain_sampling": "sqrt"},
    "union+proportional": {"sharing_loss": "union", "projection": "sharing", "domain_sampling": "proportional"},
}
# variants that differ from another only in the projection are not retrained: the source run's last checkpoint is
# finalised again with the other projection (training does not depend on it, so the result is the same)
DERIVED: dict[str, tuple[str, str]] = {
    "intersection+sharing": (TODAY, "sharing"),
    "intersection+swap": (TODAY, "swap"),
    **{f"{v}+swap": (v, "swap") for v in list(VARIANTS) if v != TODAY},
}
for _name, (_src, _proj) in DERIVED.items():
    VARIANTS[_name] = {**VARIANTS[_src], "projection": _proj}
SCREEN = ("today,intersection+sharing,intersection+swap,union0,union0+swap,jaccard0,jaccard0+swap,union,union+swap,"
          "union75,union75+swap,jaccard,jaccard+swap,union+lps2,union+lps2+swap")  # fmt: skip
BASE_FIELDS = {"sharing_loss": "intersection", "projection": "lowest", "domain_sampling": "uniform",
               "ps_weight": "fixed", "ps_ramp_epochs": 0, "lambda_ps": 1.0, "union_softness": 0.5}  # fmt: skip


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=SCREEN, help="variants tried in the selection stage")
    p.add_argument("--select-budget", type=float, default=0.5)
    p.add_argument("--select-seeds", default="0")
    p.add_argument("--acc-tolerance", type=float, default=1.0, help="points of validation accuracy a variant may lose")
    p.add_argument("--default", default=None, help="skip the choice: the variant to accept (e.g. jaccard)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="0.5,0.25")
    p.add_argument("--no-acceptance", action="store_true", help="stop after the selection stage")
    p.add_argument("--backbone", default="cifar_resnet14")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", type=Path, default=WORK / "sharing")
    p.add_argument("--name", default="sharing_table")
    p.add_argument("--resume-run", type=Path, default=None, help="only continue this run directory (final kept)")
    return p.parse_args()


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def keep_final_checkpoints() -> None:
    """Keep each budget's last checkpoint as ``final-<budget>.pt`` (the loop deletes ``checkpoint.pt``)."""
    import shutil

    import torch

    from bap.trainer.artifacts import RunDir

    if getattr(RunDir, "_keeps_final", False):
        return
    clear = RunDir.clear_checkpoint

    def keep(self: RunDir) -> None:
        if self.checkpoint_path.is_file():
            key = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)["budget"]
            shutil.copyfile(self.checkpoint_path, self.path / f"final-{key}.pt")
        clear(self)

    RunDir.clear_checkpoint = keep  # type: ignore[method-assign]
    RunDir._keeps_final = True  # type: ignore[attr-defined]


def _tags(variant: str, beta: float, seed: int) -> list[str]:
    tags = [f"{variant}-s{seed}", f"{variant}-b{beta:g}-s{seed}"]
    return [*tags, f"intersection-lowest-uniform-s{seed}"] if variant == TODAY else tags


def _find(a: argparse.Namespace, variant: str, beta: float, seed: int) -> tuple[Path, dict[str, Any]] | None:
    for tag in _tags(variant, beta, seed):
        rep = a.work / tag / "report.json"
        if rep.is_file():
            for r in json.loads(rep.read_text())["runs"]:
                if abs(r["budget"] - beta) < 1e-9:
                    return a.work / tag, r
    return None


def _derive(a: argparse.Namespace, variant: str, beta: float, seed: int) -> dict[str, Any]:
    """Finalise the source variant's last checkpoint again with another projection (no training)."""
    import shutil

    from bap.trainer import TrainConfig, train
    from bap.trainer.config import budget_key

    src_variant, projection = DERIVED[variant]
    result(a, src_variant, beta, seed)  # the source run first
    src, _ = _find(a, src_variant, beta, seed)  # type: ignore[misc]
    final = src / f"final-{budget_key(beta)}.pt"
    if not final.is_file():
        raise SystemExit(f"{final} is missing: train {src.name} with this script (it keeps the last checkpoint)")
    out = a.work / f"{variant}-b{beta:g}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("backbone.safetensors", "metrics.jsonl"):
        shutil.copyfile(src / name, out / name)
    shutil.copyfile(final, out / "checkpoint.pt")
    doc = json.loads((src / "config.json").read_text())
    doc["config"].update(out=str(out), budgets=[beta], projection=projection)
    (out / "config.json").write_text(json.dumps(doc, indent=1))
    print(f"finalising {out.name} from {src.name} ...", flush=True)
    return train(TrainConfig(out=str(out), resume=True, quiet=True))["runs"][0]


def result(a: argparse.Namespace, variant: str, beta: float, seed: int) -> dict[str, Any]:
    """The budget result of ``variant`` at ``beta`` and ``seed``: from a finished run directory, else trained now.

    A run directory ``{variant}-s{seed}`` (several budgets) or ``{variant}-b{beta}-s{seed}`` (one) is reused.
    """
    from bap.trainer import TrainConfig, train

    found = _find(a, variant, beta, seed)
    if found is not None:
        return found[1]
    keep_final_checkpoints()
    if variant in DERIVED:
        return _derive(a, variant, beta, seed)
    out = a.work / f"{variant}-b{beta:g}-s{seed}"
    print(f"training {out.name} ...", flush=True)
    fields = {**BASE_FIELDS, **VARIANTS[variant]}
    cfg = TrainConfig(out=str(out), budgets=(beta,), seed=seed, backbone=a.backbone, device=a.device,
                      resume=out.exists(), quiet=True, **fields)  # fmt: skip
    return train(cfg)["runs"][0]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _val(r: dict[str, Any]) -> float:
    return _mean(list(r["val_accuracy"].values()))


def select(a: argparse.Namespace) -> tuple[str, list[dict[str, Any]]]:
    """Stage 1: every variant at the selection budget; the choice made on validation accuracy and Params."""
    seeds, beta = _ints(a.select_seeds), a.select_budget
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    if TODAY not in variants:
        variants.insert(0, TODAY)
    rows = []
    for v in variants:
        rs = [result(a, v, beta, s) for s in seeds]
        rows.append({"variant": v, "val_acc": _mean([_val(r) for r in rs]),
                     "params": _mean([r["rel_params"] for r in rs]),
                     "prunable": _mean([1 - r["or_fraction"] for r in rs]),
                     "and": _mean([r["and_fraction"] for r in rs]),
                     "flop": _mean([r["rel_macs_mean"] for r in rs]),
                     "test_acc": _mean([r["mean_accuracy"] for r in rs])})  # fmt: skip
    today = next(r for r in rows if r["variant"] == TODAY)
    ok = [r for r in rows if r["val_acc"] >= today["val_acc"] - a.acc_tolerance / 100]
    best = min(ok, key=lambda r: (round(r["params"], 3), -r["val_acc"]))
    return (a.default or best["variant"]), rows


def _fmt_iv(iv: list[float] | None, scale: float = 100.0, digits: int = 1) -> str:
    return "-" if not iv else f"[{scale * iv[0]:.{digits}f}, {scale * iv[1]:.{digits}f}]"


def accept(a: argparse.Namespace, default: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Stage 2: the default and today's on every seed and budget; the checks of issue 16."""
    recs = []
    for beta in _floats(a.budgets):
        for v in (TODAY, default):
            for s in _ints(a.seeds):
                r = result(a, v, beta, s)
                iv = r.get("intervals", {})
                recs.append({"variant": v, "budget": beta, "seed": s, "prunable": 1 - r["or_fraction"],
                             "params": r["rel_params"], "flop": r["rel_macs_mean"], "and": r["and_fraction"],
                             "max_usage": max(r["active_fraction"].values()), "acc": r["mean_accuracy"],
                             "acc_iv": iv.get("mean_accuracy"), "val_acc": _val(r), "s": r.get("s_score"),
                             "s_iv": iv.get("s_score"), "accuracy": r["accuracy"]})  # fmt: skip
    half = [x for x in recs if x["budget"] == 0.5]
    new = [x for x in half if x["variant"] == default]
    old = [x for x in half if x["variant"] == TODAY]
    quarter = [x for x in recs if x["budget"] == 0.25 and x["variant"] == default]
    checks = {
        "prunable_ge_0.35_every_seed": bool(new) and all(x["prunable"] >= 0.35 for x in new),
        "params_le_0.50_every_seed": bool(new) and all(x["params"] <= 0.50 for x in new),
        "mean_acc_within_1pt_of_today": bool(new and old)
        and _mean([x["acc"] for x in new]) >= _mean([x["acc"] for x in old]) - 0.01,
        "params_le_0.33_at_0.25": bool(quarter) and all(x["params"] <= 0.33 for x in quarter),
        "budgets_hold": all(x["max_usage"] <= x["budget"] + 0.01 for x in recs),
    }
    return recs, checks


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(2)
    if a.resume_run is not None:
        from bap.trainer import TrainConfig, train

        keep_final_checkpoints()
        train(TrainConfig(out=str(a.resume_run), resume=True, quiet=True))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    default, sel = select(a)
    sel_rows = [[r["variant"], f"{100 * r['val_acc']:.1f}", f"{r['params']:.3f}", f"{r['prunable']:.3f}",
                 f"{r['and']:.3f}", f"{r['flop']:.3f}", f"{100 * r['test_acc']:.1f}"] for r in sel]  # fmt: skip
    text = (
        f"### Sharing variants on the embedded suite ({a.backbone}), β = {a.select_budget:g}, "
        f"seeds {a.select_seeds}: selection on validation\n\n"
        + md_table(["variant", "val mean acc", "Params", "prunable", "AND", "FLOP", "test mean acc"], sel_rows)
        + f"\n\nChosen (lowest Params among variants within {a.acc_tolerance:g} points of today's validation "
        f"accuracy; test accuracy not used): **{default}** = `{VARIANTS[default]}`\n"
    )
    doc: dict[str, Any] = {"selection": sel, "default": default, "variants": VARIANTS}
    if not a.no_acceptance:
        recs, checks = accept(a, default)
        rows = [[x["variant"], f"{x['budget']:g}", x["seed"], f"{x['prunable']:.3f}", f"{x['params']:.3f}",
                 f"{x['flop']:.3f}", f"{x['and']:.3f}", f"{x['max_usage']:.3f}", f"{100 * x['val_acc']:.1f}",
                 f"{100 * x['acc']:.1f}", _fmt_iv(x["acc_iv"]), "-" if x["s"] is None else f"{x['s']:.0f}",
                 _fmt_iv(x["s_iv"], 1.0, 0)] for x in recs]  # fmt: skip
        summary = []
        for beta in _floats(a.budgets):
            for v in (TODAY, default):
                xs = [x for x in recs if x["variant"] == v and x["budget"] == beta]
                if xs:
                    summary.append([v, f"{beta:g}", f"{_mean([x['prunable'] for x in xs]):.3f}",
                                    f"{_mean([x['params'] for x in xs]):.3f}", f"{100 * _mean([x['val_acc'] for x in xs]):.1f}",
                                    f"{100 * _mean([x['acc'] for x in xs]):.1f}"])  # fmt: skip
        text += (
            f"\n### Acceptance (issue 16): {default} against today's, seeds {a.seeds}\n\n"
            + md_table(
                [
                    "variant",
                    "β",
                    "seed",
                    "prunable",
                    "Params",
                    "FLOP",
                    "AND",
                    "max usage",
                    "val acc",
                    "test acc",
                    "95% CI",
                    "S",
                    "S 95% CI",
                ],
                rows,
            )
            + "\n\nMeans over the seeds:\n\n"
            + md_table(["variant", "β", "prunable", "Params", "val acc", "test acc"], summary)
            + "\n\nChecks: "
            + ", ".join(f"{k}: {v}" for k, v in checks.items())
            + "\n"
        )
        doc.update({"acceptance": recs, "checks": checks})
    write_results(a.name, doc, text)
    print(text)


if __name__ == "__main__":
    main()
