"""Training throughput of a ``bap`` step against a BN+head-only step on the same frozen backbone.

The bap step is the real one (switches + per-domain BN + heads, all loss terms, optimizer steps); the two are
interleaved in one process.

The ratio (time per bap step / time per BN+head step) must be <= 1.3.

    python benchmarks/train_throughput.py            # about a minute on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import command_line, md_table, write_results


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="cifar_resnet14")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds")
    p.add_argument("--steps", type=int, default=8, help="steps per round and method")
    p.add_argument("--name", default="train_throughput")
    return p.parse_args()


def main() -> None:
    a = parse()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    from bap.core.graph import analyze
    from bap.data.suite import build_suite
    from bap.models import create_backbone
    from bap.trainer import TrainConfig
    from bap.trainer.distributed import DistContext
    from bap.trainer.tasks import SwitchTask, TaskContext

    suite = build_suite()
    bb = create_backbone(a.backbone).eval()
    graph = analyze(bb, 32)
    cfg = TrainConfig(out="unused", backbone=a.backbone, batch_size=a.batch_size)
    ctx = TaskContext(cfg, suite, bb, graph, torch.device("cpu"), DistContext(), None)
    task = SwitchTask(ctx, 0.5)
    task.lambdas = [1.0] * len(suite)  # the budget term is active, as in training below the budget

    # baseline: the same frozen backbone, BN and a head trainable, no switches (what a BN+head adapter trains)
    base = create_backbone(a.backbone).requires_grad_(False)
    for m in base.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.requires_grad_(True)
    head = torch.nn.Linear(graph.feature_dim, 10)
    opt = torch.optim.SGD(
        [p for p in base.parameters() if p.requires_grad] + list(head.parameters()), lr=0.01, momentum=0.9
    )
    base.train()

    x = torch.rand(a.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (a.batch_size,))

    def bap_step(d: int = 0) -> None:
        for o in task.optimizers:
            o.zero_grad(set_to_none=True)
        st = task.step(d, x, y)
        for o in task.optimizers:
            o.step()
        task.after_step(d, st)

    def base_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(head(base(x)), y).backward()
        opt.step()

    for _ in range(3):
        bap_step()
        base_step()
    ips: dict[str, list[float]] = {"bap": [], "bn+head": []}
    for r in range(a.rounds):
        order = [("bap", bap_step), ("bn+head", base_step)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            t0 = time.perf_counter()
            for _ in range(a.steps):
                fn()
            ips[name].append(a.steps * a.batch_size / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in ips.items()}
    ratio = med["bn+head"] / med["bap"]
    spread = (
        min(b / p for b, p in zip(ips["bn+head"], ips["bap"], strict=True)),
        max(b / p for b, p in zip(ips["bn+head"], ips["bap"], strict=True)),
    )
    rows = [["bap (switches + BN + heads)", f"{med['bap']:.0f}"], ["BN + head only", f"{med['bn+head']:.0f}"]]
    text = (f"### Training throughput: {a.backbone}, batch {a.batch_size}, {a.threads} threads, CPU\n\n"
            + md_table(["step", "images/s (median of rounds)"], rows)
            + f"\n\nTime ratio bap / BN+head-only: **{ratio:.2f}** (rounds: {spread[0]:.2f}-{spread[1]:.2f}); bound: <= 1.30.")  # fmt: skip
    write_results(
        a.name,
        {"images_per_s": med, "rounds": ips, "ratio": ratio, "ratio_range": spread, "passed": ratio <= 1.3},
        text,
    )
    print(f"bap step {med['bap']:.0f} img/s, BN+head step {med['bn+head']:.0f} img/s, time ratio {ratio:.2f} "
          f"(rounds {spread[0]:.2f}-{spread[1]:.2f}); <= 1.3: {ratio <= 1.3}\nregenerate: {command_line()}")  # fmt: skip


if __name__ == "__main__":
    main()
