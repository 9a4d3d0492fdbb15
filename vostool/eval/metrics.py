"""DAVIS metrics: region similarity J, contour accuracy F and their sequence statistics.

These follow the official DAVIS protocol (``shared/docs/davis-metrics.md``) exactly, edge cases
included, so that every figure matches the official toolkit bit for bit. What differs is speed:
boundary maps and dilations are computed only inside the window that can hold a boundary pixel,
the dilation is OpenCV's, and nothing is converted to float64 images.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import cv2
import numpy as np

#: The official boundary tolerance, as a fraction of the image diagonal.
BOUND_TH = 0.008


def bound_pixels(height: int, width: int, bound_th: float = BOUND_TH) -> float:
    """Radius of the boundary tolerance disk for an H x W image.

    ``bound_th`` itself when it is >= 1 (pixels), else ``ceil(bound_th * sqrt(H^2 + W^2))``:
    8 for 854x480, 12 for 1280x720, 18 for 1920x1080.
    """
    if bound_th >= 1:
        return float(bound_th)
    return float(math.ceil(bound_th * math.hypot(height, width)))


@lru_cache(maxsize=32)
def disk_kernel(radius: float) -> np.ndarray:
    """The ``disk(radius)`` structuring element: uint8, offsets with dx^2 + dy^2 <= r^2.

    Built from ``arange(-r, r + 1)`` like the usual ``disk``, so a non-integer radius gives
    the same (even-sized) element as the official toolkit. Read-only, cached.
    """
    axis = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(axis, axis)
    kernel = ((x**2 + y**2) <= radius**2).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask, by the DAVIS ``seg2bmap`` rule.

    seg: H x W, anything (non-zero is foreground). Returns H x W bool.
    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour
    (outside the image counts as background), except that the last row compares only with
    the east neighbour, the last column only with the south one, and the bottom-right
    pixel is never a boundary. A mask that fills the whole image therefore has no boundary.
    """
    seg = np.asarray(seg).astype(bool, copy=False)
    if seg.ndim != 2:
        raise ValueError(f"boundary_map expects an H x W mask, got shape {seg.shape}")
    b = np.zeros_like(seg)
    if seg.size == 0:
        return b
    # Interior: compare with the east, south and south-east neighbours. Pixels on the last
    # row or column get their own rule below, so only [:-1, :-1] needs the full test.
    core = seg[:-1, :-1]
    b[:-1, :-1] = (core ^ seg[:-1, 1:]) | (core ^ seg[1:, :-1]) | (core ^ seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    b[-1, -1] = False
    return b


def boundary_map_batch(segs: np.ndarray) -> np.ndarray:
    """:func:`boundary_map` of every frame at once. segs: T x H x W. Returns T x H x W bool."""
    segs = np.asarray(segs).astype(bool, copy=False)
    if segs.ndim != 3:
        raise ValueError(f"boundary_map_batch expects T x H x W masks, got shape {segs.shape}")
    b = np.zeros_like(segs)
    if segs.size == 0:
        return b
    core = segs[:, :-1, :-1]
    b[:, :-1, :-1] = (core ^ segs[:, :-1, 1:]) | (core ^ segs[:, 1:, :-1]) | (core ^ segs[:, 1:, 1:])
    b[:, -1, :-1] = segs[:, -1, :-1] ^ segs[:, -1, 1:]
    b[:, :-1, -1] = segs[:, :-1, -1] ^ segs[:, 1:, -1]
    b[:, -1, -1] = False
    return b


def region_similarity(gt: np.ndarray, pred: np.ndarray) -> float:
    """J of one frame: |gt & pred| / |gt | pred|, and 1.0 when both masks are empty.

    gt, pred: H x W (non-zero is foreground).
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    _check_same_shape(gt, pred)
    union = np.count_nonzero(gt | pred)
    if union == 0:
        return 1.0
    return np.count_nonzero(gt & pred) / union


def region_similarity_batch(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J of every frame. gt, pred: T x H x W (non-zero is foreground). Returns T float64."""
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    _check_same_shape(gt, pred)
    if gt.ndim != 3:
        raise ValueError(f"region_similarity_batch expects T x H x W masks, got shape {gt.shape}")
    t = gt.shape[0]
    inter = np.count_nonzero((gt & pred).reshape(t, -1), axis=1)
    union = np.count_nonzero((gt | pred).reshape(t, -1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        j = inter / union
    j[union == 0] = 1.0
    return j.astype(np.float64, copy=False)


def contour_accuracy(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH
) -> float:
    """F of one frame: F-measure of boundary precision/recall within a disk tolerance.

    gt, pred: H x W (non-zero is foreground). The tolerance radius is
    :func:`bound_pixels` of the frame size. Edge cases follow the protocol: no predicted and
    no true boundary gives 1; only one of them empty gives 0.
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    _check_same_shape(gt, pred)
    if gt.ndim != 2:
        raise ValueError(f"contour_accuracy expects H x W masks, got shape {gt.shape}")
    radius = bound_pixels(gt.shape[0], gt.shape[1], bound_th)
    return _contour_accuracy(gt, pred, disk_kernel(radius))


def contour_accuracy_batch(
    gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH
) -> np.ndarray:
    """F of every frame. gt, pred: T x H x W (non-zero is foreground). Returns T float64."""
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    _check_same_shape(gt, pred)
    if gt.ndim != 3:
        raise ValueError(f"contour_accuracy_batch expects T x H x W masks, got shape {gt.shape}")
    kernel = disk_kernel(bound_pixels(gt.shape[1], gt.shape[2], bound_th))
    return np.array([_contour_accuracy(g, p, kernel) for g, p in zip(gt, pred)], np.float64)


def statistics(
    values: np.ndarray, legacy_uint8_decay: bool = False
) -> tuple[float, float, float]:
    """Mean, recall and decay of one object's per-frame values (J or F).

    values: N float (the scored frames, first and last already left out).
    Mean = nanmean(values); recall = nanmean(values > 0.5) (strictly greater; NaN counts as a
    miss); decay = nanmean(first quarter) - nanmean(last quarter), with the quarters cut at
    ``round(linspace(1, N, 5) + 1e-10) - 1`` and inclusive ends (neighbouring quarters share a
    frame). With ``legacy_uint8_decay`` the cut points wrap at 256 like the official toolkit's
    uint8 cast, which makes the decay NaN (or wrong) on sequences of 257+ scored frames.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"statistics expects a 1-D array, got shape {values.shape}")
    n = values.shape[0]
    if n == 0:
        return math.nan, math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
        ids = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
        if legacy_uint8_decay:
            ids = ids % 256
        bins = [values[ids[i] : ids[i + 1] + 1] for i in range(4)]
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


# --------------------------------------------------------------------------------------------
# Internals


def _check_same_shape(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the non-zero pixels of an H x W bool mask."""
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return (y, x, y + h, x + w) if w > 0 and h > 0 else None


def _grow(box: tuple[int, int, int, int], by: int, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    y0, x0, y1, x1 = box
    return max(y0 - by, 0), max(x0 - by, 0), min(y1 + by, shape[0]), min(x1 + by, shape[1])


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _contour_accuracy(gt: np.ndarray, pred: np.ndarray, kernel: np.ndarray) -> float:
    """F of one frame. gt, pred: H x W bool; kernel: the tolerance disk (odd or even size).

    Only windows are processed, with results identical to the full-frame computation:

    * Boundary maps are computed on W, the union of the two masks' bounding boxes grown by one
      pixel (clipped to the image). Outside W both masks and both boundary maps are 0, and a
      side of W that is not an image side lies on an all-zero row/column, where the crop's
      last-row/last-column rule gives 0 just like the full-frame rule.
    * Both dilations are computed on C, the smaller mask's box grown by 1 + r (r = kernel
      radius), clipped to W. Say gt's box is the smaller one (pred's is symmetric): every gt
      boundary pixel lies in B = gt box + 1, so ``dilate(gt_b)`` is 0 outside B + r and, inside
      C, only needs gt_b pixels of B, which C holds; ``dilate(fg_b)`` is only read at gt
      boundary pixels (inside B), whose r-neighbourhoods lie in B + r: the part of it in W is C,
      and fg_b is 0 outside W.
    """
    gt = np.ascontiguousarray(gt)
    pred = np.ascontiguousarray(pred)
    gt_box = _bbox(gt)
    pred_box = _bbox(pred)
    if gt_box is None and pred_box is None:
        return 1.0  # no boundary on either side
    boxes = [b for b in (gt_box, pred_box) if b is not None]
    wy0, wx0, wy1, wx1 = _grow(
        (min(b[0] for b in boxes), min(b[1] for b in boxes),
         max(b[2] for b in boxes), max(b[3] for b in boxes)), 1, gt.shape)
    gt_b = boundary_map(gt[wy0:wy1, wx0:wx1])
    fg_b = boundary_map(pred[wy0:wy1, wx0:wx1])
    n_gt = np.count_nonzero(gt_b)
    n_fg = np.count_nonzero(fg_b)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        assert gt_box is not None and pred_box is not None  # both have boundary pixels
        reach = 1 + (kernel.shape[0] + 1) // 2  # 1 + ceil of the kernel radius, for any size
        small = min(gt_box, pred_box, key=_area)
        cy0, cx0, cy1, cx1 = _grow(small, reach, gt.shape)
        crop = (slice(max(cy0, wy0) - wy0, min(cy1, wy1) - wy0),
                slice(max(cx0, wx0) - wx0, min(cx1, wx1) - wx0))
        gt_c = np.ascontiguousarray(gt_b[crop])
        fg_c = np.ascontiguousarray(fg_b[crop])
        gt_dil = cv2.dilate(gt_c.view(np.uint8), kernel)
        fg_dil = cv2.dilate(fg_c.view(np.uint8), kernel)
        fg_match = np.count_nonzero(fg_c & gt_dil.view(bool))
        gt_match = np.count_nonzero(gt_c & fg_dil.view(bool))
        precision = fg_match / float(n_fg)
        recall = gt_match / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
