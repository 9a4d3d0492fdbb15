from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vostool.errors import VostoolError
from vostool.io import DAVIS_PALETTE, PALETTE_RGB, read_mask, save_gray_png, save_index_png, save_rgba_png


def _palette_png(path, ids: np.ndarray) -> None:
    img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    img.putpalette(DAVIS_PALETTE)
    img.save(path)


def _two_objects(value_a=3, value_b=7, dtype=np.uint8) -> np.ndarray:
    ids = np.zeros((20, 30), dtype)
    ids[2:8, 3:10] = value_a
    ids[10:18, 15:28] = value_b
    return ids


def test_davis_palette():
    assert len(DAVIS_PALETTE) == 768
    assert PALETTE_RGB[:5].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128]]
    assert PALETTE_RGB[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in PALETTE_RGB}) == 256


def test_palette_png_keeps_non_contiguous_ids_and_void(tmp_path):
    ids = _two_objects(3, 7)
    ids[0, :] = 255  # DAVIS void
    _palette_png(tmp_path / "m.png", ids)
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [3, 7]
    assert info.ids.dtype == np.uint8 and not info.resized and info.original_size == (30, 20)
    expected = ids.copy()
    expected[expected == 255] = 0
    np.testing.assert_array_equal(info.ids, expected)


@pytest.mark.parametrize("value", [255, 1])
def test_binary_greyscale_is_one_object(tmp_path, value):
    ids = _two_objects(value, value)
    Image.fromarray(ids).save(tmp_path / "m.png")
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [1]
    np.testing.assert_array_equal(info.ids, (ids > 0).astype(np.uint8))


def test_mode_1_binary(tmp_path):
    Image.fromarray(_two_objects(255, 255)).convert("1").save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").object_ids == [1]


def test_greyscale_index_mask_and_16_bit(tmp_path):
    Image.fromarray(_two_objects(2, 5)).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").object_ids == [2, 5]
    Image.fromarray(_two_objects(4, 300, np.uint16)).save(tmp_path / "m16.png")
    info = read_mask(tmp_path / "m16.png")
    assert info.object_ids == [4, 300] and info.ids.dtype == np.uint16


def test_soft_greyscale_mask_is_rejected(tmp_path):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    Image.fromarray(ramp).save(tmp_path / "soft.png")
    with pytest.raises(VostoolError, match="grey levels"):
        read_mask(tmp_path / "soft.png")


def test_rgb_colours_in_order_of_appearance(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[10:18, 15:28] = (10, 200, 30)  # appears second in raster order
    rgb[2:8, 3:10] = (250, 20, 240)  # appears first
    Image.fromarray(rgb).save(tmp_path / "m.png")
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [1, 2]
    assert info.ids[3, 4] == 1 and info.ids[12, 20] == 2 and info.ids[0, 0] == 0


def test_rgb_davis_colours_get_palette_ids(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:8, 3:10] = (1, 2, 3)  # not a palette colour: first free id, 2
    rgb[10:18, 15:28] = PALETTE_RGB[1]  # (128, 0, 0) -> id 1
    rgb[18:20, :] = PALETTE_RGB[7]
    Image.fromarray(rgb).save(tmp_path / "m.png")
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [1, 2, 7]
    assert info.ids[12, 20] == 1 and info.ids[3, 4] == 2 and info.ids[19, 0] == 7


def test_rgba_transparent_is_background(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[5:10, 5:10, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "m.png")
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [1] and info.ids.sum() == 25


def test_anti_aliased_rgb_is_rejected(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(VostoolError, match="palette"):
        read_mask(tmp_path / "m.png")


def test_resize_nearest(tmp_path):
    ids = np.zeros((10, 20), np.uint8)
    ids[:, 10:] = 3
    ids[:5, :10] = 7
    _palette_png(tmp_path / "m.png", ids)
    info = read_mask(tmp_path / "m.png", size=(40, 20))
    assert info.resized and info.original_size == (20, 10) and info.ids.shape == (20, 40)
    assert set(np.unique(info.ids)) == {0, 3, 7}  # nearest: no new values
    np.testing.assert_array_equal(info.ids, np.kron(ids, np.ones((2, 2), np.uint8)))
    assert not read_mask(tmp_path / "m.png", size=(20, 10)).resized


def test_errors(tmp_path):
    with pytest.raises(VostoolError, match="not found"):
        read_mask(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    with pytest.raises(VostoolError, match="cannot read mask"):
        read_mask(tmp_path / "bad.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(VostoolError, match="no object"):
        read_mask(tmp_path / "empty.png")


def test_save_round_trips_and_atomic(tmp_path):
    ids = _two_objects(3, 7)
    save_index_png(tmp_path / "a" / "m.png", ids)
    with Image.open(tmp_path / "a" / "m.png") as img:
        assert img.mode == "P" and bytes(img.getpalette()[:768]) == DAVIS_PALETTE
        np.testing.assert_array_equal(np.array(img), ids)
    big = _two_objects(3, 700, np.uint16)
    save_index_png(tmp_path / "big.png", big)
    np.testing.assert_array_equal(read_mask(tmp_path / "big.png").ids, big)
    grey = np.arange(200, dtype=np.uint8).reshape(10, 20)
    save_gray_png(tmp_path / "g.png", grey)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "g.png")), grey)
    rgba = np.random.default_rng(0).integers(0, 256, (6, 7, 4), dtype=np.uint8)
    save_rgba_png(tmp_path / "c.png", rgba)
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "c.png")), rgba)
    assert not list(tmp_path.rglob("*.tmp*"))


