"""Frame files: which files are images, their natural order, and the one frame reader.

``vostool segment`` (image folders, :mod:`vostool.io.video`), ``vostool eval`` (DAVIS frames,
the HTML report's thumbnails) and ``vostool train`` (DAVIS-layout clips, still images) read
frames through :func:`read_frame`, so that a frame is the same array wherever it is read.
Torch-free: numpy, PIL and OpenCV only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from vostool.errors import VostoolError

#: Suffixes (lower case) of the frame images read; the first ones are looked for first where a
#: frame is found by its stem (DAVIS's ``.jpg`` before ``.png``).
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

#: PIL modes of 16/32-bit greyscale images, scaled to 8 bits (not clipped) when read as frames.
_WIDE_GREY = frozenset({"I", "I;16", "I;16B", "I;16L"})


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers by value: ``f2.png`` < ``f10.png``; letters
    compare without case first. On DAVIS's zero-padded names it is the plain (official) order."""
    return [(0, int(t), t) if t.isdigit() else (1, t.lower(), t) for t in re.split(r"(\d+)", name)]


def is_image_file(path: Path) -> bool:
    """A frame image: a file with one of :data:`IMAGE_EXTS` that is not hidden (``._x.jpg``)."""
    return path.is_file() and path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The frame images of ``folder`` in natural order of their names."""
    return sorted((p for p in Path(folder).iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def to_rgb(img: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB (writable) from any PIL image; 16-bit greyscale is scaled to 8 bits."""
    if img.mode in _WIDE_GREY:
        grey = (np.array(img).astype(np.uint32) // 257).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))


def resize_short(img: np.ndarray, short_side: int | None, nearest: bool) -> np.ndarray:
    """``img`` (H x W or H x W x C) resized so that its shorter side is ``short_side`` pixels.

    nearest: masks (nearest neighbour); images use area averaging to shrink and bilinear
    interpolation to enlarge. None/0, or a scale within 1e-6 of 1, returns ``img`` itself.
    """
    if not short_side:
        return img
    h, w = img.shape[:2]
    r = short_side / min(h, w)
    if abs(r - 1) < 1e-6:
        return img
    size = (max(1, round(w * r)), max(1, round(h * r)))
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)
    return cv2.resize(img, size, interpolation=interp)


def read_frame(path: str | os.PathLike[str], short_side: int | None = None) -> np.ndarray:
    """Read one frame image as H x W x 3 uint8 RGB (see :func:`to_rgb`).

    short_side: resize (see :func:`resize_short`) so that the shorter side has that many
    pixels; None keeps the file's size. The EXIF orientation is not applied (a frame of a
    folder keeps its stored size, like the video's other frames).
    Raises VostoolError ("<path>: cannot read image (...)") when the file is missing or unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            rgb = to_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise VostoolError(f"{path}: cannot read image ({exc})") from None
    return resize_short(rgb, short_side, nearest=False)
