"""Prompts (boxes, clicks) -> first mask with GrabCut: parsing, ids, checks, and the cut itself."""

from __future__ import annotations

import numpy as np
import pytest

from vostool.errors import VostoolError
from vostool.io.prompts import (
    Box, ObjectPrompt, Prompts, check_prompts, clean_mask, parse_box, parse_point, parse_prompts, prompts_to_mask,
)


def disc_scene(h: int = 120, w: int = 160, seed: int = 0):
    """A coloured disc (r=28 at (70, 60)) and a square on a textured background."""
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 110, (h, w, 3), dtype=np.uint8)  # noisy texture
    yy, xx = np.mgrid[:h, :w]
    img[((yy // 8 + xx // 8) % 2) == 0] //= 2  # checkerboard on top
    disc = (yy - 60) ** 2 + (xx - 70) ** 2 <= 28 ** 2
    img[disc] = (220, 60, 50)
    square = (yy >= 20) & (yy < 50) & (xx >= 115) & (xx < 145)
    img[square] = (60, 200, 230)
    return img, disc, square


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_parse_box_and_point():
    assert parse_box("10,20,30,40") == Box(10, 20, 30, 40, None)
    assert parse_box(" 10.4, 20.6 ,30,40:3") == Box(10, 21, 30, 40, 3)
    p = parse_point("5,6:2", positive=False)
    assert (p.x, p.y, p.positive, p.obj_id) == (5, 6, False, 2)


@pytest.mark.parametrize("text, words", [
    ("10,20,30", "X0,Y0,X1,Y1"), ("a,b,c,d", "X0,Y0,X1,Y1"), ("10,20,10,40", "zero area"),
    ("30,20,10,40", "zero area"), ("1,2,3,4:0", "1..255"), ("1,2,3,4:300", "1..255"), ("1,2,3,4:x", "X0,Y0"),
])
def test_bad_boxes_are_one_line_errors(text, words):
    with pytest.raises(VostoolError, match=words) as exc:
        parse_box(text)
    assert "\n" not in str(exc.value)


def test_ids_automatic_explicit_and_taken():
    p = parse_prompts(["0,0,10,10", "20,20,30,30:1", "40,40,50,50"], taken={2})
    assert [(o.obj_id, o.box.x0) for o in p.objects] == [(1, 20), (3, 0), (4, 40)]
    with pytest.raises(VostoolError, match="already in --mask"):
        parse_prompts(["0,0,10,10:2"], taken={2})
    with pytest.raises(VostoolError, match="two boxes for object 1"):
        parse_prompts(["0,0,10,10:1", "5,5,9,9:1"])


def test_clicks_find_their_object():
    p = parse_prompts(["0,0,50,50", "40,40,100,100"], points=["45,45", "90,90"], neg_points=["5,5"])
    one, two = p.objects
    assert [(q.x, q.y) for q in one.positive] == [(45, 45)]  # smallest box containing it
    assert [(q.x, q.y) for q in two.positive] == [(90, 90)]
    assert [(q.x, q.y) for q in one.negative] == [(5, 5)] and not two.negative
    with pytest.raises(VostoolError, match="X,Y:ID"):
        parse_prompts(["0,0,10,10", "20,20,30,30"], points=["60,60"])
    solo = parse_prompts([], points=["3,4", "5,6"])
    assert solo.object_ids == [1] and solo.objects[0].box is None and len(solo.objects[0].positive) == 2
    with pytest.raises(VostoolError, match="no box or --point for object 5"):
        parse_prompts(["0,0,10,10"], neg_points=["1,1:5"])


def test_outside_the_frame():
    p = parse_prompts(["0,0,170,50"])
    with pytest.raises(VostoolError, match="outside the 160x120 frame"):
        check_prompts(p, 160, 120)
    check_prompts(parse_prompts(["0,0,160,120"]), 160, 120)
    with pytest.raises(VostoolError, match="--point '160,5' is outside"):
        check_prompts(parse_prompts([], points=["160,5"]), 160, 120)


def test_box_makes_the_disc():
    img, disc, _ = disc_scene()
    ids = prompts_to_mask(img, parse_prompts(["38,28,103,93"]))  # the disc's box with a few pixels' margin
    assert ids.dtype == np.uint8 and set(np.unique(ids)) == {0, 1}
    assert iou(ids == 1, disc) > 0.8


def test_two_objects_and_a_click_only_object():
    img, disc, square = disc_scene()
    ids = prompts_to_mask(img, parse_prompts(["40,30,101,91:4", "112,17,148,53:9"]))
    assert iou(ids == 4, disc) > 0.8 and iou(ids == 9, square) > 0.8
    clicks = prompts_to_mask(img, parse_prompts([], points=["70,60", "60,50"]))
    assert iou(clicks == 1, disc) > 0.5  # clicks alone: less said, still the disc


def test_downscaled_cut_and_fallback():
    img, _, _ = disc_scene(240, 320)
    yy, xx = np.mgrid[:240, :320]
    disc2 = (yy - 120) ** 2 + (xx - 140) ** 2 <= 56 ** 2
    img = img.copy()
    img[disc2] = (220, 60, 50)
    ids = prompts_to_mask(img, parse_prompts(["80,60,200,180"]), max_side=120)
    assert ids.shape == (240, 320) and iou(ids == 1, disc2) > 0.8
    flat = np.full((40, 40, 3), 90, np.uint8)  # nothing to cut: the object keeps its box
    ids = prompts_to_mask(flat, Prompts([ObjectPrompt(2, Box(10, 10, 20, 20, 2))]))
    assert (ids == 2).sum() > 0


def test_clean_mask_removes_specks_and_fills_holes():
    m = np.zeros((50, 50), bool)
    m[10:40, 10:40] = True
    m[20:25, 20:25] = False  # hole
    m[45, 45] = True  # speck
    c = clean_mask(m)
    assert c[22, 22] and not c[45, 45] and c[10:40, 10:40].all()
