"""What a run tells: the progress bar or plain lines and ``log.txt`` (:class:`Reporter`),
the hardware string and the data summary recorded in checkpoints and cards."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from vostool.engine.device import device_name
from vostool.train.config import TrainConfig


class Reporter:
    """Rich progress bar on a TTY, plain lines otherwise; ``log.txt`` always (rank 0)."""

    def __init__(self, cfg: TrainConfig, main: bool, start: int, log_path: Path | None) -> None:
        self.cfg, self.main, self.start = cfg, main, start
        self.log = open(log_path, "a", buffering=1) if (main and log_path) else None
        use_bar = cfg.progress if cfg.progress is not None else sys.stdout.isatty()
        self.progress = None
        if main and use_bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TextColumn("lr {task.fields[lr]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(f"{cfg.model} {cfg.stage}", total=cfg.iters, completed=start,
                                               loss="-", speed="-", lr="-")
            self.progress.start()

    def line(self, text: str, echo: bool = True) -> None:
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.log:
            self.log.write(f"{stamp} {text}\n")
        if echo:
            if self.progress is not None:
                self.progress.console.print(text)
            else:
                print(text, flush=True)

    def update(self, it: int, loss: float, clips_s: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=it, loss=f"{loss:.4f}", speed=f"{clips_s:.2f} clips/s",
                                 lr=f"{lr:.2e}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.log:
            self.log.close()


def hardware_name(device: torch.device, world: int) -> str:
    """``"Intel Xeon ..."``, ``"NVIDIA H100"`` or ``"2 x NVIDIA H100"`` under DDP."""
    name = device_name(device)
    return name if world == 1 else f"{world} x {name}"


def data_summary(cfg: TrainConfig, dataset: Any) -> dict[str, Any]:
    """What a run trained on (roots, sequence/frame or image counts, objects per sample)."""
    from vostool.train.data import MixedClips
    from vostool.train.factory import objects_per_sample

    objects = objects_per_sample(cfg)
    extra = {"objects_per_sample": objects} if objects > 1 else {}
    if cfg.stage == "video":
        seqs = getattr(dataset, "sequences", [])
        out = {"roots": [str(r) for r in cfg.data], "sequences": len(seqs),
               "frames": sum(len(s.frames) for s in seqs), "val_sequences": list(cfg.val_sequences)}
        if isinstance(dataset, MixedClips):
            out.update(images=[str(r) for r in cfg.images], image_count=dataset.count, image_ratio=cfg.image_ratio)
        return {**out, **extra}
    return {"images": [str(r) for r in cfg.images], "count": getattr(dataset, "count", 0), **extra}
