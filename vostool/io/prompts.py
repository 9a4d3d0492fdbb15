"""Making a first mask from prompts: boxes and clicks (``--box``, ``--point``, ``--neg-point``).

Each object is cut out of the frame by OpenCV's GrabCut (Rother et al., *GrabCut:
interactive foreground extraction using iterated graph cuts*, SIGGRAPH 2004), seeded by
its prompts:

- a box ``X0,Y0,X1,Y1`` (source pixels, ``X1``/``Y1`` exclusive like a slice): outside it
  is background for sure, inside it is probably the object;
- a positive click ``X,Y``: a small disc that is the object for sure (and background for
  sure for the other objects);
- a negative click: a small disc that is background for sure.

An object given by clicks alone (no box) starts from the whole frame as probable
background around its positive clicks. GrabCut runs on a crop around the box (a
local colour model for the background, and faster), on a copy whose shorter side is
at most :data:`MAX_SIDE` pixels; the result is cleaned up (small specks removed, holes
filled) and scaled back. Where objects overlap, the one with the smaller box wins (the
one in front, usually). An object GrabCut finds empty keeps its box (or click discs), so
no prompted object is ever lost.

Everything here is torch-free: numpy and OpenCV only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from vostool.errors import VostoolError

#: GrabCut works on a copy whose shorter side is at most this many pixels.
MAX_SIDE = 360
#: GrabCut iterations.
ITERATIONS = 3

_NUM = r"\s*(-?\d+(?:\.\d*)?)\s*"
_BOX_RE = re.compile(rf"^{_NUM},{_NUM},{_NUM},{_NUM}(?::\s*(\d+)\s*)?$")
_POINT_RE = re.compile(rf"^{_NUM},{_NUM}(?::\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class Box:
    """A box around one object, in source pixels; ``x1``/``y1`` exclusive. ``obj_id``: None = automatic."""

    x0: int
    y0: int
    x1: int
    y1: int
    obj_id: int | None = None

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def contains(self, x: int, y: int) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1

    def __str__(self) -> str:
        return f"{self.x0},{self.y0},{self.x1},{self.y1}" + (f":{self.obj_id}" if self.obj_id else "")


@dataclass(frozen=True)
class Point:
    """A click in source pixels: on the object (``positive``) or on background."""

    x: int
    y: int
    positive: bool = True
    obj_id: int | None = None

    def __str__(self) -> str:
        return f"{self.x},{self.y}" + (f":{self.obj_id}" if self.obj_id else "")


@dataclass
class ObjectPrompt:
    """Everything said about one object: at most one box, and clicks."""

    obj_id: int
    box: Box | None = None
    positive: list[Point] = field(default_factory=list)
    negative: list[Point] = field(default_factory=list)


@dataclass
class Prompts:
    """The prompts of one frame, grouped by object (ids resolved, see :func:`parse_prompts`)."""

    objects: list[ObjectPrompt]

    @property
    def object_ids(self) -> list[int]:
        return [o.obj_id for o in self.objects]

    def __bool__(self) -> bool:
        return bool(self.objects)


def _obj_id(text: str | None, option: str, item: str) -> int | None:
    if text is None:
        return None
    value = int(text)
    if not 1 <= value <= 255:
        raise VostoolError(f"{option} '{item}': object id must be in 1..255")
    return value


def parse_box(text: str) -> Box:
    """Parse ``X0,Y0,X1,Y1[:ID]`` (numbers may be decimal; rounded to pixels).

    Raises:
        VostoolError: malformed text, an id outside 1..255, or zero area.
    """
    m = _BOX_RE.match(text)
    if not m:
        raise VostoolError(f"--box takes X0,Y0,X1,Y1[:ID] in source pixels (e.g. 10,20,200,180:1), got '{text}'")
    x0, y0, x1, y1 = (int(round(float(v))) for v in m.groups()[:4])
    box = Box(x0, y0, x1, y1, _obj_id(m.group(5), "--box", text))
    if x1 <= x0 or y1 <= y0:
        raise VostoolError(f"--box '{text}': zero area (X1 must be > X0 and Y1 > Y0)")
    return box


def parse_point(text: str, positive: bool = True) -> Point:
    """Parse ``X,Y[:ID]`` (numbers may be decimal; rounded to pixels).

    Raises:
        VostoolError: malformed text or an id outside 1..255.
    """
    option = "--point" if positive else "--neg-point"
    m = _POINT_RE.match(text)
    if not m:
        raise VostoolError(f"{option} takes X,Y[:ID] in source pixels (e.g. 120,80:1), got '{text}'")
    x, y = (int(round(float(v))) for v in m.groups()[:2])
    return Point(x, y, positive, _obj_id(m.group(3), option, text))


def parse_prompts(
    boxes: list[str], points: list[str] = (), neg_points: list[str] = (), taken: set[int] | None = None,
) -> Prompts:
    """Parse the command-line prompts of one frame and give every object an id.

    Boxes without ``:ID`` get the smallest free ids in order (free: not given to another
    box and not in ``taken``, the ids of ``--mask``). A click without ``:ID`` belongs to
    the only object, or to the smallest box that contains it; a click with an id no box
    has starts an object of its own (clicks only). A negative click without an id is
    background for every object whose box contains it (every object if none does).

    Args:
        boxes, points, neg_points: the option values (see :func:`parse_box`, :func:`parse_point`).
        taken: object ids already used by the first mask: a prompt id among them is an error.

    Raises:
        VostoolError: malformed text, zero area, two boxes with the same id, an id that
            clashes with ``taken``, or a click whose object cannot be told.
    """
    taken = set(taken or ())
    parsed_boxes = [parse_box(b) for b in boxes]
    pos = [parse_point(p, True) for p in points]
    neg = [parse_point(p, False) for p in neg_points]

    def clash(oid: int, what: str) -> None:
        if oid in taken:
            raise VostoolError(f"{what}: object id {oid} is already in --mask (ids there: "
                               f"{', '.join(map(str, sorted(taken)))}); give another id")

    objects: dict[int, ObjectPrompt] = {}
    for box in parsed_boxes:
        if box.obj_id is not None:
            clash(box.obj_id, f"--box '{box}'")
            if box.obj_id in objects:
                raise VostoolError(f"--box: two boxes for object {box.obj_id}; give one box per object")
            objects[box.obj_id] = ObjectPrompt(box.obj_id, box)
    used = set(objects) | taken | {p.obj_id for p in pos + neg if p.obj_id is not None}
    next_id = 1
    auto: list[ObjectPrompt] = []
    for box in parsed_boxes:
        if box.obj_id is None:
            while next_id in used:
                next_id += 1
            if next_id > 255:
                raise VostoolError("--box: more than 255 objects")
            used.add(next_id)
            auto.append(ObjectPrompt(next_id, box))
    for obj in auto:
        objects[obj.obj_id] = obj

    for p in pos:
        if p.obj_id is not None:
            clash(p.obj_id, f"--point '{p}'")
            objects.setdefault(p.obj_id, ObjectPrompt(p.obj_id)).positive.append(p)
    for p in pos:
        if p.obj_id is None:
            obj = _owner(p, objects, "--point")
            if obj is None:  # no object at all yet: clicks only, a new object
                free = min(set(range(1, 256)) - used)
                used.add(free)
                obj = objects[free] = ObjectPrompt(free)
            obj.positive.append(p)
    for p in neg:
        if p.obj_id is not None:
            if p.obj_id not in objects:
                raise VostoolError(f"--neg-point '{p}': no box or --point for object {p.obj_id}")
            objects[p.obj_id].negative.append(p)
        else:
            inside = [o for o in objects.values() if o.box is not None and o.box.contains(p.x, p.y)]
            for o in inside or list(objects.values()):
                o.negative.append(p)
    if neg and not objects:
        raise VostoolError("--neg-point needs a --box or a --point: it only says where an object is not")
    return Prompts(sorted(objects.values(), key=lambda o: o.obj_id))


def _owner(p: Point, objects: dict[int, ObjectPrompt], option: str) -> ObjectPrompt | None:
    if not objects:
        return None
    if len(objects) == 1:
        return next(iter(objects.values()))
    inside = [o for o in objects.values() if o.box is not None and o.box.contains(p.x, p.y)]
    if not inside:
        raise VostoolError(f"{option} '{p}': several objects and no box around this click; "
                           "say which object it is for with X,Y:ID")
    return min(inside, key=lambda o: o.box.area)


def check_prompts(prompts: Prompts, width: int, height: int) -> None:
    """Check that every box and click lies inside a ``width x height`` frame.

    Raises:
        VostoolError: a box or click outside the frame.
    """
    for obj in prompts.objects:
        b = obj.box
        if b is not None and (b.x0 < 0 or b.y0 < 0 or b.x1 > width or b.y1 > height):
            raise VostoolError(f"--box '{b}' is outside the {width}x{height} frame "
                               f"(X in 0..{width}, Y in 0..{height})")
        for p in obj.positive + obj.negative:
            if not (0 <= p.x < width and 0 <= p.y < height):
                option = "--point" if p.positive else "--neg-point"
                raise VostoolError(f"{option} '{p}' is outside the {width}x{height} frame "
                                   f"(X in 0..{width - 1}, Y in 0..{height - 1})")


# ------------------------------------------------------------------------------ GrabCut


def _disc(mask: np.ndarray, x: float, y: float, r: int, value: int) -> None:
    cv2.circle(mask, (int(round(x)), int(round(y))), r, int(value), thickness=-1)


def clean_mask(mask: np.ndarray, min_fraction: float = 0.05) -> np.ndarray:
    """Remove specks and fill holes of a binary mask.

    Connected parts smaller than ``min_fraction`` of the largest are dropped; holes (
    background not connected to the border of the mask) are filled.

    Args:
        mask: ``H x W`` bool or uint8 (non-zero = object).

    Returns:
        ``H x W`` bool.
    """
    m = (mask != 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = np.zeros(n, bool)
        keep[1:] = areas >= min_fraction * areas.max()
        m = keep[labels].astype(np.uint8)
    # holes: background components that do not touch the border
    inv = (m == 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inv, connectivity=4)
    if n > 1:
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        hole = np.ones(n, bool)
        hole[0] = False
        hole[border] = False
        m[hole[labels]] = 1
    return m.astype(bool)


def _grabcut_object(
    image: np.ndarray, obj: ObjectPrompt, others: list[ObjectPrompt], scale: float, iterations: int,
    margin: float, clean: bool,
) -> np.ndarray:
    """One object's mask on the (scaled) image: ``h x w`` bool."""
    h, w = image.shape[:2]
    r = max(2, round(min(h, w) * 0.01))
    if obj.box is not None:
        b = obj.box
        bx0, by0 = b.x0 * scale, b.y0 * scale
        bx1, by1 = b.x1 * scale, b.y1 * scale
        mx, my = margin * (bx1 - bx0) + r, margin * (by1 - by0) + r
        cx0, cy0 = max(0, int(bx0 - mx)), max(0, int(by0 - my))
        cx1, cy1 = min(w, int(np.ceil(bx1 + mx))), min(h, int(np.ceil(by1 + my)))
    else:
        cx0, cy0, cx1, cy1 = 0, 0, w, h
    crop = np.ascontiguousarray(image[cy0:cy1, cx0:cx1, ::-1])  # BGR, as OpenCV expects
    ch, cw = crop.shape[:2]
    gc = np.full((ch, cw), cv2.GC_PR_BGD if obj.box is None else cv2.GC_BGD, np.uint8)
    if obj.box is not None:
        ix0, iy0 = int(round(bx0 - cx0)), int(round(by0 - cy0))
        ix1, iy1 = max(ix0 + 1, int(round(bx1 - cx0))), max(iy0 + 1, int(round(by1 - cy0)))
        gc[iy0:iy1, ix0:ix1] = cv2.GC_PR_FGD
    for other in others:
        for p in other.positive:
            _disc(gc, p.x * scale - cx0, p.y * scale - cy0, r, cv2.GC_BGD)
    for p in obj.negative:
        _disc(gc, p.x * scale - cx0, p.y * scale - cy0, r, cv2.GC_BGD)
    if obj.box is None:  # clicks only: probably the object around each click
        for p in obj.positive:
            _disc(gc, p.x * scale - cx0, p.y * scale - cy0, 4 * r, cv2.GC_PR_FGD)
    for p in obj.positive:
        _disc(gc, p.x * scale - cx0, p.y * scale - cy0, r, cv2.GC_FGD)
    seeds = gc.copy()
    fg_any = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD)).any()
    bg_any = np.isin(gc, (cv2.GC_BGD, cv2.GC_PR_BGD)).any()
    if fg_any and bg_any and iterations > 0:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global RNG: same prompts, same mask
        try:
            cv2.grabCut(crop, gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # degenerate colour statistics: keep the seeds
            gc = seeds
    cut = np.isin(gc, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if clean and cut.any():
        cut = clean_mask(cut) | (seeds == cv2.GC_FGD)
    if not cut.any():  # never lose a prompted object: fall back to its seeds
        cut = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD))
    out = np.zeros((h, w), bool)
    out[cy0:cy1, cx0:cx1] = cut
    return out


