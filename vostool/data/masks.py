"""Index masks: the one place where a mask image becomes object ids.

:func:`decode_mask` turns an opened PIL image into its raw pixel values: palette indices for
palette PNGs (not colours), grey levels for 8/16-bit greyscale, the grey plane (and where it is
opaque) for greyscale+alpha, and, where the caller accepts them, the pixels of colour images.
Three readers build on it:

- :func:`read_index_mask` with ``binarise_grey=False``: ground truth and results of
  ``vostool eval`` (raw ids, colour images refused);
- :func:`read_index_mask` with ``binarise_grey=True``: ``vostool train``'s masks (0/255 masks
  and soft greyscale masks become one object {0, 1}, colour images are read as grey);
- :func:`vostool.io.masks.read_mask`: the first masks users give ``vostool segment``
  (palettes, anti-aliasing refused, colours to ids, ...).

In 8-bit masks id 255 is DAVIS's "void" (:data:`VOID_ID`); what void means is the caller's
(scoring: background; training: ignored).
Torch-free: numpy and PIL only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from vostool.data.files import resize_short
from vostool.errors import VostoolError

#: DAVIS's "void" (unlabelled) id in palette and 8-bit masks.
VOID_ID = 255

#: PIL modes whose pixel values are object ids ("LA": the grey plane; DAVIS-2016 ships one
#: such annotation, bear/00077.png, with an all-opaque alpha).
INDEX_MODES = frozenset({"P", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L"})


@dataclass(frozen=True)
class MaskPixels:
    """The pixels of a mask image as stored, before any reading of them as objects.

    mode: the PIL mode of the file ("P", "L", "RGB", ...).
    ids: H x W raw values of an index image (:data:`INDEX_MODES`: palette indices or grey
        levels; uint8, uint16 for 16-bit PNGs, int32 for mode "I"), or of a colour image read
        as grey (``colour="grey"``); None for a colour image otherwise.
    rgb: H x W x 3 uint8 of a colour image read with ``colour="rgb"``; else None.
    opaque: H x W bool, False where the alpha is 0 (greyscale+alpha, and colour images read
        with ``colour="rgb"`` that have alpha or a transparent colour); else None.
    """

    mode: str
    ids: np.ndarray | None = None
    rgb: np.ndarray | None = None
    opaque: np.ndarray | None = None


def decode_mask(img: Image.Image, colour: Literal["rgb", "grey"] | None = None) -> MaskPixels:
    """Raw pixel values of an opened mask image (see :class:`MaskPixels`).

    colour: what to do with an image that is not an index image: "rgb" gives its colours
    (and alpha), "grey" its luminance as ``ids`` (PIL's RGB to L conversion), None nothing
    (``ids`` and ``rgb`` are None: the caller refuses it).
    """
    mode = img.mode
    if mode in INDEX_MODES:
        ids = np.array(img.getchannel(0) if mode == "LA" else img)
        if ids.dtype == bool:  # mode "1"
            ids = ids.astype(np.uint8)
        opaque = np.array(img.getchannel("A")) > 0 if mode == "LA" else None
        return MaskPixels(mode, ids=ids, opaque=opaque)
    if colour == "grey":
        return MaskPixels(mode, ids=np.array(img.convert("L")))
    if colour == "rgb":
        has_alpha = "A" in img.getbands() or "transparency" in img.info
        rgba = np.array(img.convert("RGBA" if has_alpha else "RGB"))
        return MaskPixels(mode, rgb=rgba[..., :3], opaque=rgba[..., 3] > 0 if has_alpha else None)
    return MaskPixels(mode)


def without_void(ids: np.ndarray) -> np.ndarray:
    """``ids`` with void (:data:`VOID_ID`) read as background (0); a new array."""
    return np.where(ids == VOID_ID, 0, ids)


def binarised_grey(pixels: MaskPixels) -> np.ndarray:
    """Training's reading of a mask (H x W uint8): palette PNGs give their indices (255 =
    void); other masks are clipped to 8 bits, then a 0/255 mask, or one with grey levels
    beyond 0..31 and 255 (a soft mask), is thresholded at 127 to {0, 1}; small ids stay."""
    assert pixels.ids is not None
    if pixels.mode == "P":
        return pixels.ids.astype(np.uint8)
    arr = np.clip(pixels.ids, 0, 255).astype(np.uint8)  # as PIL's convert("L") does
    vals = set(np.unique(arr).tolist())
    if (max(vals, default=0) > 1 and not vals <= set(range(0, 32)) | {VOID_ID}) or vals <= {0, VOID_ID}:
        arr = (arr > 127).astype(np.uint8)
    return arr


def read_index_mask(
    path: str | os.PathLike[str],
    what: str = "mask",
    *,
    binarise_grey: bool = False,
    short_side: int | None = None,
) -> np.ndarray:
    """Read an index mask as H x W object ids.

    binarise_grey: False (``vostool eval``): the raw pixel values (palette indices, not
    colours), uint8 (uint16/int32 for 16/32-bit PNGs); greyscale+alpha gives its grey plane;
    colour images (RGB, RGBA, ...) are refused. True (``vostool train``): see
    :func:`binarised_grey`, colour images read as their luminance; uint8.
    short_side: resize with nearest neighbour so that the shorter side has that many pixels.
    what: how errors name the file ("ground truth", "result", ...).
    Raises VostoolError when the file is missing, unreadable or (not binarise_grey) not an
    index image.
    """
    p = Path(path)
    if not p.is_file():
        raise VostoolError(f"{what} {p} not found")
    try:
        with Image.open(p) as im:
            pixels = decode_mask(im, "grey" if binarise_grey else None)
    except (OSError, ValueError, SyntaxError) as exc:
        raise VostoolError(f"cannot read {what} {p}: {exc}") from None
    if pixels.ids is None:
        raise VostoolError(
            f"{what} {p} is not an index PNG (mode {pixels.mode}); save object ids as a "
            "palette (P) or greyscale (L) PNG"
        )
    ids = binarised_grey(pixels) if binarise_grey else pixels.ids
    if ids.ndim != 2:
        raise VostoolError(f"{what} {p} is not an index PNG (shape {ids.shape})")
    return resize_short(ids, short_side, nearest=True)
