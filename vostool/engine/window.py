"""The search window: each object's new mask is kept near where the object was.

Propagation models that read only the previous mask (CRVOS's Clue) can hand an object's id to
a look-alike region far from it (the demo's tree canopies take the ball's id); once there, the
wrong region is fed back and propagates. Box-based trackers (DTN's box propagation, SiamMask)
avoid this by looking only around the previous position. The window applies that prior to any
model: an object's foreground probability is zeroed outside its previous-frame box grown by
``margin`` times the box's longer side on every side (never less than ``MIN_PAD`` of the
frame's longer side), before the objects are merged. An object with no pixel left gets no
window, so that it can come back anywhere (DAVIS's bmx-bumps: the rider, hidden for 15 frames,
reappears away from where he was lost; keeping the last place lowered its J from 0.54 to 0.45).
Measured choices are in the README (``--window``).

A look-alike *inside* the window can still start as a few stray pixels apart from the object
(the demo's tree crowns, a red balloon beside a dancer), be fed back as part of the object and
grow. For models that declare :attr:`~vostool.models.base.VOSModel.window_connected`, the window
therefore also keeps only the parts of an object's new mask that touch where it was: its
previous mask grown by ``MIN_PAD`` of the frame's longer side (:func:`keep_connected`). An
object split in two by an occluder keeps both parts (each overlaps its previous mask); a part
that appears away from it is dropped, and an object with no pixel left is left alone, as above.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

#: the smallest growth of a box on each side, as a fraction of the frame's longer side (small
#: objects move by more than their own size)
MIN_PAD = 0.05


def search_window(prev: torch.Tensor, margin: float) -> torch.Tensor:
    """Windows of objects from their previous-frame probabilities.

    prev: ``K x h x w`` probabilities in [0, 1] (an object's pixels: > 0.5).
    Returns ``K x h x w`` of the same dtype, 1 inside each object's grown box, 0 outside; all
    ones for an object without a pixel.
    """
    k, h, w = prev.shape
    m = prev > 0.5
    rows, cols = m.any(2), m.any(1)                      # K x h, K x w
    present = rows.any(1)                                # K
    y0 = rows.float().argmax(1)
    y1 = h - 1 - rows.flip(1).float().argmax(1)
    x0 = cols.float().argmax(1)
    x1 = w - 1 - cols.flip(1).float().argmax(1)
    side = torch.maximum(y1 - y0 + 1, x1 - x0 + 1).float()
    pad = torch.clamp(margin * side, min=MIN_PAD * max(h, w))
    ys = torch.arange(h, device=prev.device).float()[None]  # 1 x h
    xs = torch.arange(w, device=prev.device).float()[None]
    in_y = (ys >= (y0.float() - pad)[:, None]) & (ys <= (y1.float() + pad)[:, None])  # K x h
    in_x = (xs >= (x0.float() - pad)[:, None]) & (xs <= (x1.float() + pad)[:, None])  # K x w
    window = (in_y[:, :, None] & in_x[:, None, :]) | ~present[:, None, None]
    return window.to(prev.dtype)


def apply_window(fg: torch.Tensor, prev: torch.Tensor, margin: float, union: bool) -> torch.Tensor:
    """Zero each object's foreground outside its window.

    fg: ``R x 1 x h x w`` per-row foreground probabilities (R = K objects, plus their union as a
    last row when ``union``); prev: ``K x h x w`` the previous frame's merged probabilities of
    the K objects. The union row gets the union of the windows. Returns ``R x 1 x h x w``.
    """
    win = search_window(prev.to(fg.dtype), margin)
    if union:
        win = torch.cat([win, win.amax(0, keepdim=True)])
    return fg * win[:, None]


def keep_connected(fg: torch.Tensor, prev: torch.Tensor, reach: float = MIN_PAD) -> torch.Tensor:
    """Drop the parts of each object's new mask that do not touch where it was.

    fg: ``R x 1 x h x w`` per-row foreground probabilities, the first K rows the objects (a
    union row after them is left alone); prev: ``K x h x w`` the previous frame's merged
    probabilities. For each object with previous pixels (> 0.5), the 8-connected regions of its
    new mask (> 0.5) that do not overlap its previous mask grown by ``reach`` x the frame's
    longer side get probability 0. Returns ``R x 1 x h x w`` (``fg`` itself when nothing is
    dropped).
    """
    k, h, w = prev.shape
    r = max(1, round(reach * max(h, w)))
    was = (prev > 0.5).cpu().numpy()
    now = (fg[:k, 0] > 0.5).cpu().numpy()
    out = fg
    for j in range(k):
        if not was[j].any() or not now[j].any():
            continue
        n, labels = cv2.connectedComponents(now[j].view(np.uint8), connectivity=8)
        if n <= 2:  # one region (or none): it is the object
            continue
        # only the previous mask's box grown by r can touch it: look in that crop, not the frame
        ys, xs = np.nonzero(was[j].any(1))[0], np.nonzero(was[j].any(0))[0]
        y0, y1 = max(0, ys[0] - r), min(h, ys[-1] + r + 1)
        x0, x1 = max(0, xs[0] - r), min(w, xs[-1] + r + 1)
        # within r of the previous mask (Euclidean; linear time, unlike a dilation by a disc)
        away = np.ascontiguousarray(~was[j, y0:y1, x0:x1]).view(np.uint8)
        near = cv2.distanceTransform(away, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= r
        keep = np.zeros(n, bool)
        keep[np.unique(labels[y0:y1, x0:x1][near & now[j, y0:y1, x0:x1]])] = True
        keep[0] = True  # the background label
        drop = ~keep[labels]
        if drop.any():
            if out is fg:
                out = fg.clone()
            out[j, 0][torch.from_numpy(drop).to(fg.device)] = 0
    return out
