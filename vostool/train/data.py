"""Training data: clips from DAVIS-layout video sets and synthetic clips from still images.

Both datasets are map-style and deterministic: item ``i`` is drawn with its own
``numpy.random.Generator`` seeded from ``(seed, i)``, so a clip depends only on the seed and
its index (not on the order of calls, the number of workers or a resumed run). Their length
is virtual (``length``): the training loop asks for index ``(iteration * world + rank) *
batch + b``.

Each item is ``(frames, masks)``: frames ``T x 3 x H x W`` float32 normalised with the
ImageNet mean/std, masks ``T x H x W`` int64 in {0, 1} (255 = ignore) for one object, or
object ids 1..K for K objects per sample (``DavisClips(objects=K)``, ``SyntheticClips(
return_ids=True)``: models that decode the objects of a frame jointly, RVOS).

:class:`DavisClips` decodes every frame once, resized so that its shorter side is
``cache_scale`` times the training height, and keeps them in RAM as uint8 (DAVIS-2016 train:
2,079 frames, about 1.3 GB at 240x432 training size); a step then only warps and crops.
:class:`SyntheticClips` follows RGMP section 3.2: strategy 1 moves one still image with
random affine/colour transforms (a static scene seen by a moving camera); strategy 2 pastes
one or more objects over another image's background, moving each on its own path, and
simulates occlusion by pasting the background image's own object (or a random patch) on top.

Files are found and read by the data layer that ``vostool eval`` uses too: the DAVIS layout
(:mod:`vostool.data.davis`), frames (:func:`vostool.data.files.read_frame`) and masks
(:func:`vostool.data.masks.read_index_mask`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from vostool.data.davis import SequenceSpec, annotated_sequences
from vostool.data.davis import train_sequence_names as davis_sequence_names  # noqa: F401
from vostool.data.files import IMAGE_EXTS, is_image_file, read_frame, resize_short  # noqa: F401
from vostool.data.masks import VOID_ID, read_index_mask
from vostool.data.synth import (  # noqa: F401  (re-exported: one copy, shared with --adapt)
    Augment, affine_matrix, colour_jitter, denormalise, random_path, still_clip, to_tensors, warp,
)
from vostool.errors import VostoolError

IGNORE = VOID_ID  # DAVIS's void pixels are left out of the loss


# -- reading (the data layer's readers, as training reads them) -------------------------------
def read_rgb(path: Path, short_side: int | None = None) -> np.ndarray:
    """H x W x 3 uint8 RGB, the shorter side resized to ``short_side`` (area / bilinear)."""
    return read_frame(path, short_side)


def read_ids(path: Path, short_side: int | None = None) -> np.ndarray:
    """Read a mask as object ids (uint8): palette PNGs give their indices (255 = void),
    binary 0/255 greyscale masks give {0, 1} (see :func:`vostool.data.masks.binarised_grey`)."""
    return read_index_mask(path, binarise_grey=True, short_side=short_side)


# -- DAVIS-layout video clips ---------------------------------------------------------------
class DavisClips(torch.utils.data.Dataset):
    """Clips of ``clip_len`` frames from DAVIS-layout roots, one object per clip.

    Frames are taken every ``skip`` frames, ``skip`` random in 1..``max_skip`` (fast
    motion). One random object id of the first frame is the target. The whole clip gets one
    random affine (scale, rotation, shear, flip) and crop to ``size`` and one colour jitter.

    With ``objects`` = K > 1 (models that decode the objects of a frame jointly: RVOS's
    spatial recurrence) each item has K objects, its masks hold ids 1..K (0 background,
    255 ignored): the clip's own object and K - 1 objects of clips of *other* sequences
    (DAVIS-2016 has one object per sequence), each shrunk to 40-80% and moved to a random
    place (one extra affine for the whole clip, so it keeps its own motion) and pasted on
    top with a softened edge. The ids are shuffled, so any object may come first in the
    chain; every object keeps at least half of its frame-0 area visible.

    With ``short_sides = (lo, hi)`` (multi-scale training) each clip first scales its frames
    so that their shorter side is a random length in ``lo..hi`` pixels (uniform), in place
    of ``augment.scale``, and then crops ``size`` from them: the crop (and so the cost of a
    step) stays the same while the objects and textures appear at every pixel scale that
    inference at a short side of ``lo..hi`` shows them. Frames are then cached at ``hi``.
    """

    def __init__(
        self, roots: Sequence[str | Path], size: tuple[int, int] = (240, 432), clip_len: int = 8,
        max_skip: int = 3, exclude: Sequence[str] = (), seed: int = 0, augment: Augment | None = None,
        length: int = 10**9, cache_scale: float = 1.25, sequences: Sequence[str] | None = None,
        objects: int = 1, short_sides: tuple[int, int] | None = None,
    ) -> None:
        self.objects = max(1, int(objects))
        self.size = (int(size[0]), int(size[1]))
        self.clip_len = int(clip_len)
        self.max_skip = max(1, int(max_skip))
        self.seed = int(seed)
        self.augment = augment if augment is not None else Augment()
        self.length = int(length)
        self.short_sides = (int(short_sides[0]), int(short_sides[1])) if short_sides else None
        if self.short_sides and not 0 < self.short_sides[0] <= self.short_sides[1]:
            raise VostoolError(f"multi-scale short sides must satisfy 0 < lo <= hi, got {short_sides}")
        self.short_side = (self.short_sides[1] if self.short_sides
                           else max(self.size[0], round(min(self.size) * cache_scale)))
        self.sequences = annotated_sequences(roots, sequences, exclude)
        if not self.sequences:
            raise VostoolError(f"no training sequences with annotations in {', '.join(map(str, roots))}")
        self._cache: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def __len__(self) -> int:
        return self.length

    @property
    def num_frames(self) -> int:
        return sum(len(s.frames) for s in self.sequences)

    def _load(self, i: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if i not in self._cache:
            s = self.sequences[i]
            imgs = [read_rgb(p, self.short_side) for p in s.annotated_images()]
            masks = [read_ids(s.mask_path(f), self.short_side) for f in s.frames]
            for k, (a, b) in enumerate(zip(imgs, masks)):
                if a.shape[:2] != b.shape:
                    masks[k] = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST)
            self._cache[i] = (imgs, masks)
        return self._cache[i]

    def preload(self) -> None:
        """Decode every sequence now (before forking data-loader workers)."""
        for i in range(len(self.sequences)):
            self._load(i)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng(index)
        for _attempt in range(20):
            item = self._try(rng)
            if item is not None:
                return item
        return self._try(rng, force=True)  # type: ignore[return-value]

    def _try(self, rng: np.random.Generator, force: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
        clip = self._clip(rng, force)
        if clip is None:
            return None
        out_imgs, out_masks, si = clip
        if self.objects > 1:
            composed = self._compose(rng, out_imgs, out_masks, si)
            if composed is None and not force:
                return None
            if composed is not None:
                out_imgs, out_masks = composed
        return to_tensors(out_imgs, out_masks, rng, self.augment, per_frame_colour=0.1)

    def _clip(self, rng: np.random.Generator, force: bool = False, avoid: int | None = None
              ) -> tuple[list[np.ndarray], list[np.ndarray], int] | None:
        """uint8 frames and {0, 1, 255} masks of one object at ``size``, and the sequence index."""
        si = int(rng.integers(len(self.sequences)))
        if avoid is not None and len(self.sequences) > 1 and si == avoid:
            si = (si + 1 + int(rng.integers(len(self.sequences) - 1))) % len(self.sequences)
        imgs, masks = self._load(si)
        n = len(imgs)
        t = self.clip_len
        skip = int(rng.integers(1, self.max_skip + 1))
        skip = max(1, min(skip, (n - 1) // max(1, t - 1)))
        span = (t - 1) * skip + 1
        if span <= n:
            start = int(rng.integers(0, n - span + 1))
            idx = [start + k * skip for k in range(t)]
        else:  # short sequence: hold the last frame
            idx = [min(k, n - 1) for k in range(t)]
        if rng.random() < 0.5:  # play backwards: just as valid a video
            idx = idx[::-1]
        ids = [int(v) for v in np.unique(masks[idx[0]]) if v not in (0, IGNORE)]
        if not ids:
            if not force:
                return None
            ids = [1]
        obj = ids[int(rng.integers(len(ids)))]
        m = self._draw_affine(rng, imgs[idx[0]].shape[:2], masks[idx[0]] == obj)
        out_imgs = [warp(imgs[k], m, self.size) for k in idx]
        out_masks = []
        for k in idx:
            src = masks[k]
            tgt = np.where(src == IGNORE, IGNORE, (src == obj)).astype(np.uint8)
            out_masks.append(warp(tgt, m, self.size, nearest=True))
        first_area = int((out_masks[0] == 1).sum())
        src_area = float((masks[idx[0]] == obj).sum()) * abs(np.linalg.det(m[:2, :2]))
        if not force and (first_area < 16 or first_area < 0.5 * src_area):
            return None
        return out_imgs, out_masks, si

    def _compose(self, rng: np.random.Generator, imgs: list[np.ndarray], masks: list[np.ndarray], si: int
                 ) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        """Paste ``objects - 1`` objects of other sequences' clips over the clip; masks
        become ids 1..K in a random order. None if an object ends up (nearly) hidden."""
        h, w = self.size
        imgs = [im.copy() for im in imgs]
        ids = [m.copy() for m in masks]  # the clip's own object is id 1
        full = [[m == 1 for m in masks]]
        for j in range(2, self.objects + 1):
            other = None
            for _attempt in range(5):
                other = self._clip(rng, avoid=si)
                if other is not None:
                    break
            if other is None:
                return None
            o_imgs, o_masks, _ = other
            ys, xs = np.nonzero(o_masks[0] == 1)
            centre = (float(xs.mean()), float(ys.mean()))
            extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
            s = float(rng.uniform(0.4, 0.8)) * min(1.0, 0.6 * min(h, w) / extent)
            off = (float(rng.uniform(-0.35, 0.35) * w), float(rng.uniform(-0.35, 0.35) * h))
            m = affine_matrix(centre, self.size, s, offset=off)
            obj_full = []
            for t in range(self.clip_len):
                mk = warp((o_masks[t] == 1).astype(np.uint8), m, self.size, nearest=True).astype(bool)
                alpha = cv2.GaussianBlur(mk.astype(np.float32), (5, 5), 0)[..., None]
                obj = warp(o_imgs[t], m, self.size)
                imgs[t] = (imgs[t] * (1 - alpha) + obj * alpha).round().astype(np.uint8)
                ids[t][mk] = j
                obj_full.append(mk)
            full.append(obj_full)
        for k, f in enumerate(full):  # every object stays visible in frame 0
            area = int(f[0].sum())
            if area < 16 or int((ids[0] == k + 1).sum()) < 0.5 * area:
                return None
        perm = np.concatenate([[0], 1 + rng.permutation(self.objects), np.arange(self.objects + 1, 256)])
        perm[IGNORE] = IGNORE
        return imgs, [perm[m].astype(np.uint8) for m in ids]

    def _draw_affine(self, rng: np.random.Generator, src_shape: tuple[int, int], obj: np.ndarray) -> np.ndarray:
        a = self.augment
        h, w = self.size
        sh, sw = src_shape
        if self.short_sides:
            s = float(rng.uniform(*self.short_sides)) / min(sh, sw)
        else:
            s = float(rng.uniform(*a.scale)) * (min(h, w) / min(sh, sw)) * (self.short_side / min(self.size))
        # centre: half the time near the object, else anywhere the window fits
        ys, xs = np.nonzero(obj)
        if len(ys) and rng.random() < 0.5:
            j = int(rng.integers(len(ys)))
            cx, cy = float(xs[j]), float(ys[j])
        else:
            half_w, half_h = w / (2 * s), h / (2 * s)
            cx = float(rng.uniform(half_w, sw - half_w)) if sw > 2 * half_w else sw / 2
            cy = float(rng.uniform(half_h, sh - half_h)) if sh > 2 * half_h else sh / 2
        ang = float(rng.uniform(-a.rotation, a.rotation)) if a.rotation else 0.0
        shr = (float(rng.uniform(-a.shear, a.shear)), 0.0) if a.shear else (0.0, 0.0)
        flip = bool(a.flip and rng.random() < 0.5)
        return affine_matrix((cx, cy), self.size, s, ang, shr, flip)


# -- synthetic clips from still images ---------------------------------------------------------
def find_image_pairs(roots: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of still-image sets: ``<root>/images/*`` with ``<root>/masks/<stem>.png``
    (ECSSD, DUTS and MSRA10K converted to that layout)."""
    pairs: list[tuple[Path, Path]] = []
    for r in roots:
        root = Path(r)
        img_dir, mask_dir = root / "images", root / "masks"
        if not img_dir.is_dir() or not mask_dir.is_dir():
            raise VostoolError(f"{root} is not an image set with masks (expected {root}/images and {root}/masks)")
        masks = {p.stem: p for p in mask_dir.iterdir() if is_image_file(p)}
        # Sorted by name, not naturally: the seed draws images by their index in this list.
        for p in sorted(img_dir.iterdir()):
            if is_image_file(p) and p.stem in masks:
                pairs.append((p, masks[p.stem]))
    if not pairs:
        raise VostoolError(f"no images with masks in {', '.join(map(str, roots))}")
    return pairs


