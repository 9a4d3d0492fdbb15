"""Render the demo clip ``examples/demo.mp4`` and its first-frame mask ``examples/demo_mask.png``.

A procedurally textured scene (no dataset involved): a striped ball bouncing across
the frame and a rotating textured card passing in front of a cluttered background, 3 s
at 24 fps, 360x640, H.264. The mask is a DAVIS-style palette PNG with id 1 = ball and
id 2 = card. Run ``python examples/make_demo.py`` to make them again (seeded, so the
output is the same each time up to the encoder's version).

The scene is rendered, so its ground truth is exact: ``python examples/make_demo.py
--score examples/demo_vos`` scores the index masks that ``vostool segment`` wrote there
(``masks/00000.png`` ...) and prints each object's mean IoU (J) over the frames.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image

from vostool.eval.metrics import region_similarity
from vostool.io.masks import DAVIS_PALETTE

H, W, FPS, SECONDS = 360, 640, 24, 3
HERE = Path(__file__).resolve().parent


def _background(rng: np.random.Generator) -> np.ndarray:
    noise = rng.random((H // 8, W // 8, 3)).astype(np.float32)
    bg = cv2.resize(noise, (W, H), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bg = 0.35 * bg + 0.4 * np.stack([yy / H, 0.6 + 0 * xx, xx / W], -1)
    for _ in range(25):  # clutter: soft blobs and bars
        c = tuple(float(v) for v in rng.random(3))
        x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
        if rng.random() < 0.5:
            cv2.circle(bg, (x, y), int(rng.integers(8, 40)), c, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(bg, (x, y), (x + int(rng.integers(10, 80)), y + int(rng.integers(5, 20))), c, -1)
    return np.clip(cv2.GaussianBlur(bg, (0, 0), 1.5) * 255, 0, 255).astype(np.uint8)


def render(t: float, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame at time t (s): (H x W x 3 uint8 image, H x W uint8 ids)."""
    img = bg.copy()
    ids = np.zeros((H, W), np.uint8)
    # Ball: bounces left to right, with rotating stripes.
    cx = int(90 + 430 * t / SECONDS)
    cy = int(250 - 150 * abs(np.sin(np.pi * t * 1.2)))
    r = 48
    yy, xx = np.mgrid[0:H, 0:W]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    ang = np.arctan2(yy - cy, xx - cx) + 2.5 * t
    stripes = (np.sin(ang * 4) > 0)[..., None]
    ball = np.where(stripes, np.array([230, 60, 40]), np.array([250, 220, 60])).astype(np.uint8)
    shade = np.clip(1.1 - 0.5 * np.sqrt((xx - cx + 15) ** 2 + (yy - cy + 15) ** 2) / r, 0.4, 1.1)[..., None]
    img[inside] = np.clip(ball * shade, 0, 255).astype(np.uint8)[inside]
    ids[inside] = 1
    # Card: a rotating textured rectangle moving right to left, in front of the ball.
    center = (560 - 380 * t / SECONDS, 150 + 40 * np.sin(t * 2))
    box = cv2.boxPoints((center, (150, 95), 20 + 50 * t)).astype(np.int32)
    card = np.zeros((H, W), np.uint8)
    cv2.fillConvexPoly(card, box, 1, cv2.LINE_8)
    check = (((xx // 12) + (yy // 12)) % 2)[..., None]
    tex = np.where(check, np.array([40, 90, 200]), np.array([90, 170, 240])).astype(np.uint8)
    img[card == 1] = tex[card == 1]
    ids[card == 1] = 2
    return img, ids


def score(out_dir: Path) -> dict[int, float]:
    """Mean IoU per object id of ``out_dir/masks/*.png`` against the rendered ground truth."""
    bg = _background(np.random.default_rng(7))
    files = sorted((out_dir / "masks").glob("*.png"))
    if not files:
        raise SystemExit(f"no index masks in {out_dir / 'masks'}")
    ious: dict[int, list[float]] = {1: [], 2: []}
    for i, f in enumerate(files):
        pred = np.array(Image.open(f))
        _, gt = render(i / FPS, bg)
        for k, v in ious.items():
            v.append(region_similarity(gt == k, pred == k))
    return {k: float(np.mean(v)) for k, v in ious.items()}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--score":
        res = score(Path(sys.argv[2]))
        print(f"{sys.argv[2]}: ball (id 1) J {res[1]:.3f}, card (id 2) J {res[2]:.3f}")
        return
    rng = np.random.default_rng(7)
    bg = _background(rng)
    n = FPS * SECONDS
    with av.open(str(HERE / "demo.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "20", "preset": "slow"}
        stream.time_base = Fraction(1, FPS)
        for i in range(n):
            img, ids = render(i / FPS, bg)
            if i == 0:
                m = Image.fromarray(ids, mode="P")
                m.putpalette(DAVIS_PALETTE)
                m.save(HERE / "demo_mask.png")
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    print(f"wrote {HERE / 'demo.mp4'} ({n} frames) and {HERE / 'demo_mask.png'}")


if __name__ == "__main__":
    main()
