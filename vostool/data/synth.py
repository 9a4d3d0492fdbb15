"""Synthetic clips from still images: transforms and deformed masks, one copy for training and inference.

``vostool train`` (:mod:`vostool.train.data`) builds its synthetic clips (RGMP section 3.2)
from these pieces, and ``--adapt`` (:mod:`vostool.engine.adapt`) builds the clips it
fine-tunes on from the first frame of a video with the same ones:

- :class:`Augment`: the random geometric and colour ranges;
- :func:`affine_matrix`, :func:`warp`: one forward affine transform and its application;
- :func:`random_path`: a smooth random camera path (``T`` affine matrices) around a point;
- :func:`still_clip`: RGMP's strategy 1, one still image moved along such a path (every
  object id kept);
- :func:`deform_mask`: a deformed (shifted, dilated/eroded, with pasted distractor blobs)
  version of a mask, the "previous frame's mask" a propagation network must correct;
- :func:`colour_jitter`, :func:`to_tensors`, :func:`denormalise`: uint8 frames to
  normalised tensors and back.

Everything takes a ``numpy.random.Generator``, so a clip depends only on its seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Augment:
    """Random augmentation of a whole clip (the same geometric transform for every frame).

    Defaults follow CRVOS's fine-tuning (flip, rotation, shear, scale 0.75..1.25) with
    milder rotation/shear than its +-30 degrees.
    """

    flip: bool = True
    rotation: float = 15.0        # degrees, +-
    shear: float = 10.0           # degrees, +-
    scale: tuple[float, float] = (0.75, 1.25)
    brightness: float = 0.2       # factor in 1 +- brightness
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02             # fraction of the hue circle, +-

    @staticmethod
    def none() -> "Augment":
        return Augment(False, 0.0, 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0)


def affine_matrix(
    center: tuple[float, float], out_size: tuple[int, int], scale: float = 1.0, angle: float = 0.0,
    shear: tuple[float, float] = (0.0, 0.0), flip: bool = False, offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """3 x 3 forward matrix (source pixels -> output pixels) that maps the source point
    ``center`` (x, y) to the output centre + ``offset``, scaled, rotated (degrees,
    counter-clockwise), sheared (degrees, x and y) and mirrored."""
    h, w = out_size
    cx, cy = center
    t_src = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], np.float64)
    a = math.radians(angle)
    rot = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    sh = np.array([[1, math.tan(math.radians(shear[0])), 0], [math.tan(math.radians(shear[1])), 1, 0], [0, 0, 1]])
    sc = np.diag([scale, scale, 1.0])
    fl = np.diag([-1.0 if flip else 1.0, 1.0, 1.0])
    t_out = np.array([[1, 0, w / 2 + offset[0]], [0, 1, h / 2 + offset[1]], [0, 0, 1]], np.float64)
    return t_out @ fl @ sc @ rot @ sh @ t_src


def warp(image: np.ndarray, m: np.ndarray, out_size: tuple[int, int], nearest: bool = False,
         border: int = 0, reflect: bool = False) -> np.ndarray:
    """Apply a 3 x 3 forward matrix with OpenCV; output ``out_size`` (H, W). ``reflect``
    fills the outside by mirroring the image (frames), else with ``border`` (masks)."""
    h, w = out_size
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    mode = cv2.BORDER_REFLECT101 if reflect else cv2.BORDER_CONSTANT
    return cv2.warpAffine(image, m[:2].astype(np.float64), (w, h), flags=flags, borderMode=mode, borderValue=border)


def random_path(
    rng: np.random.Generator, aug: Augment, out_size: tuple[int, int], center: tuple[float, float],
    base_scale: float, motion: float, length: int,
) -> list[np.ndarray]:
    """A random smooth path of ``length`` forward matrices around the source point
    ``center``: a random start (scale, rotation, shear, flip, offset from ``aug``) and
    small per-frame drifts of position, angle and zoom scaled by ``motion``."""
    h, w = out_size
    s = base_scale * float(rng.uniform(*aug.scale))
    ang = float(rng.uniform(-aug.rotation, aug.rotation)) if aug.rotation else 0.0
    shr = float(rng.uniform(-aug.shear, aug.shear)) if aug.shear else 0.0
    flip = bool(aug.flip and rng.random() < 0.5)
    off = np.array([rng.uniform(-0.25, 0.25) * w, rng.uniform(-0.25, 0.25) * h]) * motion
    vel = rng.normal(0, 0.04, 2) * np.array([w, h]) * motion
    d_ang, d_s = rng.normal(0, 3.0) * motion, rng.normal(0, 0.03) * motion
    out = []
    for _ in range(length):
        out.append(affine_matrix(center, out_size, s, ang, (shr, 0.0), flip, (float(off[0]), float(off[1]))))
        off = off + vel + rng.normal(0, 0.01, 2) * np.array([w, h]) * motion
        ang += d_ang + rng.normal(0, 1.0) * motion
        s *= float(np.clip(1 + d_s + rng.normal(0, 0.01) * motion, 0.8, 1.25))
    return out


def still_clip(
    image: np.ndarray, ids: np.ndarray, rng: np.random.Generator, aug: Augment, out_size: tuple[int, int],
    length: int, motion: float = 1.0, reflect: bool = False, on_objects: bool = True,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGMP's strategy 1: one still image moved along a :func:`random_path` centred on its
    objects (``on_objects``; else on the image centre, the scene kept in place). image
    ``H x W x 3`` uint8, ids ``H x W`` uint8 object ids (0 background, all kept). Returns
    ``length`` frames ``h x w x 3`` and id masks ``h x w`` at ``out_size``."""
    ys, xs = np.nonzero(ids)
    center = (image.shape[1] / 2, image.shape[0] / 2)
    if on_objects and len(ys):
        center = (float(xs.mean()), float(ys.mean()))
    h, w = out_size
    base = max(h / image.shape[0], w / image.shape[1])
    mats = random_path(rng, aug, out_size, center, base, motion, length)
    images = [warp(image, mt, out_size, border=0, reflect=reflect) for mt in mats]
    masks = [warp(ids, mt, out_size, nearest=True) for mt in mats]
    return images, masks


