"""`vostool segment --box/--point/--neg-point/--at/--save-mask` end to end, and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vostool.cli.app import app
from vostool.io.masks import save_index_png
from vostool.models import build_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
W, H, N = 80, 64, 5


def scene(t: int) -> np.ndarray:
    """A red disc (r=14) moving right by 2 px a frame and a fixed green square, on texture."""
    rng = np.random.default_rng(0)
    img = rng.integers(30, 90, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    img[(yy - 30) ** 2 + (xx - 24 - 2 * t) ** 2 <= 14 ** 2] = (220, 50, 40)
    img[8:24, 56:72] = (40, 200, 60)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    frames = root / "clip"
    frames.mkdir()
    for t in range(N):
        Image.fromarray(scene(t)).save(frames / f"{t:05d}.png")
    square = np.zeros((H, W), np.uint8)
    square[8:24, 56:72] = 5
    save_index_png(root / "square.png", square)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return root, frames, weights


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in (result.output or "")
    return result


def read(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def test_box_makes_the_first_mask_and_saves_it(data, tmp_path):
    root, frames, weights = data
    out, saved = tmp_path / "out", tmp_path / "first.png"
    r = run("segment", frames, "--box", "8,14,40,46", "--save-mask", saved, "--weights", weights,
            "--out", out, "--outputs", "masks", "--device", "cpu", "--size", "32", "--quiet")
    assert r.exit_code == 0, r.output
    assert Image.open(saved).mode == "P"
    made = read(saved)
    assert set(np.unique(made)) == {0, 1}
    ys, xs = np.nonzero(made)
    assert xs.min() >= 8 and xs.max() < 40 and ys.min() >= 14 and ys.max() < 46  # kept inside its box
    assert (made == 1).sum() > 200  # most of the disc (area ~615)
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == N
    np.testing.assert_array_equal(read(masks[0]), made)  # frame 0's output is the made mask


def test_box_added_at_a_later_frame_beside_mask(data, tmp_path):
    root, frames, weights = data
    out, saved = tmp_path / "out", tmp_path / "at2.png"
    r = run("segment", frames, "--mask", root / "square.png", "--box", "12,14,44,46", "--point", "28,30",
            "--at", "2", "--save-mask", saved, "--weights", weights, "--out", out, "--outputs", "masks",
            "--device", "cpu", "--size", "32", "--quiet")
    assert r.exit_code == 0, r.output
    masks = sorted((out / "masks").glob("*.png"))
    assert set(np.unique(read(masks[0]))) <= {0, 5} and set(np.unique(read(masks[1]))) <= {0, 5}
    made = read(saved)
    assert set(np.unique(made)) == {0, 1} and made[30, 28] == 1  # automatic id: 1 (5 is the mask's)
    assert 1 in np.unique(read(masks[2]))


@pytest.mark.parametrize("args, words", [
    (["--box", "0,0,90,30"], "outside the 80x64 frame"),
    (["--box", "10,10,10,30"], "zero area"),
    (["--box", "10,10,30"], "X0,Y0,X1,Y1"),
    (["--point", "5;6"], "X,Y"),
    (["--mask", "{square}", "--box", "0,0,20,20:5"], "already in --mask"),
    (["--box", "0,0,20,20", "--at", "2"], "needs --mask"),
    (["--box", "0,0,20,20", "--at", "9", "--mask", "{square}"], "past the last frame"),
    (["--save-mask", "x.png"], "needs --box"),
    (["--point", "10,10", "--point", "20,20", "--box", "0,0,5,5", "--box", "30,30,40,40"], "X,Y:ID"),
])
def test_bad_prompts_are_one_line_errors_before_any_output(data, tmp_path, args, words):
    root, frames, weights = data
    out = tmp_path / "out"
    args = [a.format(square=root / "square.png") for a in args]
    r = run("segment", frames, *args, "--weights", weights, "--out", out, "--device", "cpu", "--size", "32")
    assert r.exit_code != 0
    assert words in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_box_beside_mask_on_frame_zero(data, tmp_path):
    root, frames, weights = data
    out = tmp_path / "out"
    r = run("segment", frames, "--mask", root / "square.png", "--box", "8,14,40,46:2", "--weights", weights,
            "--out", out, "--outputs", "masks", "--device", "cpu", "--size", "32", "--quiet")
    assert r.exit_code == 0, r.output
    first = read(out / "masks" / "00000.png")
    assert set(np.unique(first)) == {0, 2, 5}
    assert (first[8:24, 56:72] == 5).all()  # the mask's object is kept exactly
