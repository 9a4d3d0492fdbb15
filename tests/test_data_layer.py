"""The torch-free data layer (vostool.data.files / masks / davis): one frame reader, one mask
decoder and one DAVIS parser for segment, eval and train.

The readers replaced three copies; the references below are those copies, verbatim, so that the
unified readers are checked to give exactly the arrays each caller used to get.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from vostool.data.davis import (
    SequenceSpec,
    annotated_sequences,
    davis_sequences,
    davis_split_sequences,
    parse_imageset,
    resolution_dir,
    train_sequence_names,
)
from vostool.data.files import IMAGE_EXTS, list_images, natural_key, read_frame, resize_short
from vostool.data.masks import VOID_ID, decode_mask, read_index_mask, without_void
from vostool.errors import VostoolError
from vostool.io.masks import read_mask

H, W = 37, 53


# -- the replaced readers (reference copies) --------------------------------------------------
def old_eval_read_index_png(path: Path) -> np.ndarray:
    """vostool/eval/datasets.py read_index_png before the data layer."""
    modes = {"P", "L", "LA", "1", "I", "I;16", "I;16B", "I;16L"}
    with Image.open(path) as im:
        mode = im.mode
        if mode not in modes:
            raise VostoolError(f"not an index PNG (mode {mode})")
        arr = np.array(im.getchannel(0) if mode == "LA" else im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


def old_train_read_ids(path: Path, short_side: int | None = None) -> np.ndarray:
    """vostool/train/data.py read_ids before the data layer."""
    with Image.open(path) as im:
        if im.mode == "P":
            arr = np.array(im)
        else:
            arr = np.array(im.convert("L"))
            vals = np.unique(arr)
            if vals.max(initial=0) > 1 and not set(vals.tolist()) <= set(range(0, 32)) | {255}:
                arr = (arr > 127).astype(np.uint8)
            elif set(vals.tolist()) <= {0, 255}:
                arr = (arr > 127).astype(np.uint8)
    return resize_short(arr.astype(np.uint8), short_side, nearest=True)


def old_train_read_rgb(path: Path, short_side: int | None = None) -> np.ndarray:
    """vostool/train/data.py read_rgb before the data layer (OpenCV decoding)."""
    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if not short_side:
        return img
    h, w = img.shape[:2]
    r = short_side / min(h, w)
    if abs(r - 1) < 1e-6:
        return img
    size = (max(1, round(w * r)), max(1, round(h * r)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR)


def old_eval_read_rgb(path: Path) -> np.ndarray:
    """vostool/eval/runner.py _read_rgb before the data layer."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"))


# -- small files ---------------------------------------------------------------------------
def _ids() -> np.ndarray:
    ids = np.zeros((H, W), np.uint8)
    ids[5:20, 5:30] = 1
    ids[15:30, 25:50] = 2
    ids[0:3, :] = VOID_ID
    return ids


def _palette(path: Path, ids: np.ndarray) -> None:
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    im.putpalette(bytes(range(256)) * 3)
    im.save(path)


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("masks")
    ids = _ids()
    one = np.where(ids == 1, 255, 0).astype(np.uint8)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[ids == 1] = (128, 0, 0)
    rgb[ids == 2] = (0, 128, 0)
    files = {
        "palette": lambda p: _palette(p, ids),
        "palette_big_ids": lambda p: _palette(p, np.where(ids == VOID_ID, VOID_ID, ids * 40)),
        "grey_0_255": lambda p: Image.fromarray(one).save(p),
        "grey_0_1": lambda p: Image.fromarray((one > 0).astype(np.uint8)).save(p),
        "grey_ids_void": lambda p: Image.fromarray(ids).save(p),
        "grey_soft": lambda p: Image.fromarray(cv2.GaussianBlur(one, (7, 7), 2)).save(p),
        "grey16": lambda p: Image.fromarray(ids.astype(np.uint16) * 300).save(p),
        "grey16_small": lambda p: Image.fromarray(ids.astype(np.uint16)).save(p),
        "bits": lambda p: Image.fromarray(one).convert("1").save(p),
        "grey_alpha": lambda p: Image.fromarray(np.dstack([one, np.full((H, W), 255, np.uint8)]), "LA").save(p),
        "rgb": lambda p: Image.fromarray(rgb).save(p),
        "rgba": lambda p: Image.fromarray(np.dstack([rgb, np.full((H, W), 255, np.uint8)])).save(p),
    }
    out = {}
    for name, write in files.items():
        out[name] = d / f"{name}.png"
        write(out[name])
    return out


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    fr = cv2.GaussianBlur(rng.integers(0, 256, (H * 4, W * 4, 3), np.uint8), (5, 5), 1)
    files = {
        "pil.jpg": lambda p: Image.fromarray(fr).save(p, quality=85),
        "cv.jpg": lambda p: cv2.imwrite(str(p), cv2.cvtColor(fr, cv2.COLOR_RGB2BGR)),
        "grey.jpg": lambda p: Image.fromarray(fr[..., 0]).save(p),
        "rgb.png": lambda p: Image.fromarray(fr).save(p),
        "rgba.png": lambda p: Image.fromarray(np.dstack([fr, fr[..., 1]])).save(p),
        "palette.png": lambda p: Image.fromarray(fr).convert("P").save(p),
        "grey.png": lambda p: Image.fromarray(fr[..., 2]).save(p),
        "rgb.bmp": lambda p: Image.fromarray(fr).save(p),
    }
    out = {}
    for name, write in files.items():
        out[name] = d / name
        write(out[name])
    return out


