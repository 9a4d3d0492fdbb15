"""The loss of one step: the model's own training loss over a clip (:func:`clip_loss`), as
the module DDP wraps (:class:`ClipLoss`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from vostool.errors import VostoolError
from vostool.models.base import VOSModel


class ClipLoss(nn.Module):
    """``forward(frames, masks) -> loss``: the model's own training loss over a clip."""

    def __init__(self, model: VOSModel, zero_shot: bool = False, slots: int = 3) -> None:
        super().__init__()
        self.model = model
        self.zero_shot, self.slots = zero_shot, slots

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return clip_loss(self.model, frames, masks, self.zero_shot, self.slots)


def clip_loss(
    model: VOSModel, frames: torch.Tensor, masks: torch.Tensor, zero_shot: bool = False, slots: int = 3,
) -> torch.Tensor:
    """frames ``B x T x 3 x H x W``, masks ``B x T x H x W`` long {0, 1, 255} (zero-shot:
    instance ids, matched to the model's slots)."""
    if zero_shot:
        if not model.supports_zero_shot:
            raise VostoolError(f"model '{model.name}' has no zero-shot mode (only rvos)")
        return model.training_loss_zero_shot(frames, masks, slots)
    return model.training_loss(frames, masks)


def to_channels_last_clip(frames: torch.Tensor) -> torch.Tensor:
    """``B x T x C x H x W`` laid out so that ``flatten(0, 1)`` is channels_last."""
    return frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
