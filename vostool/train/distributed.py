"""DDP under torchrun: the process group (:func:`init_distributed`, :class:`Dist`) and the
batch sampler that gives each rank its own clips of every iteration."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class Dist:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module initialised the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op alone)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if :func:`init_distributed` created it."""
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed(device: torch.device) -> Dist:
    """Set up DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        owned = True
    return Dist(rank, world, local, owned)


class BatchSampler(torch.utils.data.Sampler):
    """Indices ``(it * world + rank) * batch + b`` for it in [start, end): the clips of an
    iteration depend on nothing but its number, so a resumed run sees the same ones."""

    def __init__(self, start: int, end: int, batch: int, rank: int, world: int) -> None:
        self.start, self.end, self.batch, self.rank, self.world = start, end, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for it in range(self.start, self.end):
            base = (it * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))