# -- masks ---------------------------------------------------------------------------------
def test_eval_reader_is_unchanged(masks):
    for name, path in masks.items():
        if name in ("rgb", "rgba"):
            with pytest.raises(VostoolError, match="not an index PNG"):
                read_index_mask(path)
            continue
        got, want = read_index_mask(path), old_eval_read_index_png(path)
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert read_index_mask(masks["grey16"]).dtype == np.uint16
    assert read_index_mask(masks["palette"]).tolist() == _ids().tolist()  # indices, not colours


@pytest.mark.parametrize("short_side", [None, 20, 90])
def test_training_reader_is_unchanged(masks, short_side):
    for name, path in masks.items():
        got = read_index_mask(path, binarise_grey=True, short_side=short_side)
        want = old_train_read_ids(path, short_side)
        assert got.dtype == want.dtype == np.uint8, name
        np.testing.assert_array_equal(got, want, err_msg=f"{name} short side {short_side}")
    binary = read_index_mask(masks["grey_0_255"], binarise_grey=True)
    assert set(np.unique(binary).tolist()) == {0, 1}
    assert set(np.unique(read_index_mask(masks["palette"], binarise_grey=True)).tolist()) == {0, 1, 2, VOID_ID}


def test_user_masks_share_the_decoder(masks):
    """read_mask (segment's first masks) reads through decode_mask: void is background, ids kept."""
    ids = _ids()
    np.testing.assert_array_equal(read_mask(masks["palette"]).ids, without_void(ids))
    np.testing.assert_array_equal(read_mask(masks["grey_0_255"]).ids, (ids == 1).astype(np.uint8))
    np.testing.assert_array_equal(read_mask(masks["grey16_small"]).ids, ids)  # 16-bit: 255 is an id
    assert read_mask(masks["rgb"]).object_ids == [1, 2]  # DAVIS palette colours keep their index
    with Image.open(masks["grey_alpha"]) as im:
        pixels = decode_mask(im)
    assert pixels.mode == "LA" and pixels.opaque is not None and pixels.opaque.all()
    with Image.open(masks["rgba"]) as im:
        assert decode_mask(im).ids is None and decode_mask(im, "rgb").rgb.shape == (H, W, 3)
        assert decode_mask(im, "grey").ids.shape == (H, W)


def test_read_index_mask_errors(tmp_path):
    with pytest.raises(VostoolError, match="ground truth .* not found"):
        read_index_mask(tmp_path / "none.png", "ground truth")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(VostoolError, match="cannot read result"):
        read_index_mask(tmp_path / "bad.png", "result")


# -- frames --------------------------------------------------------------------------------
@pytest.mark.parametrize("short_side", [None, 60, 200, 148])
def test_frame_reader_matches_training_and_eval(frames, short_side):
    """PIL decoding gives what OpenCV gave training (same libjpeg-turbo, no EXIF here), with the
    same area / bilinear resizing, and exactly what eval read."""
    for name, path in frames.items():
        got = read_frame(path, short_side)
        assert got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3 and got.flags.writeable
        np.testing.assert_array_equal(got, old_train_read_rgb(path, short_side), err_msg=name)
        if short_side is None:
            np.testing.assert_array_equal(got, old_eval_read_rgb(path), err_msg=name)


def test_frame_reader_16_bit_and_errors(tmp_path):
    Image.fromarray(np.array([[0, 257, 65535]], np.uint16)).save(tmp_path / "g16.png")
    assert read_frame(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 1, 255]  # scaled, not clipped
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VostoolError, match="bad.jpg: cannot read image"):
        read_frame(tmp_path / "bad.jpg")


