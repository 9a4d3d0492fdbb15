"""The search window (vostool.engine.window): objects stay near where they were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_engine import CopyModel

from vostool.engine import Propagator
from vostool.engine.window import MIN_PAD, apply_window, keep_connected, search_window


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


def test_keep_connected_drops_only_parts_away_from_the_previous_mask():
    prev = torch.zeros(3, 40, 60)
    prev[0, 10:20, 10:20] = 0.9               # object 1: a square
    prev[1, 10:20, 40:50] = 0.9               # object 2: a square, about to be split by an occluder
    fg = torch.zeros(4, 1, 40, 60)            # 3 objects and a union row
    fg[0, 0, 11:21, 11:21] = 0.8              # object 1 moved by 1 px ...
    fg[0, 0, 32:36, 50:54] = 0.7              # ... and a stray blob far from it
    fg[1, 0, 10:20, 40:44] = 0.8              # object 2 in two parts, both where it was
    fg[1, 0, 10:20, 47:50] = 0.8
    fg[2, 0, 0:5, 0:5] = 0.9                  # object 3 had no pixel: left alone (it may come back anywhere)
    fg[3, 0] = 0.6                            # the union row: left alone
    reach = 2 / 60                            # grown by 2 px
    out = keep_connected(fg, prev[:3], reach)
    assert torch.equal(out[0, 0, 11:21, 11:21], fg[0, 0, 11:21, 11:21])
    assert out[0, 0, 32:36, 50:54].max() == 0
    assert torch.equal(out[1:], fg[1:])
    assert torch.equal(fg[0, 0, 32:36, 50:54], torch.full((4, 4), 0.7))  # the input is not changed
    near = fg.clone()
    near[0, 0, 32:36, 50:54] = 0
    near[0, 0, 12:16, 8:10] = 0.7             # a blob 1 px left of the object, within reach: kept
    assert torch.equal(keep_connected(near, prev[:3], reach), near)


def _near_look_alike(n=6, h=64, w=96):
    """The moving square of :func:`_frames` and, from frame 2, a look-alike 7 px below it,
    inside the object's search window but not touching it."""
    frames, masks = _frames(n=n, h=h, w=w, distractor_from=n)
    for t in range(2, n):
        frames[t][37:43, 8:14] = 255
    return frames, masks


@pytest.mark.parametrize("connected", [False, True])
def test_a_look_alike_inside_the_window_is_dropped_when_the_model_keeps_objects_connected(connected):
    frames, masks = _near_look_alike()
    model = BrightModel()
    model.window_connected = connected
    prop = Propagator(model, device="cpu", precision="fp32", size=None, threads=1, window=1.0)
    got = [prop.start(frames[0], masks[0]).index] + [prop.step(f).index for f in frames[1:]]
    if connected:
        for g, truth in zip(got, masks):
            assert np.array_equal(g, truth)
    else:
        assert (got[-1][37:43, 8:14] == 1).all()  # the window alone lets it take the id
    off = Propagator(model, device="cpu", precision="fp32", size=None, threads=1, window=0)
    got = [off.start(frames[0], masks[0]).index] + [off.step(f).index for f in frames[1:]]
    assert (got[-1][37:43, 8:14] == 1).all()  # --window 0: neither the box nor the connection


CONNECTED = {"crvos": True, "gam": True, "rgmp": True, "dtn": False, "rvos": True}  # measured (README)


@pytest.mark.parametrize("name", sorted(CONNECTED))
def test_which_models_keep_objects_connected_by_default(name):
    from vostool.models import get_spec
    from vostool.models.base import VOSModel

    assert VOSModel.window_connected is False  # a model that was not measured: off
    assert get_spec(name).cls.window_connected is CONNECTED[name]
