"""preview.jpg: which frames the contact sheet samples, its grid size, and `segment --preview`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from test_io_helpers import make_video
from vostool.cli.app import app
from vostool.io.masks import save_index_png
from vostool.io.preview import GAP, ContactSheet, grid_shape, sheet_size, tile_size
from vostool.models import build_model, save_checkpoint
from vostool.types import Frame, FrameResult

W, H = 64, 48


def _frame(i: int) -> tuple[Frame, FrameResult]:
    img = np.full((H, W, 3), 40, np.uint8)
    img[10:22, 4:16] = 255
    ids = np.zeros((H, W), np.uint8)
    ids[10:22, 4:16] = 1
    probs = (ids * 255)[None]
    return Frame(i, img, name=f"{i:05d}"), FrameResult(ids, probs, [1])


def _feed(sheet: ContactSheet, n: int) -> int:
    most = 0
    for i in range(n):
        sheet.add(*_frame(i))
        most = max(most, len(sheet.tiles))
    return most


def test_grid_and_sizes():
    assert grid_shape(12, 640, 360) == (4, 3)
    assert grid_shape(8, 64, 48) == (4, 2)
    assert grid_shape(1, 64, 48) == (1, 1)
    assert tile_size(640, 360) == (320, 180)
    assert sheet_size(12, 640, 360) == (4 * 320 + 5 * GAP, 3 * 180 + 4 * GAP)


def test_known_count_samples_evenly():
    sheet = ContactSheet(12, expected=100)
    assert _feed(sheet, 100) == 12  # only the sampled frames are kept
    picked = sheet.picked()
    assert picked == [0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99]
    img = sheet.render()
    assert img.shape == (3 * 240 + 4 * GAP, 4 * 320 + 5 * GAP, 3)
    # the first tile shows the tinted object (DAVIS colour 1 is red) and a label in its corner
    tile = img[GAP : GAP + 240, GAP : GAP + 320]
    obj = tile[60:100, 40:70].reshape(-1, 3).mean(0)
    assert obj[0] > obj[1] + 40
    assert (tile[:12, :40] < 30).mean() > 0.3  # the black label band


def test_unknown_or_wrong_count_stays_bounded():
    sheet = ContactSheet(12, expected=None)
    assert _feed(sheet, 1000) <= 24 + 1
    picked = sheet.picked()
    assert len(picked) == 12 and picked[0] == 0 and picked[-1] == 999
    steps = np.diff(picked)
    assert steps.max() <= 2 * steps.min() + 64  # spread over the whole video
    longer = ContactSheet(12, expected=10)  # the video runs past its estimate
    assert _feed(longer, 200) <= 25
    assert longer.picked()[-1] == 199 and len(longer.picked()) == 12
    shorter = ContactSheet(12, expected=100)  # the estimate was too high
    _feed(shorter, 20)
    assert shorter.picked() == [0, 9, 18, 19]
    assert ContactSheet(12).render() is None


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("preview")
    video = make_video(root / "clip.mp4", n=8, codec="libx264")
    mask = np.zeros((H, W), np.uint8)
    mask[10:22, 0:12] = 1
    save_index_png(root / "first.png", mask)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return video, root / "first.png", weights


def test_segment_preview(clip, tmp_path):
    video, mask, weights = clip
    out = tmp_path / "out"
    args = ["segment", str(video), "--mask", str(mask), "--weights", str(weights), "--out", str(out),
            "--outputs", "masks", "--device", "cpu", "--preview"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    with Image.open(out / "preview.jpg") as im:
        assert im.format == "JPEG"
        assert im.size == sheet_size(8, W, H) == (4 * 320 + 5 * GAP, 2 * 240 + 3 * GAP)
    assert not list(out.glob("*.tmp*"))
    # a rerun needs --overwrite, which replaces the preview too
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = CliRunner().invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert (out / "preview.jpg").is_file()
    # without --preview no sheet is written
    r = CliRunner().invoke(app, [*args[:-1], "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "plain" / "preview.jpg").exists()