def test_resize_short_interpolation():
    img = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert resize_short(img, None, nearest=False) is img and resize_short(img, 4, nearest=False) is img
    np.testing.assert_array_equal(resize_short(img, 2, nearest=False),
                                  cv2.resize(img, (3, 2), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize_short(img, 8, nearest=False),
                                  cv2.resize(img, (12, 8), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(resize_short(img[..., 0], 8, nearest=True),
                                  cv2.resize(img[..., 0], (12, 8), interpolation=cv2.INTER_NEAREST))


def test_natural_order_and_image_listing(tmp_path):
    for name in ("f10.jpg", "f2.png", "F1.jpg", ".f0.jpg", "notes.txt", "f3.TIF"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "f4.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["F1.jpg", "f2.png", "f3.TIF", "f10.jpg"]
    assert sorted(["00010", "00002", "00001"], key=natural_key) == ["00001", "00002", "00010"]
    assert IMAGE_EXTS[:3] == (".jpg", ".jpeg", ".png")


def test_data_layer_imports_without_torch():
    code = ("import sys, vostool.data.davis, vostool.data.files, vostool.data.masks, vostool.eval.datasets; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_old_names_still_import():
    from vostool.eval import read_index_png
    from vostool.eval.datasets import VOID_ID as EVAL_VOID
    from vostool.eval.datasets import SequenceSpec as EvalSpec
    from vostool.io import IMAGE_EXTS as IO_EXTS
    from vostool.io import natural_key as io_key
    from vostool.io.masks import VOID_ID as IO_VOID
    from vostool.train.data import IMAGE_EXTS as TRAIN_EXTS
    from vostool.train.data import read_ids, read_rgb

    assert read_index_png is read_index_mask and EvalSpec is SequenceSpec and io_key is natural_key
    assert EVAL_VOID == IO_VOID == VOID_ID and IO_EXTS is TRAIN_EXTS is IMAGE_EXTS
    assert callable(read_ids) and callable(read_rgb)


# -- DAVIS layout --------------------------------------------------------------------------
def _davis_root(root: Path, names=("bear", "cows", "dog"), frames=4, year_dirs=("480p",)) -> Path:
    for name in names:
        for kind, ext in (("JPEGImages", ".jpg"), ("Annotations", ".png")):
            d = root / kind / "480p" / name
            d.mkdir(parents=True)
            for t in range(frames):
                Image.fromarray(np.zeros((8, 12, 3) if ext == ".jpg" else (8, 12), np.uint8)).save(d / f"{t:05d}{ext}")
    sets = root / "ImageSets"
    for y in year_dirs:
        (sets / y).mkdir(parents=True)
    if "480p" in year_dirs:
        (sets / "480p" / "train.txt").write_text("".join(
            f"/JPEGImages/480p/{n}/{t:05d}.jpg /Annotations/480p/{n}/{t:05d}.png\n" for n in names[:2]
            for t in range(frames)))
        (sets / "480p" / "val.txt").write_text(f"/JPEGImages/480p/{names[2]}/00000.jpg /x\n")
    return root


def test_imagesets_and_splits(tmp_path):
    root = _davis_root(tmp_path)
    assert parse_imageset(root / "ImageSets/480p/train.txt") == ["bear", "cows"]
    assert davis_split_sequences(root, 2016, "val") == ["dog"]
    assert train_sequence_names(root) == ["bear", "cows"]
    with pytest.raises(VostoolError, match="ImageSets/2017/val.txt"):
        davis_split_sequences(root, 2017, "val")
    (root / "ImageSets/480p/empty.txt").write_text("\n")
    with pytest.raises(VostoolError, match="lists no sequences"):
        parse_imageset(root / "ImageSets/480p/empty.txt")


def test_eval_and_training_describe_sequences_alike(tmp_path):
    """The DAVIS parser gives eval and training one SequenceSpec per sequence."""
    root = _davis_root(tmp_path)
    (root / "Annotations/480p/bear/00003.png").unlink()  # training: annotated frames only
    (root / "JPEGImages/480p/bear/._00000.jpg").write_bytes(b"")  # macOS litter is no frame
    train = annotated_sequences([root])
    assert [s.name for s in train] == ["bear", "cows"]
    bear = train[0]
    assert bear == SequenceSpec("bear", root / "Annotations/480p/bear", ("00000", "00001", "00002"),
                                root / "JPEGImages/480p/bear")
    assert [p.name for p in bear.annotated_images()] == ["00000.jpg", "00001.jpg", "00002.jpg"]
    assert [p.name for p in bear.image_files()][-1] == "00003.jpg"
    assert bear.mask_path("00001") == root / "Annotations/480p/bear/00001.png"
    (spec,) = davis_sequences(root, 2016, "train", ["cows"])
    assert spec == train[1] and spec == SequenceSpec("cows", root / "Annotations/480p/cows",
                                                     ("00000", "00001", "00002", "00003"),
                                                     root / "JPEGImages/480p/cows")
    assert [s.name for s in annotated_sequences([root], names=["dog"], exclude=())] == ["dog"]
    assert annotated_sequences([root], exclude=["bear"])[0].name == "cows"
    with pytest.raises(VostoolError, match="not found"):
        annotated_sequences([root], names=["nope"])


def test_layout_without_resolution_folder(tmp_path):
    root = _davis_root(tmp_path / "a")
    flat = tmp_path / "flat"  # JPEGImages/<seq>/, as some converted sets are
    flat.mkdir()
    for kind in ("JPEGImages", "Annotations"):
        (root / kind / "480p").rename(flat / kind)
    assert resolution_dir(flat, "JPEGImages") == flat / "JPEGImages"
    assert [s.name for s in annotated_sequences([flat])] == ["bear", "cows", "dog"]
    with pytest.raises(VostoolError, match="not a DAVIS-layout folder"):
        resolution_dir(tmp_path / "a", "JPEGImages")
    assert resolution_dir(tmp_path / "a", "JPEGImages", required=False) == tmp_path / "a/JPEGImages/480p"
