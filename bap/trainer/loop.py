"""The training loop: run directory, data, backbone, then one task per budget with checkpoints and resume.

Joint round-robin training: every round visits all domains in random order, one single-domain batch each.
Checkpoints are written at every epoch end and when SIGINT arrives (at the next step boundary); a run killed
harder loses at most the current epoch. ``--resume`` continues from the checkpoint and skips completed budgets.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from bap.core.env import resolve_device
from bap.core.io import RunLock, atomic_write_json, file_sha256, save_state_dict
from bap.data.sources import load_domains
from bap.data.types import DomainSet
from bap.errors import ConfigError, DataError, IncompatibleArtifactError, TrainingInterrupted
from bap.trainer.artifacts import REPORT_FORMAT, RunDir, run_config_doc
from bap.trainer.config import TrainConfig, budget_key
from bap.trainer.distributed import DistContext, init_distributed
from bap.trainer.sampling import domain_steps, epoch_indices, epoch_schedule
from bap.trainer.tasks import TASKS, TaskContext, batch_for, steps_per_epoch

__all__ = ["TrainingInterrupted", "build_report", "train"]

log = logging.getLogger(__name__)


class NullCallback:
    """Progress callback that does nothing (library default; the CLI passes a rich one)."""

    def on_phase(self, name: str, total: int) -> None:
        """A phase with ``total`` steps begins."""

    def on_advance(self, n: int = 1, **stats: float) -> None:
        """``n`` steps done."""

    def on_phase_end(self, message: str | None = None) -> None:
        """The phase ended."""

    def on_budget_end(self, result: dict[str, Any]) -> None:
        """A budget finished with ``result``."""


@contextlib.contextmanager
def _sigint_flag() -> Iterator[threading.Event]:
    """Turn the first SIGINT into a flag checked at step boundaries; a second one interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()
        log.warning("interrupt: finishing the current step and writing a checkpoint (Ctrl-C again to abort)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


def _load_reference_errors(domains: DomainSet, cfg: TrainConfig) -> dict[str, float] | None:
    """S-score reference: ``--reference-errors FILE``, else the embedded suite's or the Visual Decathlon's."""
    from bap.data.reference import reference_errors_for

    return reference_errors_for(domains.origin.get("kind"), domains.names, cfg.reference_errors)


def _check_domains(domains: DomainSet) -> None:
    for d in domains:
        for s in ("train", "val", "test"):
            if len(d.split(s)) == 0:
                raise DataError(
                    f"domain {d.name!r} has an empty {s} split", "add images or drop the domain (--domains)"
                )
        if d.num_classes < 2:
            raise DataError(
                f"domain {d.name!r} has {d.num_classes} class", "a classification domain needs >= 2 classes"
            )


def _prepare_run(cfg: TrainConfig, dist: DistContext) -> tuple[TrainConfig, RunDir, dict | None]:
    run = RunDir(cfg.out)
    if cfg.resume:
        doc = run.read_config()
        stored = TrainConfig.from_dict(doc["config"])
        return TrainConfig.from_dict({**stored.to_dict(), "resume": True, "quiet": cfg.quiet}), run, doc
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"--out {run.path} exists and is not a directory", "pass a new directory")
    if not run.is_empty():
        raise ConfigError(
            f"run directory {run.path} already exists and is not empty",
            "pass --resume to continue it, or a new --out",
        )
    return cfg.with_preset(), run, None


