"""A synthetic clip for benchmarks: K coloured shapes moving over a textured background.

Frames are ``H x W x 3`` uint8 RGB with a 16:9 aspect ratio by default; the first mask
has K objects with ids ``1..K``. Content hardly matters for speed (every model does the
same work whatever the pixels), but moving, textured frames keep codecs and models
honest: a flat clip would compress to nothing and could hit shortcuts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np


def clip_size(size: int, aspect: float = 16 / 9) -> tuple[int, int]:
    """``(height, width)`` of a clip whose shorter side is ``size`` (sides even, for H.264)."""
    size = max(2, int(size))
    h = size + size % 2
    w = max(h, 2 * round(size * aspect / 2))
    return h, w


class SyntheticClip:
    """A deterministic clip of ``objects`` moving ellipses.

    ``frame(i)`` renders frame ``i`` (any i >= 0, so long runs never hold the whole clip);
    ``first_mask()`` is frame 0's ``H x W`` uint8 id mask (ids 1..K).
    """

    def __init__(self, height: int, width: int, objects: int = 1, seed: int = 0) -> None:
        if objects < 1:
            raise ValueError("objects must be at least 1")
        if objects > 255:
            raise ValueError("at most 255 objects")
        self.height, self.width, self.objects = int(height), int(width), int(objects)
        rng = np.random.default_rng(seed)
        h, w = self.height, self.width
        # Background: a smooth gradient plus a fixed noise texture (scrolls over time).
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / max(w, 1), yy / max(h, 1), 0.5 + 0.0 * xx], -1) * 160 + 40
        noise = rng.normal(0, 18, (h, w, 3)).astype(np.float32)
        self._bg = np.clip(base + noise, 0, 255).astype(np.uint8)
        self._yy, self._xx = yy, xx
        # Objects: centre path (ellipse around a home point), radii, colour.
        cols = math.ceil(math.sqrt(objects))
        rows = math.ceil(objects / cols)
        self._objs = []
        for k in range(objects):
            r, c = divmod(k, cols)
            cy, cx = (r + 0.5) * h / rows, (c + 0.5) * w / cols
            ry, rx = 0.3 * h / rows, 0.3 * w / cols
            self._objs.append({
                "home": (cy, cx),
                "orbit": (0.25 * h / rows, 0.25 * w / cols),
                "radii": (max(1.0, ry), max(1.0, rx)),
                "phase": rng.uniform(0, 2 * math.pi),
                "speed": rng.uniform(0.05, 0.12),
                "colour": rng.integers(30, 255, 3).astype(np.uint8),
            })

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def _masks(self, i: int) -> np.ndarray:
        """``H x W`` uint8 ids at frame i (later objects drawn on top)."""
        ids = np.zeros((self.height, self.width), np.uint8)
        for k, o in enumerate(self._objs, start=1):
            a = o["phase"] + o["speed"] * i
            cy = o["home"][0] + o["orbit"][0] * math.sin(a)
            cx = o["home"][1] + o["orbit"][1] * math.cos(a)
            ry, rx = o["radii"]
            inside = ((self._yy - cy) / ry) ** 2 + ((self._xx - cx) / rx) ** 2 <= 1.0
            ids[inside] = k
        return ids

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as ``H x W x 3`` uint8 RGB."""
        shift = (3 * i) % self.width
        img = np.roll(self._bg, shift, axis=1)
        ids = self._masks(i)
        for k, o in enumerate(self._objs, start=1):
            img[ids == k] = o["colour"]
        return img

    def first_mask(self) -> np.ndarray:
        return self._masks(0)

    def frames(self, n: int, start: int = 0) -> Iterator[np.ndarray]:
        for i in range(start, start + n):
            yield self.frame(i)


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Encode ``frames`` (uint8 RGB, even sides) to an H.264 mp4 at ``path``."""
    import av

    path = Path(path)
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps), options={"crf": "18", "preset": "veryfast"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
