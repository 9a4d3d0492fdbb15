"""Where the masks to score live: DAVIS-2016/2017 roots and plain pairs of folders.

A DAVIS root has the standard layout::

    JPEGImages/480p/<seq>/<frame>.jpg
    Annotations/480p/<seq>/<frame>.png
    ImageSets/480p/<split>.txt        (DAVIS-2016: one "/JPEGImages/... /Annotations/..." line per frame)
    ImageSets/2016/<split>.txt        (DAVIS-2016 subsets shipped with DAVIS-2017: one name per line)
    ImageSets/2017/<split>.txt        (DAVIS-2017: one sequence name per line)

Results are index PNGs in ``<results>/<seq>/<frame>.png``, one per ground-truth frame.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vostool.errors import VostoolError

#: PIL modes whose pixel values are object ids ("LA": the grey plane; DAVIS-2016 ships one
#: such annotation, bear/00077.png, with an all-opaque alpha).
INDEX_MODES = frozenset({"P", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L"})

VOID_ID = 255


@dataclass(frozen=True)
class SequenceSpec:
    """One sequence to score.

    name: sequence name (the sub-folder name in ground truth and results).
    gt_dir: folder of its ground-truth index PNGs.
    frames: the ground-truth frame names (file stems) in order; the first and the last are
        not scored but the first one defines the objects.
    image_dir: folder of its RGB frames (DAVIS only; None for plain folders).
    """

    name: str
    gt_dir: Path
    frames: tuple[str, ...]
    image_dir: Path | None = None


def read_index_png(path: str | os.PathLike[str], what: str = "mask") -> np.ndarray:
    """Read an index PNG as its raw pixel values (palette indices, not colours).

    Returns H x W uint8 (uint16/int32 for 16/32-bit PNGs). Greyscale+alpha gives its grey
    plane. Raises VostoolError when the file is missing, unreadable or not an index image
    (RGB, RGBA, ...).
    """
    p = Path(path)
    if not p.is_file():
        raise VostoolError(f"{what} {p} not found")
    try:
        with Image.open(p) as im:
            mode = im.mode
            if mode not in INDEX_MODES:
                raise VostoolError(
                    f"{what} {p} is not an index PNG (mode {mode}); save object ids as a "
                    "palette (P) or greyscale (L) PNG"
                )
            arr = np.array(im.getchannel(0) if mode == "LA" else im)
    except VostoolError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise VostoolError(f"cannot read {what} {p}: {exc}") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise VostoolError(f"{what} {p} is not an index PNG (shape {arr.shape})")
    return arr


def davis_split_sequences(root: str | os.PathLike[str], year: int, split: str) -> list[str]:
    """Sequence names of a DAVIS split, in the order of its ImageSets file.

    year: 2016 or 2017. For 2016 ``ImageSets/480p/<split>.txt`` (per-frame lines) is read, or
    ``ImageSets/2016/<split>.txt`` (names) as found in a DAVIS-2017 root.
    """
    root = Path(root)
    if year == 2016:
        candidates = [
            root / "ImageSets" / "480p" / f"{split}.txt",
            root / "ImageSets" / "2016" / f"{split}.txt",
        ]
    elif year == 2017:
        candidates = [root / "ImageSets" / "2017" / f"{split}.txt"]
    else:
        raise VostoolError(f"unknown DAVIS year {year}; use 2016 or 2017")
    for path in candidates:
        if path.is_file():
            return _parse_imageset(path)
    rel = " or ".join(str(c.relative_to(root)) for c in candidates)
    folder = candidates[0].parent
    found = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
    hint = f" (found: {', '.join(found)})" if found else ""
    raise VostoolError(f"DAVIS-{year} root {root} has no {rel}{hint}")


def _parse_imageset(path: Path) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        if "/" in first:  # "/JPEGImages/480p/<seq>/00000.jpg /Annotations/480p/<seq>/00000.png"
            parts = [p for p in first.split("/") if p]
            if len(parts) < 2:
                raise VostoolError(f"cannot parse line {line!r} of {path}")
            name = parts[-2]
        else:
            name = first
        if name not in seen:
            seen.add(name)
            names.append(name)
    if not names:
        raise VostoolError(f"{path} lists no sequences")
    return names


def _select(names: list[str], wanted: list[str] | None, where: str) -> list[str]:
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise VostoolError(f"unknown sequence(s) {', '.join(unknown)} in {where}")
    keep = set(wanted)
    return [n for n in names if n in keep]


def frame_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders frame names naturally ("2" before "10"); on DAVIS's zero-padded
    names it is the plain (official) order."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name))


def list_frames(gt_dir: Path, name: str) -> tuple[str, ...]:
    """Names (stems) of the ground-truth PNGs of one sequence, in frame order; at least 3."""
    if not gt_dir.is_dir():
        raise VostoolError(f"no ground truth for sequence {name}: {gt_dir} is not a folder")
    frames = tuple(sorted((p.stem for p in gt_dir.glob("*.png")), key=frame_key))
    if len(frames) < 3:
        raise VostoolError(
            f"sequence {name} has {len(frames)} ground-truth frame(s) in {gt_dir}; at least 3 are "
            "needed (the first and last frames are not scored)"
        )
    return frames


def davis_sequences(
    root: str | os.PathLike[str],
    year: int,
    split: str = "val",
    sequences: list[str] | None = None,
) -> list[SequenceSpec]:
    """The sequences of a DAVIS split (optionally only ``sequences``), in split order."""
    root = Path(root)
    if not root.is_dir():
        raise VostoolError(f"DAVIS root {root} is not a folder (set --davis-root or DAVIS_ROOT)")
    names = _select(davis_split_sequences(root, year, split), sequences, f"DAVIS-{year} {split}")
    ann = root / "Annotations" / "480p"
    img = root / "JPEGImages" / "480p"
    return [SequenceSpec(n, ann / n, list_frames(ann / n, n), img / n) for n in names]


def folder_sequences(
    gt_root: str | os.PathLike[str], sequences: list[str] | None = None
) -> list[SequenceSpec]:
    """One sequence per sub-folder of ``gt_root`` (sorted by name) that holds PNGs."""
    gt_root = Path(gt_root)
    if not gt_root.is_dir():
        raise VostoolError(f"ground-truth folder {gt_root} not found")
    names = sorted(p.name for p in gt_root.iterdir() if p.is_dir() and any(p.glob("*.png")))
    if not names:
        raise VostoolError(
            f"no sequences in {gt_root}: expected one sub-folder of index PNGs per video"
        )
    names = _select(names, sequences, str(gt_root))
    return [SequenceSpec(n, gt_root / n, list_frames(gt_root / n, n)) for n in names]
