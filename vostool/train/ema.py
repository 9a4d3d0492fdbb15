"""Exponential moving average of a model's weights (``--ema``)."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from vostool.errors import VostoolError


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging).

    ``avg <- d * avg + (1 - d) * w`` after every optimiser step, with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates so that a fresh average is
    not dominated by the starting weights. Floating-point parameters *and* buffers are
    averaged in float32 (BatchNorm statistics follow the weights that produced them);
    integer buffers are copied. Validation, ``best.pt`` and the exported checkpoint use
    the averaged weights; the optimiser keeps training the raw ones.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise VostoolError(f"--ema must be in (0, 1), got {decay}")
        self.model, self.decay, self.updates = model, float(decay), 0
        self.avg = {k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
                    for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self.model.state_dict().items():
            a = self.avg[k]
            if a.is_floating_point():
                a.lerp_(v.detach().float(), 1.0 - d)
            else:
                a.copy_(v)

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.avg) ^ set(weights)
        if missing:
            raise VostoolError(f"averaged weights do not match the model: {sorted(missing)[:3]}")
        for k, v in weights.items():
            self.avg[k].copy_(v)
        self.updates = updates

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights in the model's own dtypes (on the CPU)."""
        ref = self.model.state_dict()
        return {k: v.to(dtype=ref[k].dtype).cpu() for k, v in self.avg.items()}

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(raw)
