"""Learning rate schedules (``TrainConfig.lr_schedule``): ``constant``; ``exp``: ``lr *
lr_gamma ** (iteration / lr_step)`` (CRVOS: 0.995 per epoch); ``cosine``: from ``lr`` to
``lr / 100`` over ``iters``. A linear warm-up over ``warmup`` iterations applies to all."""

from __future__ import annotations

import math

from vostool.errors import VostoolError
from vostool.train.config import SCHEDULES, TrainConfig


def lr_at(cfg: TrainConfig, it: int) -> float:
    """The learning rate of the step that starts at iteration ``it`` (0-based)."""
    if cfg.lr_schedule == "constant":
        f = 1.0
    elif cfg.lr_schedule == "exp":
        f = cfg.lr_gamma ** (it / max(1, cfg.lr_step))
    elif cfg.lr_schedule == "cosine":
        f = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, it / max(1, cfg.iters))))
    else:
        raise VostoolError(f"unknown lr schedule '{cfg.lr_schedule}'; choose one of: {', '.join(SCHEDULES)}")
    f *= warmup_factor(cfg.warmup, it)  # before the product with lr: the same rounding as ever
    return cfg.lr * f


def warmup_factor(warmup: int, it: int) -> float:
    """Linear warm-up: ``(it + 1) / warmup`` for the first ``warmup`` iterations, then 1."""
    return (it + 1) / warmup if warmup and it < warmup else 1.0