# -- lossy and anti-aliased masks (issue 15, item 3) --------------------------------------------

def _two_colour_rgb() -> np.ndarray:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[8:20, 4:16] = (128, 0, 0)
    rgb[28:44, 40:56] = (0, 128, 0)
    return rgb


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_mask_is_refused_with_reason(tmp_path, mode):
    img = Image.fromarray(_two_colour_rgb())
    img = img.convert("L") if mode == "L" else img
    img.save(tmp_path / "m.jpg", quality=90)
    # the JPEG really holds many in-between values: read naively it would be dozens of objects
    assert len(np.unique(np.array(Image.open(tmp_path / "m.jpg")).reshape(-1, 1 if mode == "L" else 3),
                         axis=0)) > 10
    with pytest.raises(VostoolError, match="JPEG masks are lossy.*save the mask as PNG"):
        read_mask(tmp_path / "m.jpg")
    # the extension does not matter: the content is JPEG
    (tmp_path / "m.png").write_bytes((tmp_path / "m.jpg").read_bytes())
    with pytest.raises(VostoolError, match="JPEG"):
        read_mask(tmp_path / "m.png")


def test_blurred_rgb_png_is_refused_but_few_colours_pass(tmp_path):
    import cv2

    rgb = _two_colour_rgb()
    # blurred: 50-odd colours, each a mix of its neighbours, found only along the edges
    Image.fromarray(cv2.GaussianBlur(rgb, (7, 7), 2)).save(tmp_path / "soft.png")
    with pytest.raises(VostoolError, match=r"only along the edges between others.*one flat colour"):
        read_mask(tmp_path / "soft.png")
    # upscaled with bilinear filtering: only a few in-between colours, still refused
    Image.fromarray(rgb).resize((96, 72), Image.BILINEAR).save(tmp_path / "resampled.png")
    with pytest.raises(VostoolError, match="anti-aliased"):
        read_mask(tmp_path / "resampled.png")
    # greyscale 0/255 mask with smoothed edges: not one object plus stray ids
    grey = (np.any(rgb > 0, axis=2) * 255).astype(np.uint8)
    Image.fromarray(cv2.GaussianBlur(grey, (3, 3), 0.8)).save(tmp_path / "grey.png")
    with pytest.raises(VostoolError, match="only along the edges"):
        read_mask(tmp_path / "grey.png")
    # more than 64 colours at all
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    with pytest.raises(VostoolError, match="more than 64 objects"):
        read_mask(tmp_path / "noise.png")
    rgb = np.zeros((20, 192, 3), np.uint8)
    for k in range(64):  # 64 flat colours, side by side: 64 objects is still a mask
        rgb[:, 3 * k:3 * k + 3] = (k * 3 + 1, 255 - k, 7)
    Image.fromarray(rgb).save(tmp_path / "many.png")
    assert len(read_mask(tmp_path / "many.png").object_ids) == 64
    # a thin object of a colour that is not a mix of its neighbours is kept
    rgb = _two_colour_rgb()
    rgb[0, :] = (0, 0, 128)
    Image.fromarray(rgb).save(tmp_path / "thin.png")
    assert len(read_mask(tmp_path / "thin.png").object_ids) == 3


# -- id 255 (issue 15, item 6) ----------------------------------------------------------------

def test_grey_255_is_void_with_a_warning(tmp_path):
    ids = _two_objects(3, 7)
    ids[0, :] = 255
    Image.fromarray(ids).save(tmp_path / "m.png")
    info = read_mask(tmp_path / "m.png")
    assert info.object_ids == [3, 7]
    assert info.ids[0, 0] == 0
    assert len(info.warnings) == 1 and "255 is void" in info.warnings[0]
    # a binary 0/255 mask is still one object, without a warning
    Image.fromarray(_two_objects(255, 255)).save(tmp_path / "b.png")
    info = read_mask(tmp_path / "b.png")
    assert info.object_ids == [1] and not info.warnings


def test_16_bit_mask_keeps_255_and_round_trips(tmp_path):
    ids = _two_objects(255, 300, np.uint16)
    Image.fromarray(ids).save(tmp_path / "m16.png")
    info = read_mask(tmp_path / "m16.png")
    assert info.object_ids == [255, 300] and not info.warnings
    save_index_png(tmp_path / "out.png", info.ids)
    np.testing.assert_array_equal(read_mask(tmp_path / "out.png").ids, ids)


@pytest.mark.parametrize("ids", [_two_objects(3, 254), _two_objects(1, 255, np.uint16), _two_objects(9, 4000, np.uint16)])
def test_own_outputs_read_back_as_the_same_ids(tmp_path, ids):
    """Whatever ids vostool writes into masks/, the same PNG given as --mask gives them back."""
    save_index_png(tmp_path / "out.png", ids)
    back = read_mask(tmp_path / "out.png")
    np.testing.assert_array_equal(back.ids, ids)
    assert back.object_ids == sorted(int(v) for v in np.unique(ids) if v) and not back.warnings
    if ids.max() < 255:
        assert Image.open(tmp_path / "out.png").mode == "P"
