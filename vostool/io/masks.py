"""Reading first-frame masks in the formats people actually have, and writing PNGs.

All writes are atomic: the image goes to ``<stem>.tmp<suffix>`` in the same folder and
is then renamed over the final name, so an interrupted run never leaves a truncated
PNG behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vostool.data.masks import VOID_ID, decode_mask, without_void
from vostool.errors import VostoolError


def _davis_palette() -> bytes:
    """The Pascal VOC / DAVIS colour map: 256 RGB triplets, 768 bytes."""
    out = bytearray()
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out += bytes((r, g, b))
    return bytes(out)


DAVIS_PALETTE: bytes = _davis_palette()
#: The palette as a 256 x 3 uint8 array.
PALETTE_RGB: np.ndarray = np.frombuffer(DAVIS_PALETTE, np.uint8).reshape(256, 3)
MAX_GREY_IDS = 64  # more distinct grey levels than this looks like a soft mask, not ids
MAX_COLOUR_IDS = 64  # more distinct colours than this looks like anti-aliased edges, not objects
LOSSY_FORMATS = ("JPEG", "MPO")  # formats whose compression invents colours at every edge


@dataclass
class MaskInfo:
    """A parsed object mask.

    ids: H x W uint8 (uint16 if an id is above 255) object ids, 0 = background.
    object_ids: sorted nonzero ids present in ``ids``.
    resized: True if the mask was resized (nearest) to the requested size.
    original_size: (W, H) of the mask file.
    warnings: one-line notes for the user (e.g. id 255 read as void).
    """

    ids: np.ndarray
    object_ids: list[int]
    resized: bool
    original_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)


def palette_color(object_id: int) -> tuple[int, int, int]:
    """DAVIS palette colour of an object id (ids above 255 wrap around, never black)."""
    idx = object_id if object_id < 256 else (object_id - 1) % 255 + 1
    r, g, b = PALETTE_RGB[idx]
    return int(r), int(g), int(b)


def _edge_blends(code: np.ndarray, values: np.ndarray, vec: np.ndarray, tol: float = 3.0) -> int:
    """How many colours of a mask look like anti-aliasing: found only along the edges of
    other colours (no pixel whose 8 neighbours all share its colour) and a mix of two
    colours that do fill areas (background included).

    code: H x W integer colour codes; values: the sorted distinct codes; vec: len(values) x C
    colour components of each code.
    """
    h, w = code.shape
    pad = np.pad(code, 1, mode="edge")
    inner = np.ones(code.shape, bool)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                inner &= pad[dy:dy + h, dx:dx + w] == code
    solid = np.isin(values, np.unique(code[inner])) | (values == 0)
    edge = ~solid
    if not edge.any() or solid.sum() < 2:
        return 0
    a = vec[solid].astype(np.float64)                   # S x C areas' colours
    c = vec[edge].astype(np.float64)                    # E x C edge-only colours
    d = a[None, :, :] - a[:, None, :]                   # S x S x C: b - a
    norm = (d * d).sum(-1)                              # S x S
    rel = c[:, None, :] - a[None, :, :]                 # E x S x C: c - a
    t = np.einsum("esc,sbc->esb", rel, d) / np.maximum(norm, 1e-9)[None]
    off = rel[:, :, None, :] - t[..., None] * d[None]   # E x S x S x C
    dist = np.sqrt((off * off).sum(-1))
    blend = (t > 0) & (t < 1) & (norm[None] > 0) & (dist <= tol)
    return int(blend.any(axis=(1, 2)).sum())


def _refuse_blends(n: int, total: int, path: Path) -> None:
    if n:
        raise VostoolError(
            f"{path}: {n} of the mask's {total} colours appear only along the edges between others, "
            "as mixes of them (anti-aliased or resampled edges?); save it with one flat colour per "
            "object and no smoothing, e.g. as a palette (mode P) PNG with one index per object"
        )


def _grey_ids(arr: np.ndarray, path: Path, eight_bit: bool, warnings: list[str]) -> np.ndarray:
    values = np.unique(arr)
    nonzero = values[values != 0]
    if len(nonzero) == 1:  # binary mask: 0/255, 0/1, ...
        return (arr != 0).astype(np.uint8)
    if arr.dtype == np.uint8 and len(nonzero) > MAX_GREY_IDS:
        raise VostoolError(
            f"{path}: greyscale mask has {len(nonzero)} grey levels (a soft or anti-aliased mask?); "
            "save one id per object, e.g. as a palette PNG, or a binary 0/255 mask"
        )
    if values.max() > 65535 or values.min() < 0:
        raise VostoolError(f"{path}: mask values must be ids in 0..65535")
    if arr.dtype == np.uint8:  # 16-bit masks are machine-made ids, never smoothed
        _refuse_blends(_edge_blends(arr, values, values[:, None]), len(nonzero), path)
    if eight_bit and VOID_ID in nonzero:  # 8-bit id masks follow DAVIS: 255 is void
        arr = np.where(arr == VOID_ID, 0, arr)
        warnings.append(f"{path}: id 255 is void in 8-bit masks (DAVIS) and is read as background; "
                        "number objects 1..254, or use a 16-bit greyscale PNG for more ids")
        values = values[values != VOID_ID]
    return arr.astype(np.uint16 if values.max() > 255 else np.uint8)


def _color_ids(rgb: np.ndarray, opaque: np.ndarray | None, path: Path) -> np.ndarray:
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    if opaque is not None:
        code[~opaque] = 0
    colors, first, inverse = np.unique(code.ravel(), return_index=True, return_inverse=True)
    if np.count_nonzero(colors) > MAX_COLOUR_IDS:
        raise VostoolError(
            f"{path}: mask has {np.count_nonzero(colors)} colours, more than {MAX_COLOUR_IDS} objects "
            "(anti-aliased or resampled edges?); save it with one flat colour per object, e.g. as a "
            "palette (mode P) PNG with one index per object"
        )
    rgb_of = np.stack([(colors >> 16) & 255, (colors >> 8) & 255, colors & 255], 1)
    _refuse_blends(_edge_blends(code, colors, rgb_of), int(np.count_nonzero(colors)), path)
    pal_code = (PALETTE_RGB[:, 0].astype(np.int32) << 16) | (PALETTE_RGB[:, 1].astype(np.int32) << 8)
    pal_code |= PALETTE_RGB[:, 2]
    pal_index = {int(c): i for i, c in enumerate(pal_code)}
    lut = np.zeros(len(colors), np.uint16)
    used = {pal_index[int(c)] for c in colors if int(c) in pal_index}
    free = (i for i in range(1, 65536) if i not in used and i != VOID_ID)  # 255 would read back as void
    for k in np.argsort(first, kind="stable"):  # raster order of first appearance
        c = int(colors[k])
        if c == 0:
            continue
        lut[k] = pal_index[c] if c in pal_index else next(free)
        if lut[k] == VOID_ID and c in pal_index:  # DAVIS void colour: background
            lut[k] = 0
    ids = lut[inverse].reshape(code.shape)
    return ids.astype(np.uint8) if ids.max(initial=0) <= 255 else ids


def read_mask(path: str | Path, size: tuple[int, int] | None = None) -> MaskInfo:
    """Read an object mask image.

    Args:
        path: palette PNG (values are ids, 255 = void = background), greyscale (a single
            non-zero value = one object with id 1, several values = ids; in an 8-bit mask
            255 is void, read as background with a warning; a 16-bit PNG holds ids up to
            65535), or RGB/RGBA (one object per colour, at most 64; DAVIS palette colours
            keep their palette index, other colours get ids 1..N in order of first
            appearance). Lossy formats (JPEG) are refused: their compression turns every
            edge into many colours.
        size: (W, H) wanted; a mask of another resolution but the same aspect ratio
            (within 2%, e.g. a 480p mask for a 1080p video) is resized with nearest
            neighbour; another aspect ratio is an error (the mask is for another video).

    Returns:
        MaskInfo with ``ids`` H x W uint8 (uint16 if an id > 255).

    Raises:
        VostoolError: missing file, not an image, a JPEG, too many colours or grey
            levels, no object, or an aspect ratio that does not match ``size``.
    """
    path = Path(path)
    if not path.is_file():
        raise VostoolError(f"{path}: mask file not found")
    warnings: list[str] = []
    try:
        with Image.open(path) as img:
            if img.format in LOSSY_FORMATS:
                raise VostoolError(
                    f"{path}: JPEG masks are lossy (compression turns every edge into many in-between "
                    "colours, each of which would become an object); save the mask as PNG"
                )
            img.load()
            pixels = decode_mask(img, colour="rgb")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VostoolError(f"{path}: cannot read mask image ({exc})") from None
    if pixels.mode == "P":
        ids = without_void(pixels.ids).astype(np.uint8)
    elif pixels.ids is not None:
        arr = pixels.ids
        if pixels.opaque is not None:  # greyscale+alpha: transparent is background
            arr[~pixels.opaque] = 0
        ids = _grey_ids(arr, path, pixels.mode in ("L", "LA"), warnings)
    else:
        ids = _color_ids(pixels.rgb, pixels.opaque, path)
    original = (ids.shape[1], ids.shape[0])
    resized = size is not None and tuple(size) != original
    if resized:
        want, have = size[0] / size[1], original[0] / original[1]
        if abs(want / have - 1) > 0.02:
            raise VostoolError(f"{path}: mask is {original[0]}x{original[1]} but the video is "
                               f"{size[0]}x{size[1]} (another aspect ratio)")
        ids = cv2.resize(ids, tuple(size), interpolation=cv2.INTER_NEAREST_EXACT)
    object_ids = [int(v) for v in np.unique(ids) if v != 0]
    if not object_ids:
        raise VostoolError(f"{path}: mask has no object (every pixel is background)")
    return MaskInfo(ids, object_ids, bool(resized), original, warnings)


def _save_atomic(img: Image.Image, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix or '.png'}")
    try:
        img.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_index_png(path: str | Path, ids: np.ndarray) -> None:
    """Save H x W object ids as a palette PNG with the DAVIS palette.

    Ids 1..254 give mode P; an id of 255 or more gives a 16-bit greyscale PNG (in a
    palette PNG 255 is DAVIS void, so object 255 would not read back), which
    :func:`read_mask` reads back with the same ids.
    """
    if ids.max(initial=0) >= VOID_ID:
        img = Image.fromarray(np.ascontiguousarray(ids, np.uint16))  # mode I;16
    else:
        ids8 = np.ascontiguousarray(ids, np.uint8)
        img = Image.frombytes("P", (ids8.shape[1], ids8.shape[0]), ids8.tobytes())
        img.putpalette(DAVIS_PALETTE)
    _save_atomic(img, path)


def save_gray_png(path: str | Path, arr: np.ndarray) -> None:
    """Save an H x W uint8 array as an 8-bit greyscale PNG."""
    _save_atomic(Image.fromarray(np.ascontiguousarray(arr, np.uint8)), path)


def _check_rgba(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[2] != 4:
        raise ValueError(f"expected an H x W x 4 array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, np.uint8)


def save_rgba_png(path: str | Path, arr: np.ndarray) -> None:
    """Save an H x W x 4 uint8 RGBA array as a PNG."""
    _save_atomic(Image.fromarray(_check_rgba(arr)), path)
