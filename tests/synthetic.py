"""Synthetic test data shared by the model and training tests (a plain module, imported as
``from synthetic import ...``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def two_squares_clip(
    n: int = 6, h: int = 60, w: int = 80, start7: tuple[int, int] = (30, 50)
) -> tuple[list[np.ndarray], np.ndarray]:
    """Two moving squares (ids 3 and 7) on a textured background; frames + first mask.

    ``n`` frames of ``h x w x 3`` uint8 on a fixed random background (seed 0). Object 3 is a red
    16 x 16 square whose top-left corner starts at (y, x) = (8, 6) and moves by (+1, +2) a frame;
    object 7 is a green 14 x 14 square starting at ``start7`` = (y, x) and moving by (-1, -2) a
    frame (drawn over object 3). Returns the frames and the ``h x w`` uint8 id mask of frame 0.
    """
    y0, x0 = start7
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    frames, first = [], None
    for t in range(n):
        img = bg.copy()
        mask = np.zeros((h, w), np.uint8)
        y3, x3 = 8 + t, 6 + 2 * t
        y7, x7 = y0 - t, x0 - 2 * t
        img[y3:y3 + 16, x3:x3 + 16] = (220, 40, 40)
        mask[y3:y3 + 16, x3:x3 + 16] = 3
        img[y7:y7 + 14, x7:x7 + 14] = (40, 200, 60)
        mask[y7:y7 + 14, x7:x7 + 14] = 7
        frames.append(img)
        if t == 0:
            first = mask
    return frames, first


def make_davis(
    root: Path,
    seqs: int = 3,
    frames: int = 6,
    h: int = 48,
    w: int = 64,
    palette: bool = False,
    x_step_per_seq: int = 1,
    jpeg_quality: int | None = 95,
) -> Path:
    """A DAVIS-layout tree (``JPEGImages/480p/seqN``, ``Annotations/480p/seqN``) with one moving
    16 x 20 rectangle per sequence; returns ``root``.

    Sequence ``s`` (named ``seq{s}``) has ``frames`` frames on its own random background (one
    generator, seed 1, for the whole tree); in frame ``t`` the rectangle's top-left corner is at
    (y, x) = (10 + t, 12 + 2 t + x_step_per_seq * s) and its colour is (200, 60 + 30 s, 40).
    Frames are JPEG at ``jpeg_quality`` (None: Pillow's default). Masks are 0/255 greyscale PNG,
    or with ``palette`` 0/1 palette PNG.
    """
    save_kw = {} if jpeg_quality is None else {"quality": jpeg_quality}
    rng = np.random.default_rng(1)
    for s in range(seqs):
        name = f"seq{s}"
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        bg = (rng.random((h, w, 3)) * 120).astype(np.uint8)
        for t in range(frames):
            img = bg.copy()
            m = np.zeros((h, w), np.uint8)
            y, x = 10 + t, 12 + 2 * t + x_step_per_seq * s
            m[y:y + 16, x:x + 20] = 1
            img[m > 0] = (200, 60 + 30 * s, 40)
            Image.fromarray(img).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg", **save_kw)
            if palette:
                pm = Image.fromarray(m.astype(np.uint8), mode="P")
                pm.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
                pm.save(root / "Annotations/480p" / name / f"{t:05d}.png")
            else:
                Image.fromarray(m * 255).save(root / "Annotations/480p" / name / f"{t:05d}.png")
    return root


def clip_forward_backward(name: str, backbone: str, size: int):
    """Build model ``name``, run ``forward_clip`` on a random 2 x 3-frame clip of size x size
    and back-propagate its loss; checks shapes and that the loss and every gradient are
    finite. Returns the model so the caller can check which parameters learned."""
    import torch

    from vostool.models import build_model

    torch.manual_seed(0)
    model = build_model(name, backbone=backbone).train()
    frames = torch.randn(2, 3, 3, size, size)
    first = (torch.rand(2, 1, size, size) > 0.5).float()
    logits = model.forward_clip(frames, first)
    assert logits.shape == (2, 2, 2, size, size)
    target = (torch.rand(2, 2, size, size) > 0.5).long()
    loss = model.loss(logits, target)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), pname
    return model


def two_objects_frame(i: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame ``i`` of the CLI tests' clip: a red block moving right, a green one moving left,
    on a flat grey ``height x width`` background (uint8 RGB)."""
    img = np.full((height, width, 3), 30, np.uint8)
    img[8:20, 4 + i : 16 + i] = (220, 40, 40)
    img[28:44, 40 - i : 56 - i] = (40, 200, 60)
    return img


def cli_clip(root: Path, n: int, frame_fn, objects: dict[int, tuple[slice, slice]],
             size: tuple[int, int] = (64, 48)) -> tuple[Path, Path, Path, Path]:
    """What a CLI test needs: an H.264 clip of ``n`` frames drawn by ``frame_fn``, its first mask
    (``objects``: id -> (rows, cols) of frame 0) and a random-weight crvos checkpoint (seed 0,
    inference size 32). Returns ``(root, video, mask png, weights)``."""
    import torch

    from test_io_helpers import make_video
    from vostool.io.masks import save_index_png
    from vostool.models import build_model, save_checkpoint

    video = make_video(root / "clip.mp4", n=n, codec="libx264", frame_fn=frame_fn)
    mask = np.zeros((size[1], size[0]), np.uint8)
    for oid, (rows, cols) in objects.items():
        mask[rows, cols] = oid
    save_index_png(root / "first.png", mask)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return root, video, root / "first.png", weights


def disc_and_square_clip(n: int = 16, h: int = 240, w: int = 432) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The simple two-object clip of issue 12: a red disc (id 1) and a blue square (id 2)
    moving apart over a smooth, softly textured colour gradient; frames and every frame's ids.

    ``n`` frames of ``h x w x 3`` uint8 (the defaults are what the shipped-weights test uses).
    The disc (radius 38) moves right along the top by 5 px a frame, bobbing up and down; the
    square (64 x 64) moves left and down along the bottom by (-4, +1) px a frame. They never
    touch. Returns the frames and ``h x w`` uint8 id masks (0 background).
    """
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tex = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 6)
    tex = tex / tex.std() * 12
    bg = np.stack([60 + 80 * xx / w + tex, 110 + 60 * yy / h + tex, 90 + 50 * (1 - xx / w) + tex], -1)
    frames, masks = [], []
    for t in range(n):
        img, ids = bg.copy(), np.zeros((h, w), np.uint8)
        disc = (xx - (80 + 5 * t)) ** 2 + (yy - (70 + 8 * np.sin(t / 3))) ** 2 < 38 ** 2
        img[disc], ids[disc] = (210, 40, 35), 1
        square = (abs(xx - (350 - 4 * t)) < 32) & (abs(yy - (165 + t)) < 32)
        img[square], ids[square] = (40, 60, 200), 2
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(ids)
    return frames, masks