class SyntheticClips(torch.utils.data.Dataset):
    """Synthetic clips of ``clip_len`` frames from still images with masks (RGMP 3.2).

    With probability ``p_paste`` (default 0.5, RGMP's equal split) strategy 2, else 1:

    1. One image moved along a random path of small affine steps (camera motion, zoom,
       rotation) with colour changes.
    2. ``1..max_objects`` objects of other images pasted over a background image, each on
       its own random path; with probability ``p_occlude`` the background image's own
       object (RGMP's occlusion) or a random patch of another image is pasted on top.

    Items are ``(frames, masks)`` like :class:`DavisClips`; with ``return_ids=True`` masks
    hold every pasted object's id (1..K) instead of one binary target.
    """

    def __init__(
        self, roots: Sequence[str | Path] | None = None, size: tuple[int, int] = (240, 432), clip_len: int = 4,
        seed: int = 0, augment: Augment | None = None, length: int = 10**9, p_paste: float = 0.5,
        max_objects: int = 2, p_occlude: float = 0.5, return_ids: bool = False, cache_scale: float = 1.25,
        pairs: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.clip_len = int(clip_len)
        self.seed = int(seed)
        self.augment = augment if augment is not None else Augment()
        self.length = int(length)
        self.p_paste = float(p_paste)
        self.max_objects = max(1, int(max_objects))
        self.p_occlude = float(p_occlude)
        self.return_ids = return_ids
        self.short_side = max(self.size[0], round(min(self.size) * cache_scale))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if pairs is not None:  # in-memory images (tests)
            self.files: list[tuple[Path, Path]] = []
            for i, (img, m) in enumerate(pairs):
                self._cache[i] = (np.ascontiguousarray(img), (np.asarray(m) > 0).astype(np.uint8))
            self.count = len(pairs)
        else:
            if not roots:
                raise VostoolError("synthetic clips need still images with masks (--images)")
            self.files = find_image_pairs(roots)
            self.count = len(self.files)
        if self.count < 2:
            raise VostoolError("synthetic clips need at least 2 images with masks")

    def __len__(self) -> int:
        return self.length

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            ip, mp = self.files[i]
            img = read_rgb(ip, self.short_side)
            m = read_ids(mp)
            m = (m > 0).astype(np.uint8) if m.max(initial=0) <= 1 else (m > 127).astype(np.uint8)
            if m.shape != img.shape[:2]:
                m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
            self._cache[i] = (img, m)
        return self._cache[i]

    def preload(self) -> None:
        for i in range(self.count):
            self._load(i)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index), 7])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.make_clip(index)
        return clip["frames"], clip["masks"]

    # -- generation --------------------------------------------------------------------------
    def _path(self, rng: np.random.Generator, src_shape: tuple[int, int], center: tuple[float, float],
              base_scale: float, motion: float) -> list[np.ndarray]:
        """A random smooth path of ``clip_len`` forward matrices around ``center``."""
        return random_path(rng, self.augment, self.size, center, base_scale, motion, self.clip_len)

    def make_clip(self, index: int) -> dict:
        """One clip with details: ``frames``, ``masks``, ``strategy`` (1 or 2), ``ids``
        (the K objects' binary masks before occlusion, ``K x T x H x W`` uint8, strategy 2),
        ``occluded`` (True when an occluder covers part of an object in some frame)."""
        rng = self.rng(index)
        clip = None
        for _attempt in range(10):
            clip = self._strategy2(rng) if rng.random() < self.p_paste else self._strategy1(rng)
            if clip is not None:
                break
        if clip is None:
            clip = self._strategy1(rng, force=True)
        images, ids = clip["images"], clip["id_masks"]
        k = int(max(m.max() for m in ids))
        if self.return_ids:
            masks = ids
        else:
            present = [int(v) for v in np.unique(ids[0]) if v != 0] or [1]
            target = present[int(rng.integers(len(present)))]
            masks = [(m == target).astype(np.uint8) for m in ids]
        frames, y = to_tensors(images, masks, rng, self.augment, per_frame_colour=0.3)
        return {"frames": frames, "masks": y, "strategy": clip["strategy"], "objects": k,
                "full": clip.get("full"), "occluded": clip.get("occluded", False)}

    def _fit_scale(self, shape: tuple[int, int]) -> float:
        h, w = self.size
        return max(h / shape[0], w / shape[1])

    def _strategy1(self, rng: np.random.Generator, force: bool = False) -> dict | None:
        img, m = self._load(int(rng.integers(self.count)))
        ys, xs = np.nonzero(m)
        if len(ys) == 0 and not force:
            return None
        images, masks = still_clip(img, m, rng, self.augment, self.size, self.clip_len, motion=1.0)
        if not force and masks[0].sum() < 16:
            return None
        return {"images": images, "id_masks": masks, "strategy": 1}

    def _strategy2(self, rng: np.random.Generator) -> dict | None:
        h, w = self.size
        bg_i = int(rng.integers(self.count))
        bg_img, bg_m = self._load(bg_i)
        n_obj = int(rng.integers(1, self.max_objects + 1))
        bg_center = (bg_img.shape[1] / 2, bg_img.shape[0] / 2)
        bg_mats = self._path(rng, bg_img.shape[:2], bg_center, self._fit_scale(bg_img.shape[:2]), motion=0.5)
        frames = [warp(bg_img, mt, self.size) for mt in bg_mats]
        ids = [np.zeros((h, w), np.uint8) for _ in range(self.clip_len)]
        full = np.zeros((n_obj, self.clip_len, h, w), np.uint8)
        for k in range(n_obj):
            oi = int(rng.integers(self.count - 1))
            oi = oi + 1 if oi >= bg_i else oi
            img, m = self._load(oi)
            ys, xs = np.nonzero(m)
            if len(ys) < 16:
                return None
            center = (float(xs.mean()), float(ys.mean()))
            obj_h, obj_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            # object about 20..60% of the shorter output side
            s = float(rng.uniform(0.2, 0.6)) * min(h, w) / max(obj_h, obj_w)
            mats = self._path(rng, img.shape[:2], center, s, motion=1.0)
            soft = cv2.GaussianBlur(m.astype(np.float32), (5, 5), 0)  # soften blending edges
            for t, mt in enumerate(mats):
                alpha = warp(soft, mt, self.size)[..., None]
                obj = warp(img, mt, self.size)
                frames[t] = (frames[t] * (1 - alpha) + obj * alpha).round().astype(np.uint8)
                mk = warp(m, mt, self.size, nearest=True).astype(bool)
                ids[t][mk] = k + 1
                full[k, t] = mk
        occluded = False
        if rng.random() < self.p_occlude:
            # RGMP: the background image's own object occludes the pasted ones; when it has
            # none (or misses them), a random patch of another image crosses the objects.
            occ_frames, occ_masks = self._occluder(rng, bg_img, bg_m, bg_mats, full)
            for t in range(self.clip_len):
                om = occ_masks[t].astype(bool)
                frames[t][om] = occ_frames[t][om]
                ids[t][om] = 0
            occluded = bool(any(((full[:, t] > 0) & occ_masks[t].astype(bool)).any() for t in range(self.clip_len)))
        if (ids[0] > 0).sum() < 16:
            return None
        return {"images": frames, "id_masks": ids, "strategy": 2, "full": full, "occluded": occluded}

    def _occluder(self, rng: np.random.Generator, bg_img: np.ndarray, bg_m: np.ndarray, bg_mats: list[np.ndarray],
                  full: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        h, w = self.size
        if bg_m.any() and rng.random() < 0.5:
            occ = [warp(bg_img, mt, self.size) for mt in bg_mats]
            occ_m = [warp(bg_m, mt, self.size, nearest=True) for mt in bg_mats]
            # the occluder must not hide the target in the first frame
            if not (occ_m[0].astype(bool) & (full[:, 0].sum(0) > 0)).sum() > 0.5 * (full[:, 0].sum(0) > 0).sum():
                return occ, occ_m
        # a random patch (an ellipse textured with another image) crossing the first object
        tex, _ = self._load(int(rng.integers(self.count)))
        tex = cv2.resize(tex, (w, h), interpolation=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(full[0, self.clip_len // 2])
        if len(ys) == 0:
            ys, xs = np.array([h // 2]), np.array([w // 2])
        cy, cx = float(ys.mean()), float(xs.mean())
        ry, rx = float(rng.uniform(0.1, 0.25)) * h, float(rng.uniform(0.1, 0.25)) * w
        # it travels through the object's middle position over the clip
        start = np.array([cx, cy]) + rng.normal(0, 1, 2) * np.array([w, h]) * 0.3
        end = 2 * np.array([cx, cy]) - start
        occ, occ_m = [], []
        for t in range(self.clip_len):
            f = t / max(1, self.clip_len - 1)
            px, py = (1 - f) * start + f * end
            mk = np.zeros((h, w), np.uint8)
            cv2.ellipse(mk, (int(px), int(py)), (int(rx), int(ry)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
            occ.append(tex)
            occ_m.append(mk)
        # keep the first frame's target mostly visible
        first = full[:, 0].sum(0) > 0
        if (occ_m[0].astype(bool) & first).sum() > 0.5 * first.sum():
            occ_m[0] = np.zeros_like(occ_m[0])
        return occ, occ_m


class MixedClips(torch.utils.data.Dataset):
    """Video clips mixed with synthetic clips: item ``i`` comes from ``synthetic`` with
    probability ``p_synthetic`` (drawn from ``(seed, i)``, so deterministic), else from
    ``videos``. With 25 training videos the synthetic clips' thousand still images add
    objects and backgrounds the videos do not have.

    Items are ``(frames, masks)`` as from either dataset (one binary target).
    """

    def __init__(self, videos: DavisClips, synthetic: SyntheticClips, p_synthetic: float = 0.3,
                 seed: int = 0) -> None:
        if not 0.0 <= p_synthetic <= 1.0:
            raise VostoolError(f"--image-ratio must be in [0, 1], got {p_synthetic}")
        self.videos, self.synthetic = videos, synthetic
        self.p_synthetic = float(p_synthetic)
        self.seed = int(seed)

    @property
    def sequences(self) -> list[SequenceSpec]:
        return self.videos.sequences

    @property
    def count(self) -> int:
        return self.synthetic.count

    def __len__(self) -> int:
        return min(len(self.videos), len(self.synthetic))

    def preload(self) -> None:
        self.videos.preload()
        self.synthetic.preload()

    def is_synthetic(self, index: int) -> bool:
        return bool(np.random.default_rng([self.seed, int(index), 11]).random() < self.p_synthetic)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.synthetic if self.is_synthetic(index) else self.videos)[index]
