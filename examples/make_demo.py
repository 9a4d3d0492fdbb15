"""Render the demo clip ``examples/demo.mp4`` and its first-frame mask ``examples/demo_mask.png``.

A procedurally rendered park (no dataset involved): a striped ball rolling and bouncing
across a lawn and a kite flying across the sky in front of clouds, hills, trees and a
fence, 3 s at 24 fps, 360x640, H.264. The mask is a DAVIS-style palette PNG with id 1 =
ball and id 2 = kite. Run ``python examples/make_demo.py`` to make them again (seeded, so the
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


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], channels: int = 1) -> np.ndarray:
    """H x W x channels noise in [0, 1] with features about H / cells[0] pixels wide."""
    noise = rng.random((cells[0], cells[1], channels)).astype(np.float32)
    out = cv2.resize(noise, (W, H), interpolation=cv2.INTER_CUBIC)
    return np.clip(out.reshape(H, W, channels), 0, 1)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A park: sky with clouds, hills, a lawn with texture, trees and a fence (float, static)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    horizon = 150 + 12 * np.sin(xx / 90) + 8 * np.sin(xx / 37 + 1)
    sky = np.stack([150 + 60 * yy / H, 190 + 40 * yy / H, 245 + 0 * yy], -1)
    clouds = _smooth_noise(rng, (6, 10))
    sky += 70 * np.clip(clouds - 0.55, 0, 1) * 2.5
    hills = np.stack([70 + 0 * yy, 120 + 0 * yy, 90 + 0 * yy], -1) + 40 * (_smooth_noise(rng, (12, 20)) - 0.5)
    grass = np.stack([80 + 0 * yy, 150 + 0 * yy, 60 + 0 * yy], -1)
    grass += 50 * (_smooth_noise(rng, (20, 36)) - 0.5) + 25 * (_smooth_noise(rng, (90, 160)) - 0.5)
    img = np.where((yy < horizon)[..., None], sky, hills)
    img = np.where((yy >= horizon + 25)[..., None], grass, img)
    img = img.astype(np.float32)
    for x0 in (60, 250, 470, 600):  # trees: trunk and a textured canopy
        h0 = int(horizon[0, x0]) + 20
        cv2.rectangle(img, (x0 - 6, h0 - 40), (x0 + 6, h0 + 25), (90, 60, 40), -1)
        canopy = np.zeros((H, W), np.uint8)
        for _ in range(6):
            c = (x0 + int(rng.integers(-30, 30)), h0 - 60 + int(rng.integers(-25, 20)))
            cv2.circle(canopy, c, int(rng.integers(18, 32)), 1, -1, cv2.LINE_AA)
        leaf = np.stack([40 + 0 * yy, 100 + 0 * yy, 45 + 0 * yy], -1) + 40 * (_smooth_noise(rng, (60, 100)) - 0.5)
        img = np.where(canopy[..., None] > 0, leaf, img)
    for x0 in range(0, W, 80):  # fence along the back of the lawn
        cv2.rectangle(img, (x0, 185), (x0 + 6, 215), (200, 190, 170), -1)
    cv2.rectangle(img, (0, 192), (W, 196), (200, 190, 170), -1)
    img = cv2.GaussianBlur(img, (0, 0), 0.8)
    return np.clip(img, 0, 255).astype(np.uint8)


def render(t: float, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame at time t (s): (H x W x 3 uint8 image, H x W uint8 ids)."""
    img = bg.copy()
    ids = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    # Ball: rolls left to right across the lawn with small bounces; its shadow stays on the grass.
    r = 44
    cx = 80 + 420 * t / SECONDS
    cy = 300 - r * 0.2 - 45 * abs(np.sin(np.pi * t * 1.3))
    cv2.ellipse(img, (int(cx), 312), (int(r * 0.9), 9), 0, 0, 360, (50, 80, 35), -1, cv2.LINE_AA)
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    ang = np.arctan2(yy - cy, xx - cx) + 3.0 * t
    stripes = (np.sin(ang * 3) > 0)[..., None]
    ball = np.where(stripes, np.array([220, 40, 40]), np.array([245, 245, 235])).astype(np.float32)
    shade = np.clip(1.15 - 0.45 * np.sqrt((xx - cx + 14) ** 2 + (yy - cy + 14) ** 2) / r, 0.45, 1.1)[..., None]
    img[inside] = np.clip(ball * shade, 0, 255).astype(np.uint8)[inside]
    ids[inside] = 1
    # Kite: a four-panel diamond flying right to left across the sky, swaying.
    kx, ky = 540 - 360 * t / SECONDS, 95 + 25 * np.sin(t * 2.2)
    a = np.deg2rad(15 * np.sin(t * 3))
    pts = np.array([[0, -62], [44, 0], [0, 48], [-44, 0]], np.float32)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
    pts = pts @ rot.T + np.array([kx, ky], np.float32)
    centre = np.array([kx, ky], np.float32)
    kite = np.zeros((H, W), np.uint8)
    colours = [(250, 140, 20), (120, 40, 160), (250, 140, 20), (120, 40, 160)]
    for k in range(4):
        tri = np.stack([centre, pts[k], pts[(k + 1) % 4]]).round().astype(np.int32)
        cv2.fillConvexPoly(img, tri, colours[k], cv2.LINE_AA)
        cv2.fillConvexPoly(kite, tri, 1, cv2.LINE_8)
    cv2.line(img, tuple(pts[0].round().astype(int)), tuple(pts[2].round().astype(int)), (60, 40, 30), 2)
    ids[kite == 1] = 2
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
        print(f"{sys.argv[2]}: ball (id 1) J {res[1]:.3f}, kite (id 2) J {res[2]:.3f}")
        return
    if len(sys.argv) > 1:  # --help or a typo must not overwrite the shipped demo
        print("usage: python examples/make_demo.py            render examples/demo.mp4 and demo_mask.png\n"
              "       python examples/make_demo.py --score DIR  mean IoU of DIR/masks/*.png per object",
              file=sys.stderr)
        sys.exit(0 if sys.argv[1] in ("-h", "--help") else 2)
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
