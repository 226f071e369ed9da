"""bap versus Torch-Pruning (pinned torch-pruning==1.6.1): serve every domain of the embedded suite.

Torch-Pruning prunes the same pretrained backbone once per domain (L2-magnitude filter importance, DepGraph
coupling) to the MACs bap gives that domain at beta = 0.5, then trains it on that domain with the same number of
steps, batch size and learning rates as bap. Two freedom settings are reported:

* ``tp-bn``: only BN and the head train after pruning (the freedom bap has: its conv weights are frozen);
* ``tp-full``: every weight trains after pruning (more freedom than bap: favours Torch-Pruning).

Side by side: per-domain accuracy, the parameters and ONNX bytes needed to serve all domains (D pruned models vs
one bap model), and ONNX Runtime CPU latency per image at batch 1. bap's numbers come from the paper-table run
(reused from --work when present).

    python benchmarks/peer_torch_pruning.py          # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from _common import WORK, command_line, md_table, write_results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="cifar_resnet14")
    p.add_argument("--budget", type=float, default=0.5)
    p.add_argument("--bap-run", type=Path, default=WORK / "paper" / "bap-s0", help="bap run with this budget")
    p.add_argument("--work", type=Path, default=WORK / "peer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="tp-bn,tp-full")
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--name", default="peer_torch_pruning")
    # the comparison is about what each tool must store to serve the domains; both sections of RESULTS.md were
    # measured with round-to 1 (bap export's default then), and rounding would pad channels for speed
    p.add_argument("--round-to", type=int, default=1, help="bap export --round-to (1: store only kept channels)")
    return p.parse_args()


class Net:
    """Pretrained backbone + head with its own normalisation, as one nn.Module (so Torch-Pruning sees it all)."""

    @staticmethod
    def build(backbone, num_classes: int, mean, std):
        """The single-domain network for one domain."""
        import torch
        from torch import nn

        class _Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone
                self.head = nn.Linear(backbone.num_features, num_classes)
                self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
                self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

            def forward(self, x):
                return self.head(torch.flatten(self.backbone((x - self.mean) / self.std), 1))

        return _Net()


def prune_to_macs(net, target_macs: int, size: int):
    """Prune ``net.backbone`` with L2 magnitude importance until its MACs <= target (binary search on the ratio)."""
    import copy

    import torch
    import torch_pruning as tp

    x = torch.rand(1, 3, size, size)
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        cand = copy.deepcopy(net)
        pruner = tp.pruner.MagnitudePruner(
            cand, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=mid, ignored_layers=[cand.head],
            global_pruning=False,
        )  # fmt: skip
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(cand.backbone, x)
        if macs <= target_macs:
            best, hi = (cand, macs, mid), mid
        else:
            lo = mid
    if best is None:
        raise RuntimeError("could not reach the target MACs")
    return best


def conv_macs(module, size: int) -> int:
    import torch

    from bap.core.compact import count_conv_macs

    return count_conv_macs(module, torch.zeros(1, 3, size, size))


def train_domain(net, dom, steps: int, batch: int, cfg, freedom: str, seed: int) -> float:
    """Train with bap's schedule (same steps, batch, LRs, milestone); returns test accuracy."""
    import torch
    import torch.nn.functional as F

    from bap.core.seeding import generator
    from bap.data.transforms import augment
    from bap.trainer.finalize import evaluate
    from bap.trainer.sampling import epoch_indices

    for p in net.parameters():
        p.requires_grad_(freedom == "tp-full")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.requires_grad_(True)
    net.head.requires_grad_(True)
    head_lr = cfg.head_lr(net.head.in_features)
    groups = [{"params": list(net.head.parameters()), "lr": head_lr, "weight_decay": cfg.weight_decay}]
    bn = [p for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()]
    groups.append({"params": bn, "lr": cfg.lr_bn, "weight_decay": 0.0})
    if freedom == "tp-full":
        conv = [p for n, p in net.backbone.named_parameters() if not any(p is q for q in bn)]
        groups.append({"params": conv, "lr": cfg.lr_finetune, "weight_decay": cfg.weight_decay})
    opt = torch.optim.SGD(groups, momentum=0.9)
    base = [g["lr"] for g in opt.param_groups]
    milestone = cfg.lr_milestones[0] * cfg.steps_per_epoch if cfg.lr_milestones else steps
    idx = epoch_indices(len(dom.train), steps * batch, "tp", seed, dom.name)
    net.train()
    for k in range(steps):
        for g, lr in zip(opt.param_groups, base, strict=True):
            g["lr"] = lr * (0.1 if k >= milestone else 1.0)
        x, y = dom.train.get_batch(idx[k * batch : (k + 1) * batch])
        x = augment(x, dom.preprocess, generator("tp-aug", seed, dom.name, k))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    class _Wrap(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.n = n

        def forward(self, x, d):
            return self.n(x)

    return evaluate(_Wrap(net), dom, 0)


def onnx_bytes_and_latency(module, path: Path, size: int, runs: int, threads: int, domain: int | None = None):
    import numpy as np
    import torch

    from bap.exporter.onnx_io import export_module
    from bap.exporter.validate import ort_session

    if domain is None:
        m = export_module(
            module, (torch.rand(1, 3, size, size),), ["image"], ["logits"], {"image": {0: "b"}, "logits": {0: "b"}}, 17
        )
        path.write_bytes(m.SerializeToString())
    sess = ort_session(path, threads=threads)
    feeds = {"image": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
    if domain is not None:
        feeds["domain"] = np.array([domain], dtype=np.int64)
    for _ in range(20):
        sess.run(None, feeds)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    return path.stat().st_size, ts[len(ts) // 2]


def main() -> None:
    a = parse()
    import torch

    torch.set_num_threads(a.threads)
    from bap.exporter import ExportConfig, export
    from bap.models import create_backbone
    from bap.trainer import TrainConfig, load_run, train

    a.work.mkdir(parents=True, exist_ok=True)
    if not (a.bap_run / "report.json").is_file():
        print(f"training bap at β={a.budget} into {a.bap_run} ...", flush=True)
        train(
            TrainConfig(
                out=str(a.bap_run), backbone=a.backbone, budgets=(a.budget,), resume=a.bap_run.exists(), quiet=True
            )
        )
    run = load_run(a.bap_run, a.budget)
    cfg = run.config
    ds = run.domains()
    res = run.result
    exp_dir = a.work / "bap-export"
    if not (exp_dir / "manifest.json").is_file():
        export(ExportConfig(run_dir=str(a.bap_run), budget=a.budget, out=str(exp_dir), validation_images=8,
                            round_to=a.round_to))  # fmt: skip
    manifest = json.loads((exp_dir / "manifest.json").read_text())
    size = run.model.graph.input_size
    steps = cfg.epochs * (cfg.steps_per_epoch or math.ceil(max(len(d.train) for d in ds) / cfg.batch_size))
    bb_path = Path(run.run_dir) / "backbone.safetensors"
    backbone_macs = run.model.graph.total_macs

    results: dict[str, Any] = {"bap": {}, "variants": {}}
    bap_bytes = (exp_dir / "model.onnx").stat().st_size
    for d, dom in enumerate(ds):
        _, lat = onnx_bytes_and_latency(None, exp_dir / "model.onnx", size, a.latency_runs, a.threads, domain=d)
        results["bap"][dom.name] = {
            "accuracy": res["accuracy"][dom.name],
            "rel_macs": res["rel_macs"][dom.name],
            "latency_ms": lat,
        }
    results["bap_total"] = {"params": manifest["params"]["model"], "params_loaded": manifest["params"]["loaded"],
                            "onnx_bytes": bap_bytes, "graph": manifest["graph"]}  # fmt: skip
    for variant in a.variants.split(","):
        per, total_params, total_bytes = {}, 0, 0
        for dom in ds:
            t0 = time.time()
            net = Net.build(create_backbone(cfg.backbone, str(bb_path)), dom.num_classes, dom.mean, dom.std)
            target = int(res["macs"][dom.name])
            pruned, macs, ratio = prune_to_macs(net, target, size)
            acc = train_domain(pruned, dom, steps, cfg.batch_size, cfg, variant, cfg.seed)
            pruned.eval()
            nbytes, lat = onnx_bytes_and_latency(
                pruned, a.work / f"{variant}-{dom.name}.onnx", size, a.latency_runs, a.threads
            )
            params = sum(p.numel() for p in pruned.backbone.parameters())
            total_params += params
            total_bytes += nbytes
            per[dom.name] = {"accuracy": acc, "rel_macs": macs / backbone_macs, "target_rel_macs": target / backbone_macs,
                             "pruning_ratio": ratio, "params": params, "onnx_bytes": nbytes, "latency_ms": lat,
                             "seconds": round(time.time() - t0, 1)}  # fmt: skip
            print(
                f"{variant} {dom.name}: acc {acc:.3f} rel MACs {macs / backbone_macs:.3f} (target {target / backbone_macs:.3f})",
                flush=True,
            )
        results["variants"][variant] = {"domains": per, "params": total_params, "onnx_bytes": total_bytes}

    names = [d.name for d in ds]
    header = ["", *names, "mean acc", "params to serve all", "params held after load", "ONNX MB (all)",
              "median latency ms (b=1)"]  # fmt: skip
    rows = [["bap (one model)", *[f"{100 * results['bap'][n]['accuracy']:.1f}" for n in names],
             f"{100 * sum(results['bap'][n]['accuracy'] for n in names) / len(names):.1f}",
             f"{results['bap_total']['params']:,}", f"{results['bap_total']['params_loaded']:,}",
             f"{bap_bytes / 2**20:.2f}", f"{sum(results['bap'][n]['latency_ms'] for n in names) / len(names):.3f}"]]  # fmt: skip
    for v, r in results["variants"].items():
        rows.append([f"Torch-Pruning {v} ({len(names)} models)", *[f"{100 * r['domains'][n]['accuracy']:.1f}" for n in names],
                     f"{100 * sum(r['domains'][n]['accuracy'] for n in names) / len(names):.1f}",
                     f"{r['params']:,}", f"{r['params']:,}", f"{r['onnx_bytes'] / 2**20:.2f}",
                     f"{sum(r['domains'][n]['latency_ms'] for n in names) / len(names):.3f}"])  # fmt: skip
    macs_rows = [
        [
            n,
            f"{results['bap'][n]['rel_macs']:.3f}",
            *[f"{r['domains'][n]['rel_macs']:.3f}" for r in results["variants"].values()],
        ]
        for n in names
    ]
    text = (
        f"### bap vs Torch-Pruning {_tp_version()} ({a.backbone}, β = {a.budget}, embedded suite)\n\n"
        f"Accuracy in % (test). Params exclude classifiers for both; bap's count includes every domain's BN. "
        f"Params held after load: bap's {manifest['graph']} graph "
        + (
            "folds every domain's branch weights from the shared ones when the runtime loads it"
            if manifest["graph"] == "routed"
            else "holds the shared weights once"
        )
        + f". Latency: ONNX Runtime CPU, {a.threads} threads, batch 1, median of {a.latency_runs} runs (bap: the "
        f"multi-domain model with that domain's id).\n\n"
        + md_table(header, rows)
        + "\n\nPer-domain MACs relative to the backbone (Torch-Pruning targets bap's):\n\n"
        + md_table(["domain", "bap", *results["variants"]], macs_rows)
        + "\n\nChoices that could favour either side: Torch-Pruning prunes uniformly per layer (global_pruning=False) with "
        "L2 magnitude importance and no iterative schedule; it trains each domain for bap's number of steps with bap's "
        "learning rates (not tuned for it); tp-full gives it more freedom than bap (all weights train). bap shares one "
        "frozen backbone; "
        + (
            "each sample runs its own domain's branch of the one model (routing costs a few ops per domain), "
            if manifest["graph"] == "routed"
            else "every sample runs the union of all domains' channels with per-sample BN tables, "
        )
        + "Torch-Pruning's latency is that of one domain's model."
    )
    write_results(a.name, results, text)
    print(text)
    print(f"\nregenerate: {command_line()}")


def _tp_version() -> str:
    import importlib.metadata as md

    return md.version("torch-pruning")


if __name__ == "__main__":
    main()