def build_report(cfg: TrainConfig, doc: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    """``report.json`` (schema ``bap.train-report/1``)."""
    return {
        "format": REPORT_FORMAT,
        "backbone": {k: doc["backbone"][k] for k in ("name", "macs", "params", "input_size", "switches")},
        "domains": [
            {"name": d["name"], "classes": len(d["classes"]), "train": d["train"], "val": d["val"], "test": d["test"]}
            for d in doc["domains"]
        ],
        "budget_unit": cfg.budget_unit,
        "switches_on": "every conv (stem and 1x1 downsample included)",
        "runs": results,
        "config": cfg.to_dict(),
        "versions": doc.get("versions", {}),
    }


def train(cfg: TrainConfig, callback: Any = None) -> dict[str, Any]:
    """Train every budget of ``cfg`` into ``cfg.out`` and return the report.

    Raises:
        ConfigError, DataError, IncompatibleArtifactError: bad flags, data or run directory (nothing written).
        RunLockedError: another live process trains in the same directory.
        TrainingInterrupted: SIGINT; a checkpoint was written.
    """
    cb = callback or NullCallback()
    device_name = resolve_device(cfg.device)
    dist = init_distributed(device_name)
    device = torch.device(f"cuda:{dist.local_rank}" if device_name == "cuda" and dist.enabled else device_name)
    cfg, run, doc = _prepare_run(cfg, dist)
    from bap.models.backbones import BACKBONES, create_backbone

    BACKBONES.get(cfg.backbone)  # unknown names fail before anything is written
    domains = load_domains(cfg.data_root, cfg.layout, cfg.domains or None, seed=0)
    _check_domains(domains)
    reference = _load_reference_errors(domains, cfg)  # a bad --reference-errors file fails before anything is written
    if cfg.pretrain_source is not None:
        if cfg.pretrain_source != "union":
            domains.get(cfg.pretrain_source)  # unknown names fail here, before anything is written
        domains.source_domain = cfg.pretrain_source
    if doc is not None and [d["name"] for d in doc["domains"]] != domains.names:
        raise IncompatibleArtifactError(f"{run.path} was trained on other domains", "resume with the same data")
    dist.barrier()  # every rank has checked the run directory before rank 0 writes to it
    created = not run.path.exists()
    lock = RunLock(run.path) if dist.is_main else None
    if lock:
        lock.acquire()
    try:
        return _train_locked(cfg, run, doc, domains, reference, device, dist, cb, create_backbone)
    finally:
        if lock:
            lock.release()
        if created and dist.is_main and run.path.is_dir() and not any(run.path.iterdir()):  # lock already released
            run.path.rmdir()  # failed before writing anything: leave no trace
        dist.close()


def _train_locked(cfg, run: RunDir, doc, domains: DomainSet, reference, device, dist: DistContext, cb, create_backbone):
    from bap.core.graph import analyze

    t_start = time.time()
    if doc is None:
        weights_source = cfg.weights
        if weights_source is None:
            from bap.trainer.pretrain import ensure_pretrained

            if dist.is_main:
                path, info = ensure_pretrained(cfg.backbone, domains, cfg.pretrain_epochs, cfg.seed, device, cb)
            dist.barrier()
            path, info = ensure_pretrained(cfg.backbone, domains, cfg.pretrain_epochs, cfg.seed, device, None)
            weights_source = str(path)
            pretrain_info = info
        else:
            pretrain_info = None
        backbone = create_backbone(cfg.backbone, weights_source).eval()
        graph = analyze(backbone, domains[0].preprocess.crop)
        doc = run_config_doc(cfg, domains, backbone, graph, weights_source, pretrain_info)
        if dist.is_main:
            save_state_dict(run.backbone_path, backbone.state_dict(), {"backbone": cfg.backbone})
            doc["backbone"]["sha256"] = file_sha256(run.backbone_path)
            run.write_config(doc)
        dist.barrier()
    else:
        from bap.trainer.artifacts import build_model_from_run

        _, backbone = build_model_from_run(run, doc)
        graph = analyze(backbone, int(doc["backbone"]["input_size"]))
    backbone = backbone.to(device)

    ctx = TaskContext(cfg, domains, backbone, graph, device, dist, reference)
    results = []
    with _sigint_flag() as stop:
        for beta in cfg.effective_budgets:
            done = run.read_result(beta)
            if done is not None:
                log.info("budget %s already trained, skipping", budget_key(beta))
                results.append(done)
                continue
            res = _train_budget(ctx, run, beta, cb, stop)
            results.append(res)
            cb.on_budget_end(res)
    report = build_report(cfg, doc, results)
    report["s_reference_errors"] = reference  # what S, S_O, S_P and their intervals were computed with (or None)
    report["seconds"] = round(time.time() - t_start, 1)
    if dist.is_main:
        atomic_write_json(run.report_path, report)
    return report


def _autocast(ctx: TaskContext):
    """bfloat16 autocast on CUDA when ``--amp`` (no loss scaling needed); a no-op on CPU."""
    if ctx.device.type == "cuda" and ctx.cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _set_lr(task, epoch: int, milestones) -> float:
    factor = 0.1 ** sum(epoch >= m for m in milestones)
    for opt in task.optimizers:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
    return factor


def _resume_point(run: RunDir, task, cfg: TrainConfig, key: str) -> tuple[int, int, float]:
    """``(epoch, step, seconds already spent)`` to continue budget ``key`` from; zeros without a checkpoint."""
    ck = run.load_checkpoint()
    if ck is None:
        return 0, 0, 0.0
    if ck.get("budget") != key or ck.get("method") != cfg.method:
        log.warning("ignoring a checkpoint of budget %s (training %s)", ck.get("budget"), key)
        return 0, 0, 0.0
    task.load_state_dict(ck["task"])
    log.info("resuming budget %s at epoch %d step %d", key, int(ck["epoch"]), int(ck["step"]))
    return int(ck["epoch"]), int(ck["step"]), float(ck.get("elapsed", 0.0))


def _optimizer_step(ctx: TaskContext, task, trainable, d: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """One step of domain ``d``: zero, forward + backward (the task's), average gradients across ranks, update."""
    for opt in task.optimizers:
        opt.zero_grad(set_to_none=True)
    with _autocast(ctx):
        stats = task.step(d, x, y)
    ctx.dist.average_gradients(trainable)
    for opt in task.optimizers:
        opt.step()
    task.after_step(d, stats)
    return stats


def _add_stats(sums: dict[str, dict[str, float]], name: str, stats: dict[str, float]) -> None:
    acc = sums.setdefault(name, {})
    for k, v in stats.items():
        acc[k] = acc.get(k, 0.0) + v
    acc["n"] = acc.get("n", 0.0) + 1


def _schedule(ctx: TaskContext) -> list[int]:
    """Batches per epoch of each domain under ``--domain-sampling``."""
    cfg = ctx.cfg
    rounds = steps_per_epoch(cfg, ctx.domains)
    sizes = [len(d.train) for d in ctx.domains]
    return domain_steps(sizes, rounds, cfg.batch_size, cfg.domain_sampling, one_pass=cfg.steps_per_epoch == 0)


def _run_epoch(ctx: TaskContext, task, trainable, key: str, epoch: int, first_round: int, counts: list[int], cb,
               stop: threading.Event, save) -> dict[str, dict[str, float]]:  # fmt: skip
    """The rounds of one epoch from ``first_round``; returns the per-domain sums of the step statistics."""
    cfg = ctx.cfg
    bs = cfg.batch_size
    idx = {d: epoch_indices(len(ctx.domains[d].train), n * bs, cfg.seed, key, epoch, d) for d, n in enumerate(counts)}
    rounds = epoch_schedule(counts, cfg.seed, key, epoch)
    sums: dict[str, dict[str, float]] = {}
    for r in range(first_round, len(rounds)):
        for d, j in rounds[r]:  # j: the domain's batch number in this epoch (the round, under uniform sampling)
            x, y = batch_for(ctx, d, idx[d][j * bs : (j + 1) * bs], (cfg.seed, key, epoch, j, d))
            stats = _optimizer_step(ctx, task, trainable, d, x, y)
            _add_stats(sums, ctx.domains.names[d], stats)
            cb.on_advance(1, **{k: stats[k] for k in ("loss", "usage") if k in stats}, epoch=epoch + 1)
        if stop.is_set():
            save(epoch, r + 1)
            raise TrainingInterrupted(f"interrupted at budget {key}, epoch {epoch + 1}, step {r + 1}")
    return sums


def _train_budget(ctx: TaskContext, run: RunDir, beta: float, cb, stop: threading.Event) -> dict[str, Any]:
    cfg, dist = ctx.cfg, ctx.dist
    key = budget_key(beta)
    task = TASKS.get(cfg.method)(ctx, beta)
    counts = _schedule(ctx)
    task.on_schedule(counts)
    start_epoch, start_step, elapsed = _resume_point(run, task, cfg, key)
    # rows count epochs from 1: the row of epoch start_epoch (1-based) is the last completed one and stays
    metrics = [r for r in run.read_metrics() if not (r.get("budget") == key and r.get("epoch", 0) > start_epoch)]

    def save(epoch: int, step: int) -> None:
        if dist.is_main:
            run.save_checkpoint(
                {
                    "budget": key,
                    "method": cfg.method,
                    "epoch": epoch,
                    "step": step,
                    "task": task.state_dict(),
                    "elapsed": elapsed + time.time() - t0,
                }
            )
        dist.barrier()

    per_epoch = sum(counts)
    cb.on_phase(f"{cfg.method} β={key}", cfg.epochs * per_epoch)
    cb.on_advance(start_epoch * per_epoch + min(per_epoch, start_step * len(counts)))
    t0 = time.time()
    trainable = task.trainable()
    for epoch in range(start_epoch, cfg.epochs):
        lr_factor = _set_lr(task, epoch, cfg.lr_milestones)
        task.on_epoch_start(epoch)
        first = start_step if epoch == start_epoch else 0
        sums = _run_epoch(ctx, task, trainable, key, epoch, first, counts, cb, stop, save)
        row = {
            "budget": key,
            "method": cfg.method,
            "epoch": epoch + 1,
            "lr_factor": lr_factor,
            "losses": {n: {k: v / s["n"] for k, v in s.items() if k != "n"} for n, s in sums.items()},
            **task.epoch_stats(),
            "val_accuracy": task.quick_validate(),
            "seconds": round(elapsed + time.time() - t0, 2),
        }
        metrics.append(row)
        if dist.is_main:
            run.write_metrics(metrics)
        save(epoch + 1, 0)
        log.info(
            "β=%s epoch %d/%d: %s",
            key,
            epoch + 1,
            cfg.epochs,
            {k: row[k] for k in row if k in ("usage", "and_fraction", "val_accuracy")},
        )
    cb.on_phase_end()
    sampling = {"mode": cfg.domain_sampling, "steps_per_epoch": dict(zip(ctx.domains.names, counts, strict=True))}
    return _finish_budget(ctx, run, task, beta, elapsed + time.time() - t0, {"domain_sampling": sampling})


def _finish_budget(
    ctx: TaskContext, run: RunDir, task, beta: float, seconds: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Finalise the task, write the budget's state and result, drop the checkpoint; return the result."""
    cfg, dist = ctx.cfg, ctx.dist
    t0 = time.time()
    res, state = task.finalize()
    if dist.enabled:
        digest = dist.checksum_agrees([p for p in task.trainable()])
        log.info("rank %d/%d: trainable parameters agree across ranks (checksum %s)", dist.rank, dist.world, digest)
        res["ddp"] = {"world_size": dist.world, "checksum": digest}
    res = {
        "method": cfg.method,
        "budget": beta,
        "budget_unit": cfg.budget_unit,
        "lambda_ps": cfg.effective_lambda_ps,
        **res,
        **(extra or {}),
    }
    res["seconds"] = round(seconds + time.time() - t0, 1)
    if dist.is_main:
        save_state_dict(run.state_path(beta), state, {"method": cfg.method, "budget": budget_key(beta)})
        atomic_write_json(run.result_path(beta), res)
        run.clear_checkpoint()
    dist.barrier()
    return res
