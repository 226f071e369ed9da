"""Data parallelism over ``torchrun``: gloo on CPU, NCCL on GPU.

Only the trainable parts carry gradients (switches, per-domain BN, heads; conv weights are frozen), and each
single-domain step averages exactly those gradients across ranks. bap does this with explicit all-reduces
rather than wrapping the model in ``DistributedDataParallel``: a step touches only one domain's parameters,
and DDP's unused-parameter handling would hand Adam zero gradients for the other domains, moving their
switches on stale momentum.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed"]


@dataclass
class DistContext:
    """Rank, world size and device of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True under ``torchrun`` with more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """True on the rank that writes artifacts."""
        return self.rank == 0

    def average_gradients(self, params) -> None:
        """All-reduce and average the gradients that exist (the current domain's trainable parts)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def average_tensors_(self, tensors) -> None:
        """In-place mean of tensors across ranks (BN statistics after re-estimation)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.all_reduce(t)
            t /= self.world

    def broadcast_(self, tensors) -> None:
        """Copy rank 0's tensors to every rank (initial heads, resumed state)."""
        if not self.enabled:
            return
        for t in tensors:
            dist.broadcast(t, 0)

    def checksum_agrees(self, tensors) -> str:
        """A checksum of ``tensors`` that every rank must share; raises if the ranks diverged."""
        import hashlib

        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()[:16]
        if self.enabled:
            seen: list[str] = [""] * self.world
            dist.all_gather_object(seen, digest)
            if len(set(seen)) != 1:
                raise RuntimeError(f"DDP ranks diverged: trainable-parameter checksums {seen}")
        return digest

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Tear the process group down."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistContext(rank, world, local)