def deform_mask(mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0,
                distractors: float = 0.0) -> np.ndarray:
    """A plausible wrong "previous mask": ``mask`` (``H x W`` float in [0, 1]) shifted by
    about ``0.15 * strength`` of the object's size, dilated or eroded, and with
    probability ``distractors`` a copy of the object pasted elsewhere and/or a random
    ellipse added (look-alikes the network must reject from the image). Returns
    ``H x W`` float32."""
    h, w = mask.shape
    out = mask.astype(np.float32).copy()
    ys, xs = np.nonzero(mask > 0.5)
    size = max(4.0, math.sqrt(len(ys))) if len(ys) else 8.0
    if strength > 0:
        dx, dy = rng.normal(0, 0.15 * size * strength, 2)
        out = cv2.warpAffine(out, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), flags=cv2.INTER_NEAREST)
        k = int(rng.integers(1, max(2, int(size * strength) // 6)))
        ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        out = cv2.dilate(out, ker) if rng.random() < 0.5 else cv2.erode(out, ker)
    if distractors > 0 and rng.random() < distractors:
        if len(ys):
            dx, dy = rng.uniform(-0.5, 0.5) * w, rng.uniform(-0.5, 0.5) * h
            moved = cv2.warpAffine(mask.astype(np.float32), np.float32([[1, 0, dx], [0, 1, dy]]), (w, h),
                                   flags=cv2.INTER_NEAREST)
            out = np.maximum(out, moved)
        if rng.random() < 0.5:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            axes = (int(rng.uniform(2, max(3, w / 6))), int(rng.uniform(2, max(3, h / 6))))
            cv2.ellipse(out, (int(cx), int(cy)), axes, 0, 0, 360, 1.0, -1)
    return np.ascontiguousarray(out, dtype=np.float32)


_FRAME_HUE = 0.02  # the largest frame-to-frame hue range of colour_jitter (times per_frame)


def colour_jitter(frames: torch.Tensor, rng: np.random.Generator, aug: Augment,
                  per_frame: float = 0.0) -> torch.Tensor:
    """frames ``T x 3 x H x W`` float in [0, 1]; one random jitter for the clip plus an
    optional per-frame variation (``per_frame`` times the clip ranges; for the hue, times
    at most 0.02 of the colour circle)."""
    import torchvision.transforms.v2.functional as TF

    if aug.brightness == aug.contrast == aug.saturation == aug.hue == 0:
        return frames
    t = frames.shape[0]

    def draw(r: float, frame_r: float | None = None) -> np.ndarray:
        base = rng.uniform(-r, r)
        fr = r if frame_r is None else frame_r
        return base + rng.uniform(-fr, fr, size=t) * per_frame

    b, c, s = draw(aug.brightness), draw(aug.contrast), draw(aug.saturation)
    # A large hue range (e.g. 0.5: any hue) shifts the whole clip; from frame to frame the hue
    # varies no more than with the default range, so that an object keeps its colour in a clip.
    hu = draw(aug.hue, min(aug.hue, _FRAME_HUE))
    out = []
    for i in range(t):
        f = frames[i]
        f = TF.adjust_brightness(f, float(max(0.0, 1 + b[i])))
        f = TF.adjust_contrast(f, float(max(0.0, 1 + c[i])))
        f = TF.adjust_saturation(f, float(max(0.0, 1 + s[i])))
        if aug.hue:
            f = TF.adjust_hue(f, float(np.clip(hu[i], -0.5, 0.5)))
        out.append(f)
    return torch.stack(out).clamp_(0, 1)


def to_tensors(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], rng: np.random.Generator,
               aug: Augment, per_frame_colour: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``H x W x 3`` images and ``H x W`` masks -> normalised frames ``T x 3 x H x W``
    float32 (colour-jittered) and int64 masks ``T x H x W``."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
    x = colour_jitter(x, rng, aug, per_frame_colour)
    x = (x - _MEAN) / _STD
    y = torch.from_numpy(np.stack(masks).astype(np.int64))
    return x.contiguous(), y


def denormalise(frames: torch.Tensor) -> torch.Tensor:
    """Normalised ``... x 3 x H x W`` -> uint8 RGB (for looking at clips)."""
    x = frames * _STD.view(3, 1, 1) + _MEAN.view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)
