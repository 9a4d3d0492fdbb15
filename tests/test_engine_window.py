"""The search window (vostool.engine.window): objects stay near where they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import CopyModel

from vostool.engine import Propagator
from vostool.engine.window import MIN_PAD, apply_window, search_window


class BrightModel(CopyModel):
    """An appearance-only model: every bright pixel is the object (a look-alike anywhere in the
    frame takes the object's id unless something stops it)."""

    name = "bright"

    def init_state(self, image, feats, masks):
        return {"n": masks[:, :1, :1, :1]}

    def update(self, image, feats, state, probs):
        return state

    def predict(self, image, feats, state):
        z = torch.where(image[:, :1] > 0, 8.0, -8.0)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _frames(n=6, h=64, w=96, distractor_from=2, object_until=None):
    """A bright 10x10 square moving right 2 px a frame at the left; from ``distractor_from`` a
    bright 10x10 square at the far right (a look-alike); the object gone from ``object_until``."""
    frames, masks = [], []
    for t in range(n):
        img = np.zeros((h, w, 3), np.uint8)
        m = np.zeros((h, w), np.uint8)
        if object_until is None or t < object_until:
            img[20:30, 5 + 2 * t:15 + 2 * t] = 255
            m[20:30, 5 + 2 * t:15 + 2 * t] = 1
        if t >= distractor_from:
            img[40:50, 80:90] = 255
        frames.append(img)
        masks.append(m)
    return frames, masks


def _run(window, **clip):
    frames, masks = _frames(**clip)
    prop = Propagator(BrightModel(), device="cpu", precision="fp32", size=None, threads=1, window=window)
    out = [prop.start(frames[0], masks[0]).index]
    out += [prop.step(f).index for f in frames[1:]]
    return out, masks


def test_window_geometry():
    p = torch.zeros(3, 40, 60)
    p[0, 10:14, 20:28] = 0.9      # 4 x 8 box: grown by 1.0 x 8 on every side
    p[1, 30:31, 5:6] = 0.6        # 1 x 1 box: grown by the floor, MIN_PAD x 60 = 3 px
    win = search_window(p, 1.0)
    ys, xs = torch.nonzero(win[0], as_tuple=True)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (2, 21, 12, 35)
    ys, xs = torch.nonzero(win[1], as_tuple=True)
    pad = int(MIN_PAD * 60)
    assert (ys.min().item(), ys.max().item(), xs.min().item(), xs.max().item()) == (30 - pad, 30 + pad, 5 - pad, 5 + pad)
    assert bool((win[2] == 1).all())  # no pixel: no window
    assert win.dtype == p.dtype


def test_apply_window_gives_the_union_row_the_union_of_windows():
    prev = torch.zeros(2, 20, 20)
    prev[0, 0:2, 0:2] = 1
    prev[1, 17:20, 17:20] = 1
    fg = torch.ones(3, 1, 20, 20)
    out = apply_window(fg, prev, 0.5, union=True)
    assert out[0, 0, 0, 0] == 1 and out[0, 0, 19, 19] == 0
    assert out[1, 0, 19, 19] == 1 and out[1, 0, 0, 0] == 0
    assert out[2, 0, 0, 0] == 1 and out[2, 0, 19, 19] == 1 and out[2, 0, 10, 0] == 0


def test_a_far_look_alike_takes_the_id_without_the_window_and_not_with_it():
    without, masks = _run(window=0)
    assert (without[-1][40:50, 80:90] == 1).all()  # the distractor became the object
    with_window, _ = _run(window=1.0)
    for got, truth in zip(with_window, masks):
        assert np.array_equal(got, truth)  # the object is followed, the look-alike left alone


def test_a_lost_object_can_come_back_anywhere():
    got, masks = _run(window=1.0, distractor_from=5, object_until=3)
    assert np.array_equal(got[2], masks[2])
    assert not (got[3] == 1).any() and not (got[4] == 1).any()  # gone
    assert (got[5][40:50, 80:90] == 1).all()  # no window while lost: found again far away


def test_model_default_and_off_are_what_the_engine_uses():
    model = BrightModel()
    assert Propagator(model, device="cpu", size=None, threads=1).window is None  # VOSModel default: off
    model.search_window = 0.75
    assert Propagator(model, device="cpu", size=None, threads=1).window == 0.75
    assert Propagator(model, device="cpu", size=None, threads=1, window=0).window is None
    assert Propagator(model, device="cpu", size=None, threads=1, window=2).window == 2.0


@pytest.mark.parametrize("window", [None, 0])
def test_window_off_changes_nothing(window):
    a, _ = _run(window=window)
    b, _ = _run(window=0)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