def prompts_to_mask(
    image: np.ndarray, prompts: Prompts, iterations: int = ITERATIONS, max_side: int | None = MAX_SIDE,
    margin: float = 0.25, clean: bool = True,
) -> np.ndarray:
    """Make an object-id mask from prompts with GrabCut (see the module docstring).

    Args:
        image: ``H x W x 3`` uint8 RGB, the frame the prompts are about.
        prompts: parsed and checked prompts (:func:`parse_prompts`, :func:`check_prompts`).
        iterations: GrabCut iterations (0: the box itself, no cut).
        max_side: GrabCut runs on a copy whose shorter side is at most this (None: full size).
        margin: background context around each box, as a fraction of its size.
        clean: remove specks and fill holes.

    Returns:
        ``H x W`` uint8 object ids (0 = background), every prompted object present.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise VostoolError(f"prompts need an H x W x 3 image, got shape {image.shape}")
    H, W = image.shape[:2]
    check_prompts(prompts, W, H)
    scale = 1.0
    if max_side is not None and min(H, W) > max_side:
        scale = max_side / min(H, W)
    small = image if scale == 1.0 else cv2.resize(
        image, (max(1, round(W * scale)), max(1, round(H * scale))), interpolation=cv2.INTER_AREA)
    ids = np.zeros((H, W), np.uint8)
    # bigger boxes first, so that smaller (front) objects are painted over them
    order = sorted(prompts.objects, key=lambda o: -(o.box.area if o.box is not None else W * H))
    for obj in order:
        others = [o for o in prompts.objects if o is not obj]
        m = _grabcut_object(np.ascontiguousarray(small), obj, others, scale, iterations, margin, clean)
        if scale != 1.0:
            m = cv2.resize(m.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5
        ids[m] = obj.obj_id
    for obj in prompts.objects:  # every object keeps at least its clicks
        if not (ids == obj.obj_id).any():
            if obj.box is not None:
                b = obj.box
                region = ids[b.y0:b.y1, b.x0:b.x1]
                region[region == 0] = obj.obj_id
            for p in obj.positive:
                ids[p.y, p.x] = obj.obj_id
    return ids
