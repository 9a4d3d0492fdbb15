"""Splitting a list of videos over processes, GPUs and machines.

Two ways to run many workers over one input list, and both together:

- ``torchrun --nproc-per-node N -m vostool segment ...``: torchrun starts N processes and
  sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous); each process takes
  its share of the videos, runs on ``cuda:LOCAL_RANK`` when there are GPUs, and rank 0
  gathers every rank's summary (:func:`gather_to_rank0`, over ``torch.distributed`` with
  the gloo backend: only small Python objects travel, no tensors).
- ``--shard K/N`` (K from 0): for schedulers that start N independent jobs (a Slurm array
  ``--array=0-7`` with ``--shard $SLURM_ARRAY_TASK_ID/8``, a Kubernetes indexed job with
  ``$JOB_COMPLETION_INDEX``). No communication; each job prints its own summary.

With both, job K of N with W ranks each is worker ``K * W + rank`` of ``N * W``. The
input list (sorted by the caller, the same in every worker) is dealt round-robin:
video ``i`` goes to worker ``i % workers``. So every video is processed by exactly one
worker, whatever each worker finds already done (``--skip-done`` filters *after* the
split, never before, so that workers never disagree).
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from vostool.errors import VostoolError

T = TypeVar("T")

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Worker:
    """Which share of the inputs this process does.

    index, count: this worker among all (``K * W + rank`` of ``N * W``).
    rank, world_size, local_rank: from torchrun (0, 1, 0 without it).
    """

    index: int = 0
    count: int = 1
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that prints the gathered summary (rank 0)."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """This worker's share of ``items`` (round-robin)."""
        return [item for i, item in enumerate(items) if i % self.count == self.index]

    def describe(self) -> str:
        parts = []
        if self.count > self.world_size:
            parts.append(f"shard {self.index // self.world_size}/{self.count // self.world_size}")
        if self.distributed:
            parts.append(f"rank {self.rank}/{self.world_size}")
        return ", ".join(parts)


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``--shard K/N`` (0 <= K < N); None gives ``(0, 1)``.

    Raises:
        VostoolError: malformed text or K out of range.
    """
    if text is None:
        return 0, 1
    m = _SHARD_RE.match(text)
    if not m:
        raise VostoolError(f"--shard takes K/N with K counted from 0 (e.g. 0/8 ... 7/8), got '{text}'")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise VostoolError(f"--shard {text}: K must be in 0..N-1 and N >= 1")
    return k, n


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise VostoolError(f"${name} must be an integer, got '{raw}'") from None


def current_worker(shard: str | None = None) -> Worker:
    """This process's :class:`Worker`, from ``--shard`` and torchrun's environment.

    Raises:
        VostoolError: a bad ``--shard`` or torchrun variables out of range.
    """
    k, n = parse_shard(shard)
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank if world > 1 else 0)
    if world < 1 or not 0 <= rank < world:
        raise VostoolError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Worker(k * world + rank, n * world, rank, world, local)


def worker_device(device: str, worker: Worker) -> str:
    """The device of this worker: with several ranks and ``auto``/``cuda``, ``cuda:LOCAL_RANK``
    (modulo the GPUs present) when CUDA is available; otherwise ``device`` unchanged."""
    if not worker.distributed or device not in ("auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{worker.local_rank % torch.cuda.device_count()}"


def init_distributed(worker: Worker) -> bool:
    """Join torchrun's process group (gloo) when there are several ranks.

    Returns True if this call created the group (then call :func:`finish_distributed`).
    """
    if not worker.distributed:
        return False
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    if not dist.is_available():
        raise VostoolError("torch.distributed is not available in this torch build; use --shard K/N instead")
    try:
        # Ranks meet only at the end, to gather the summary: one may finish hours before
        # another, so the wait must not time out at gloo's default 30 minutes.
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=30))
    except (RuntimeError, ValueError) as exc:
        raise VostoolError(f"cannot join the torchrun process group ({' '.join(str(exc).split())[:200]})") from None
    return True


def gather_to_rank0(worker: Worker, obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others.
    Without several ranks: ``[obj]``."""
    if not worker.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * worker.world_size if worker.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def finish_distributed(created: bool) -> None:
    """Leave the process group made by :func:`init_distributed`."""
    if created:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
