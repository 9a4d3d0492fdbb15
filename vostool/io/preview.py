"""``preview.jpg``: a contact sheet of overlay frames spread over the whole video.

:class:`ContactSheet` is fed every frame's result while the video streams and keeps only
small thumbnails of the frames it samples. When the frame count is known up front
(``expected``), it samples ``count`` frames evenly from the first to the last; when it is
not (or the video runs past the estimate), it keeps every ``stride``-th frame and doubles the stride
whenever more than ``2 * count`` are held, so memory stays bounded, and picks ``count``
evenly spread ones (the last frame included) at the end. Each tile is the overlay (objects
tinted and outlined, as in ``overlay.mp4``) with its frame number in the corner.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from vostool.io.writers import render_overlay
from vostool.types import Frame, FrameResult

PREVIEW_NAME = "preview.jpg"
TILE_WIDTH = 320
GAP = 4
BACKGROUND = (24, 24, 24)


def grid_shape(n: int, width: int, height: int) -> tuple[int, int]:
    """(columns, rows) for ``n`` tiles of ``width`` x ``height``: a roughly 16:9 sheet."""
    if n <= 0:
        return 0, 0
    cols = max(1, min(n, math.ceil(math.sqrt(n * 16 / 9 * height / max(width, 1)))))
    return cols, math.ceil(n / cols)


def tile_size(width: int, height: int, tile_width: int = TILE_WIDTH) -> tuple[int, int]:
    """(width, height) of one tile for a ``width`` x ``height`` source (aspect kept)."""
    return tile_width, max(1, round(height * tile_width / max(width, 1)))


def sheet_size(n: int, width: int, height: int, tile_width: int = TILE_WIDTH) -> tuple[int, int]:
    """(width, height) in pixels of the sheet of ``n`` tiles of a ``width`` x ``height`` source."""
    cols, rows = grid_shape(n, width, height)
    tw, th = tile_size(width, height, tile_width)
    return cols * tw + (cols + 1) * GAP, rows * th + (rows + 1) * GAP


def _label(tile: np.ndarray, text: str) -> None:
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    cv2.rectangle(tile, (0, 0), (tw + 8, th + base + 6), (0, 0, 0), -1)
    cv2.putText(tile, text, (4, th + 3), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


class ContactSheet:
    """Samples overlay frames of one video into a grid image.

    Args:
        count: tiles on the sheet (fewer when the video is shorter).
        expected: frame count known up front (None: unknown; an estimate is fine).
        tile_width: width of a tile in pixels (height follows the aspect ratio).
    """

    def __init__(self, count: int = 12, expected: int | None = None, tile_width: int = TILE_WIDTH) -> None:
        if count < 1:
            raise ValueError("a contact sheet needs at least one tile")
        self.count, self.tile_width = count, tile_width
        self.targets: set[int] | None = None
        if expected is not None and expected > 0:
            self.targets = {round(i * (expected - 1) / max(count - 1, 1)) for i in range(count)}
        self.stride = 1
        self.tiles: dict[int, np.ndarray] = {}  # frame index -> H x W x 3 uint8 thumbnail
        self.seen = 0
        self._last: tuple[Frame, FrameResult] | None = None
        self._size: tuple[int, int] | None = None  # source (width, height)

    def _thumb(self, frame: Frame, result: FrameResult) -> np.ndarray:
        h, w = frame.image.shape[:2]
        tw, th = tile_size(w, h, self.tile_width)
        tile = cv2.resize(render_overlay(frame.image, result.index), (tw, th),
                          interpolation=cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR)
        _label(tile, f"frame {frame.index}")
        return tile

    def add(self, frame: Frame, result: FrameResult) -> None:
        """Offer one frame (``frame.image`` H x W x 3 RGB, ``result.index`` H x W ids)."""
        self.seen += 1
        self._size = (frame.image.shape[1], frame.image.shape[0])
        self._last = (frame, result)  # references only: the engine makes new arrays per frame
        i = frame.index
        if self.targets is not None and i > max(self.targets):  # longer than estimated
            self.stride = max(1, max(self.targets) // max(self.count - 1, 1))
            self.targets = None
        if self.targets is not None:
            if i in self.targets:
                self.tiles[i] = self._thumb(frame, result)
            return
        if i % self.stride == 0:
            self.tiles[i] = self._thumb(frame, result)
            if len(self.tiles) > 2 * self.count:
                self.stride *= 2
                self.tiles = {k: v for k, v in self.tiles.items() if k % self.stride == 0}

    def picked(self) -> list[int]:
        """Frame indices the sheet will show, in order (the last frame seen always included)."""
        keys = sorted(self.tiles)
        if self._last is not None and self._last[0].index not in self.tiles:
            keys.append(self._last[0].index)
        if len(keys) <= self.count:
            return keys
        pos = [round(j * (len(keys) - 1) / (self.count - 1)) for j in range(self.count)] \
            if self.count > 1 else [0]
        return [keys[p] for p in sorted(set(pos))]

    def render(self) -> np.ndarray | None:
        """The sheet as an H x W x 3 uint8 RGB array, or None when no frame was seen."""
        if self._last is None or self._size is None:
            return None
        picked = self.picked()
        last_frame, last_result = self._last
        w, h = self._size
        tw, th = tile_size(w, h, self.tile_width)
        cols, rows = grid_shape(len(picked), w, h)
        sw, sh = sheet_size(len(picked), w, h, self.tile_width)
        sheet = np.empty((sh, sw, 3), np.uint8)
        sheet[:] = BACKGROUND
        for k, idx in enumerate(picked):
            tile = self.tiles.get(idx)
            if tile is None:  # the last frame, rendered only now
                tile = self._thumb(last_frame, last_result)
            r, c = divmod(k, cols)
            y, x = GAP + r * (th + GAP), GAP + c * (tw + GAP)
            sheet[y : y + th, x : x + tw] = tile
        return sheet

    def save(self, path: str | os.PathLike[str], quality: int = 88) -> Path | None:
        """Write the sheet as a JPEG atomically; returns the path (None when no frame was seen)."""
        sheet = self.render()
        if sheet is None:
            return None
        path = Path(path)
        tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the leftover name outdir clears
        Image.fromarray(sheet).save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
        return path
