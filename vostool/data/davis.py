"""DAVIS-layout video sets: where a sequence's frames and masks are, for eval and training.

A DAVIS root has the standard layout::

    JPEGImages/480p/<seq>/<frame>.jpg
    Annotations/480p/<seq>/<frame>.png
    ImageSets/480p/<split>.txt        (DAVIS-2016: one "/JPEGImages/... /Annotations/..." line per frame)
    ImageSets/2016/<split>.txt        (DAVIS-2016 subsets shipped with DAVIS-2017: one name per line)
    ImageSets/2017/<split>.txt        (DAVIS-2017: one sequence name per line)

A converted set may have another resolution folder (``Full-Resolution``) or none
(``JPEGImages/<seq>/``). ``vostool eval`` scores the sequences of a split
(:func:`davis_sequences`) or of a plain folder of ground truth (:func:`folder_sequences`);
``vostool train`` takes the annotated frames of the training sequences of several roots
(:func:`annotated_sequences`). All of them describe a sequence as one :class:`SequenceSpec`.
Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vostool.data.files import list_images, natural_key
from vostool.errors import VostoolError

#: ImageSets sub-folders of a split, by DAVIS year, in the order they are looked for.
IMAGESET_DIRS: dict[int, tuple[str, ...]] = {2016: ("480p", "2016"), 2017: ("2017",)}
#: ImageSets files naming a root's training sequences, in the order they are looked for.
TRAIN_IMAGESETS = ("480p/train.txt", "2017/train.txt", "2016/train.txt", "train.txt")


@dataclass(frozen=True)
class SequenceSpec:
    """One video sequence with ground truth.

    name: sequence name (the sub-folder name in ground truth, frames and results).
    gt_dir: folder of its ground-truth index PNGs (``<frame>.png``).
    frames: the annotated frame names (file stems) in order; in scoring the first and the last
        are not scored but the first one defines the objects.
    image_dir: folder of its RGB frames (None where only masks are known: plain folders).
    """

    name: str
    gt_dir: Path
    frames: tuple[str, ...]
    image_dir: Path | None = None

    def mask_path(self, frame: str) -> Path:
        """The ground-truth PNG of ``frame`` (a stem of ``frames``)."""
        return self.gt_dir / f"{frame}.png"

    def image_files(self) -> list[Path]:
        """Every frame image in ``image_dir`` (annotated or not), in natural order; [] when
        ``image_dir`` is None or not a folder."""
        if self.image_dir is None or not self.image_dir.is_dir():
            return []
        return list_images(self.image_dir)

    def annotated_images(self) -> list[Path]:
        """The image file of each of ``frames``, in order. Raises VostoolError if one is missing."""
        by_stem = {p.stem: p for p in self.image_files()}
        missing = [f for f in self.frames if f not in by_stem]
        if missing:
            raise VostoolError(f"sequence {self.name}: frame {missing[0]} missing in {self.image_dir}")
        return [by_stem[f] for f in self.frames]


# -- ImageSets -----------------------------------------------------------------------------
def parse_imageset(path: Path) -> list[str]:
    """Sequence names of an ImageSets file, in order, each once: one name per line (DAVIS-2017)
    or one "/JPEGImages/480p/<seq>/00000.jpg /Annotations/..." line per frame (DAVIS-2016)."""
    names: list[str] = []
    seen: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        first = line.split()[0]
        if "/" in first:
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


def davis_split_sequences(root: str | os.PathLike[str], year: int, split: str) -> list[str]:
    """Sequence names of a DAVIS split, in the order of its ImageSets file.

    year: 2016 or 2017. For 2016 ``ImageSets/480p/<split>.txt`` (per-frame lines) is read, or
    ``ImageSets/2016/<split>.txt`` (names) as found in a DAVIS-2017 root.
    """
    root = Path(root)
    if year not in IMAGESET_DIRS:
        raise VostoolError(f"unknown DAVIS year {year}; use 2016 or 2017")
    candidates = [root / "ImageSets" / d / f"{split}.txt" for d in IMAGESET_DIRS[year]]
    for path in candidates:
        if path.is_file():
            return parse_imageset(path)
    rel = " or ".join(str(c.relative_to(root)) for c in candidates)
    folder = candidates[0].parent
    found = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
    hint = f" (found: {', '.join(found)})" if found else ""
    raise VostoolError(f"DAVIS-{year} root {root} has no {rel}{hint}")


def train_sequence_names(root: Path) -> list[str]:
    """Training sequences of a DAVIS-layout root: the first of ``ImageSets/`` +
    :data:`TRAIN_IMAGESETS` found, else every folder of its frames (sorted)."""
    for cand in TRAIN_IMAGESETS:
        p = root / "ImageSets" / cand
        if p.is_file():
            return parse_imageset(p)
    img_dir = resolution_dir(root, "JPEGImages")
    return sorted(p.name for p in img_dir.iterdir() if p.is_dir())


def select_sequences(names: list[str], wanted: Sequence[str] | None, where: str) -> list[str]:
    """``names`` restricted to ``wanted`` (all when empty), in the order of ``names``."""
    if not wanted:
        return names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise VostoolError(f"unknown sequence(s) {', '.join(unknown)} in {where}")
    keep = set(wanted)
    return [n for n in names if n in keep]


# -- layout --------------------------------------------------------------------------------
def resolution_dir(root: Path, kind: str, required: bool = True) -> Path:
    """The folder of ``root/kind`` ("JPEGImages", "Annotations") that holds the sequence
    folders: ``480p`` if present; ``kind`` itself when its first sub-folder holds files (a
    converted set without resolutions); else its first sub-folder (another resolution).
    Without one, raises VostoolError (required) or returns ``root/kind/480p``."""
    base = root / kind
    if (base / "480p").is_dir():
        return base / "480p"
    subs = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if subs and all(not any(q.is_dir() for q in s.iterdir()) for s in subs[:1]):
        return base
    if subs:
        return subs[0]
    if not required:
        return base / "480p"
    raise VostoolError(f"{root} is not a DAVIS-layout folder (no {kind}/480p/<sequence>/)")


def list_frames(gt_dir: Path, name: str) -> tuple[str, ...]:
    """Names (stems) of the ground-truth PNGs of one sequence, in natural order; at least 3."""
    if not gt_dir.is_dir():
        raise VostoolError(f"no ground truth for sequence {name}: {gt_dir} is not a folder")
    frames = tuple(sorted((p.stem for p in gt_dir.glob("*.png")), key=natural_key))
    if len(frames) < 3:
        raise VostoolError(
            f"sequence {name} has {len(frames)} ground-truth frame(s) in {gt_dir}; at least 3 are "
            "needed (the first and last frames are not scored)"
        )
    return frames


# -- sequences -----------------------------------------------------------------------------
def davis_sequences(
    root: str | os.PathLike[str],
    year: int,
    split: str = "val",
    sequences: Sequence[str] | None = None,
) -> list[SequenceSpec]:
    """The sequences of a DAVIS split (optionally only ``sequences``), in split order."""
    root = Path(root)
    if not root.is_dir():
        raise VostoolError(f"DAVIS root {root} is not a folder (set --davis-root or DAVIS_ROOT)")
    names = select_sequences(davis_split_sequences(root, year, split), sequences, f"DAVIS-{year} {split}")
    # Scoring saved results needs no frames: a root without JPEGImages still scores.
    ann = resolution_dir(root, "Annotations", required=False)
    img = resolution_dir(root, "JPEGImages", required=False)
    return [SequenceSpec(n, ann / n, list_frames(ann / n, n), img / n) for n in names]


def folder_sequences(
    gt_root: str | os.PathLike[str], sequences: Sequence[str] | None = None
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
    names = select_sequences(names, sequences, str(gt_root))
    return [SequenceSpec(n, gt_root / n, list_frames(gt_root / n, n)) for n in names]


def annotated_sequences(
    roots: Sequence[str | os.PathLike[str]], names: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[SequenceSpec]:
    """Training sequences of several DAVIS-layout roots: each sequence's frames that have both
    an image and a ground-truth PNG (natural order), sequences with fewer than 2 left out.

    names: only these sequences (sorted by name; each must be found in some root); default:
    each root's :func:`train_sequence_names`. exclude: sequences to leave out.
    """
    out: list[SequenceSpec] = []
    wanted = set(names) if names is not None else None
    found: set[str] = set()
    for r in roots:
        root = Path(r)
        if not root.is_dir():
            raise VostoolError(f"data folder {root} not found")
        img_dir = resolution_dir(root, "JPEGImages")
        ann_dir = resolution_dir(root, "Annotations")
        for name in sorted(wanted) if wanted is not None else train_sequence_names(root):
            if name in exclude or not (img_dir / name).is_dir():
                continue
            annotated = {p.stem for p in (ann_dir / name).glob("*.png")}
            frames = tuple(p.stem for p in list_images(img_dir / name) if p.stem in annotated)
            if len(frames) < 2:
                continue
            out.append(SequenceSpec(name, ann_dir / name, frames, img_dir / name))
            found.add(name)
    if wanted is not None:
        missing = sorted(wanted - found)
        if missing:
            raise VostoolError(f"sequence(s) not found in {', '.join(map(str, roots))}: {', '.join(missing)}")
    return out
