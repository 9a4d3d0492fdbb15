"""Build a two-object DAVIS-2017-style root from pairs of DAVIS-2016 sequences side by side.

Each frame of ``A+B`` is frame t of A beside frame t of B (both at 480 rows, trimmed to the
shorter sequence); the annotation gives A's object id 1 and B's id 2. This poses two
single-object sequences as one multi-object DAVIS-2017 sequence, so that
``vostool eval davis17 --davis-root OUT --split dev2`` measures how a model keeps two
objects apart (look-alike backgrounds, each object's motion) on sequences it never trained on.

    python scripts/make_side_by_side.py --davis-root ../shared/data/DAVIS2016-train \
        --out data/dev2 --pairs bmx-bumps+car-turn,dance-jump+horsejump-low,kite-walk+bmx-bumps

Nothing it writes is committed: ``data/`` is git-ignored.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from vostool.io.masks import DAVIS_PALETTE


def _frames(root: Path, kind: str, seq: str, ext: str) -> list[Path]:
    return sorted((root / kind / "480p" / seq).glob(f"*.{ext}"))


def _load(path: Path, height: int, mask: bool) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L" if mask else "RGB")
        w = round(im.width * height / im.height)
        im = im.resize((w, height), Image.NEAREST if mask else Image.BILINEAR)
        return np.asarray(im)


def make_pair(root: Path, out: Path, a: str, b: str, height: int = 480) -> str:
    """Write ``a+b`` (frames, annotations) under ``out``; returns the sequence name."""
    name = f"{a}+{b}"
    imgs = [_frames(root, "JPEGImages", s, "jpg") for s in (a, b)]
    anns = [_frames(root, "Annotations", s, "png") for s in (a, b)]
    n = min(len(imgs[0]), len(imgs[1]), len(anns[0]), len(anns[1]))
    (out / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
    (out / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
    for t in range(n):
        rgb = np.concatenate([_load(imgs[0][t], height, False), _load(imgs[1][t], height, False)], 1)
        ma, mb = (_load(anns[k][t], height, True) > 127 for k in (0, 1))
        ids = np.concatenate([ma.astype(np.uint8), mb.astype(np.uint8) * 2], 1)
        Image.fromarray(rgb).save(out / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
        png = Image.fromarray(ids, mode="P")
        png.putpalette(DAVIS_PALETTE)
        png.save(out / "Annotations" / "480p" / name / f"{t:05d}.png")
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--davis-root", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", required=True, help="comma list of A+B")
    ap.add_argument("--split", default="dev2", help="ImageSets/2017/<split>.txt to write")
    args = ap.parse_args()
    names = []
    for pair in args.pairs.split(","):
        a, _, b = pair.partition("+")
        names.append(make_pair(args.davis_root, args.out, a.strip(), b.strip()))
        print(names[-1])
    sets = args.out / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{args.split}.txt").write_text("".join(f"{n}\n" for n in names))


if __name__ == "__main__":
    main()
