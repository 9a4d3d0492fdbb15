#!/usr/bin/env python
"""Starting from a box instead of a mask, measured on the DAVIS-2016 dev split.

For each sequence, the box is the bounding box of the first ground-truth mask. Prints
the first-frame IoU against the true mask of the box itself and of GrabCut's mask
(:func:`vostool.io.prompts.prompts_to_mask`). With ``--jf`` it runs, over each whole
video, ``vostool segment FRAMES --box X0,Y0,X1,Y1 --save-mask made.png`` (GrabCut refined
by the model: the made mask's IoU is printed too) and ``vostool segment FRAMES --mask
TRUE.png``, and scores both with ``vostool eval folders``.

    nice -n 5 python scripts/box_start_eval.py --davis /work/shared/data/DAVIS2016-train --jf

Nothing here is used by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vostool.io.prompts import Box, ObjectPrompt, Prompts, prompts_to_mask

DEV = ["bmx-bumps", "car-turn", "dance-jump", "horsejump-low", "kite-walk"]


def bbox(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return Box(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, 1)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def first_frame(davis: Path, seq: str) -> tuple[np.ndarray, np.ndarray, str]:
    frames = sorted((davis / "JPEGImages/480p" / seq).glob("*.jpg"))
    gt_path = davis / "Annotations/480p" / seq / (frames[0].stem + ".png")
    image = np.array(Image.open(frames[0]).convert("RGB"))
    gt = np.array(Image.open(gt_path)) != 0
    return image, gt, frames[0].stem


def segment(frames: Path, start: list[str], out: Path, size: int | None) -> None:
    cmd = [sys.executable, "-m", "vostool", "segment", str(frames), *start, "--out", str(out),
           "--outputs", "masks", "--quiet", "--skip-done"]  # a rerun with the same --work reuses finished runs
    if size:
        cmd += ["--size", str(size)]
    subprocess.run(cmd, check=True)


def score(gt: Path, pred: Path, seqs: list[str]) -> dict:
    cmd = [sys.executable, "-m", "vostool", "eval", "folders", "--gt", str(gt), "--pred", str(pred), "--binary",
           "--sequences", ",".join(seqs), "--json", "--quiet", "--workers", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--davis", type=Path, default=Path("/work/shared/data/DAVIS2016-train"))
    ap.add_argument("--sequences", default=",".join(DEV))
    ap.add_argument("--model", default=None, help="segment --model (default: vostool's default, crvos)")
    ap.add_argument("--iterations", type=int, default=None, help="GrabCut iterations (default: the module's)")
    ap.add_argument("--no-clean", action="store_true", help="no speck removal / hole filling")
    ap.add_argument("--margin", type=float, default=0.25)
    ap.add_argument("--max-side", type=int, default=None, help="GrabCut's working size (default: the module's)")
    ap.add_argument("--jf", action="store_true", help="also run and score whole videos (slow)")
    ap.add_argument("--size", type=int, default=None, help="segment --size (default: the model's)")
    ap.add_argument("--work", type=Path, default=None, help="folder for masks and results (default: a temp one)")
    args = ap.parse_args()
    seqs = [s for s in args.sequences.split(",") if s]
    kw = {"clean": not args.no_clean, "margin": args.margin}
    if args.max_side is not None:
        kw["max_side"] = args.max_side
    if args.iterations is not None:
        kw["iterations"] = args.iterations

    work = args.work or Path(tempfile.mkdtemp(prefix="box_start_"))
    ious, box_ious = [], []
    boxes: dict[str, Box] = {}
    for seq in seqs:
        image, gt, stem = first_frame(args.davis, seq)
        box = bbox(gt)
        t0 = time.perf_counter()
        made = prompts_to_mask(image, Prompts([ObjectPrompt(1, box)]), **kw) != 0
        dt = time.perf_counter() - t0
        ious.append(iou(made, gt))
        box_iou = iou(np.pad(np.ones((box.y1 - box.y0, box.x1 - box.x0), bool),
                             ((box.y0, gt.shape[0] - box.y1), (box.x0, gt.shape[1] - box.x1))), gt)
        box_ious.append(box_iou)
        print(f"{seq:15s} box {box}  first-frame IoU {ious[-1]:.3f} (box itself {box_iou:.3f})  {dt:.2f} s",
              flush=True)
        boxes[seq] = box
    print(f"mean first-frame IoU over {len(seqs)} sequences: the box itself {np.mean(box_ious):.3f}, "
          f"GrabCut's mask {np.mean(ious):.3f}")
    if not args.jf:
        return
    made_ious = []
    for kind in ("box", "true"):
        pred = work / f"pred-{kind}"
        pred.mkdir(parents=True, exist_ok=True)
        for seq in seqs:
            b = boxes[seq]
            if kind == "box":
                start = ["--box", f"{b.x0},{b.y0},{b.x1},{b.y1}", "--save-mask", str(work / f"made-{seq}.png")]
            else:
                stem = first_frame(args.davis, seq)[2]
                start = ["--mask", str(args.davis / "Annotations/480p" / seq / f"{stem}.png")]
            if args.model:
                start += ["--model", args.model]
            run = work / f"run-{kind}" / seq
            segment(args.davis / "JPEGImages/480p" / seq, start, run, args.size)
            if kind == "box":
                made = np.array(Image.open(work / f"made-{seq}.png")) != 0
                made_ious.append(iou(made, first_frame(args.davis, seq)[1]))
                print(f"{seq:15s} made mask (segment --box) first-frame IoU {made_ious[-1]:.3f}", flush=True)
            link = pred / seq
            if not link.exists():
                os.symlink(run / "masks", link)
        if kind == "box":
            print(f"mean first-frame IoU of the made mask {np.mean(made_ious):.3f}", flush=True)
        res = score(args.davis / "Annotations/480p", pred, seqs)
        g = res["global"]
        per = ", ".join(f"{r['sequence']} {r['J&F-Mean']:.3f}" for r in res["per_sequence"])
        print(f"whole videos from the {'box' if kind == 'box' else 'true mask'}: J&F {g['J&F-Mean']:.3f} "
              f"(J {g['J-Mean']:.3f}, F {g['F-Mean']:.3f}); {per}", flush=True)
    # How soon the two starts agree: IoU between the masks of the run from the box and the
    # run from the true mask, at a few frames (crvos carries only the previous frame's mask).
    for t in (1, 2, 5, 10):
        agree = []
        for seq in seqs:
            a = np.array(Image.open(work / "run-box" / seq / "masks" / f"{t:05d}.png")) != 0
            b = np.array(Image.open(work / "run-true" / seq / "masks" / f"{t:05d}.png")) != 0
            agree.append(iou(a, b))
        print(f"frame {t:2d}: IoU between the runs from the box and from the true mask {np.mean(agree):.3f}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
