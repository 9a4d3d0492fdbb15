"""Small data types shared by I/O, the engine and the commands."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


@dataclass
class Frame:
    """One decoded frame.

    image: H x W x 3 uint8 RGB.
    index: position in the input, from 0.
    pts / time_base: presentation timestamp of a video frame (None for image folders).
    name: file stem for image folders, else the zero-padded index.
    """

    index: int
    image: np.ndarray
    pts: int | None = None
    time_base: Fraction | None = None
    name: str = ""

    @property
    def time(self) -> float | None:
        if self.pts is None or self.time_base is None:
            return None
        return float(self.pts * self.time_base)


@dataclass
class FrameResult:
    """What the engine returns for one frame, at the source resolution.

    index: H x W uint8 (uint16 if an id is above 255) object ids, 0 = background.
    probs: K x H x W uint8 probabilities (0..255) of each object after merging, in the
        order of ``object_ids``; background is 255 - sum.
    object_ids: the K object ids (as given by the user, not necessarily contiguous).
    """

    index: np.ndarray
    probs: np.ndarray
    object_ids: list[int] = field(default_factory=list)

    def foreground(self, object_id: int | None = None) -> np.ndarray:
        """H x W uint8 alpha: one object's probability, or the union of all objects."""
        if object_id is None:
            if len(self.object_ids) == 0:
                return np.zeros(self.index.shape, np.uint8)
            return np.clip(self.probs.astype(np.uint16).sum(0), 0, 255).astype(np.uint8)
        return self.probs[self.object_ids.index(object_id)]
