"""`vostool segment` end to end: outputs, ids, folders, and every error path (one line, no traceback)."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from synthetic import cli_clip, two_objects_frame
from test_io_helpers import make_video
from vostool.cli.app import app
from vostool.io.masks import save_index_png

runner = CliRunner()
W, H = 64, 48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cli_clip(tmp_path_factory.mktemp("seg"), 8, two_objects_frame,
                    {3: (slice(8, 20), slice(4, 16)), 7: (slice(28, 44), slice(40, 56))})


def run(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in (result.output or "")
    return result


def test_segment_all_outputs(data, tmp_path):
    root, video, mask, weights = data
    out = tmp_path / "out"
    r = run("segment", video, "--mask", mask, "--weights", weights, "--out", out, "--outputs", "all",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 8
    first = Image.open(masks[0])
    assert first.mode == "P"
    assert set(np.unique(np.array(first))) == {0, 3, 7}
    for p in masks[1:]:
        assert set(np.unique(np.array(Image.open(p)))) <= {0, 3, 7}
    for oid in ("3", "7"):
        objs = sorted((out / "objects" / oid).glob("*.png"))
        assert len(objs) == 8 and set(np.unique(np.array(Image.open(objs[0])))) == {0, 255}
        assert len(list((out / "probs" / oid).glob("*.png"))) == 8
    alpha = Image.open(out / "alpha" / "00000.png")
    assert alpha.mode == "RGBA"
    assert len(list((out / "matte").glob("*.png"))) == 8
    with av.open(str(out / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8
    with av.open(str(out / "alpha.mov")) as c:
        assert c.streams.video[0].codec_context.pix_fmt.startswith("yuva")


def test_folder_of_frames_and_default_out(data, tmp_path):
    root, video, mask, weights = data
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (1, 2, 10):  # natural order: f1, f2, f10
        Image.fromarray(two_objects_frame(i)).save(frames / f"f{i}.png")
    r = run("segment", frames, "--mask", mask, "--weights", weights, "--outputs", "masks", "--quiet")
    assert r.exit_code == 0, r.output
    out = tmp_path / "frames_vos" / "masks"
    assert sorted(p.name for p in out.glob("*.png")) == ["f1.png", "f10.png", "f2.png"]


def test_several_inputs_each_in_own_folder(data, tmp_path):
    root, video, mask, weights = data
    v2 = make_video(tmp_path / "other.mp4", n=5, codec="libx264", frame_fn=two_objects_frame)
    r = run("segment", video, v2, "--mask", mask, "--weights", weights, "--out", tmp_path / "o",
            "--outputs", "masks")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "o" / "clip" / "masks").glob("*.png"))) == 8
    assert len(list((tmp_path / "o" / "other" / "masks").glob("*.png"))) == 5


def test_mask_size_mismatch_is_resized_with_warning(data, tmp_path):
    root, video, mask, weights = data
    big = np.array(Image.open(mask).resize((W * 2, H * 2), Image.NEAREST))
    save_index_png(tmp_path / "big.png", big)
    r = run("segment", video, "--mask", tmp_path / "big.png", "--weights", weights, "--out", tmp_path / "o",
            "--outputs", "masks")
    assert r.exit_code == 0, r.output
    assert "resized with nearest neighbour" in r.output


def test_mask_of_another_aspect_ratio_is_one_line_error(data, tmp_path):
    root, video, mask, weights = data
    wide = np.array(Image.open(mask).resize((W * 2, H), Image.NEAREST))
    save_index_png(tmp_path / "wide.png", wide)
    r = run("segment", video, "--mask", tmp_path / "wide.png", "--weights", weights, "--out", tmp_path / "o")
    line = _error(r)
    assert "another aspect ratio" in line and f"{W * 2}x{H}" in line
    assert not (tmp_path / "o").exists()


def test_mask_at_adds_object(data, tmp_path):
    root, video, mask, weights = data
    extra = np.zeros((H, W), np.uint8)
    extra[0:6, 56:64] = 9
    save_index_png(tmp_path / "extra.png", extra)
    r = run("segment", video, "--mask", mask, "--mask-at", f"4:{tmp_path / 'extra.png'}", "--weights", weights,
            "--out", tmp_path / "o", "--outputs", "masks")
    assert r.exit_code == 0, r.output
    assert 9 not in np.unique(np.array(Image.open(tmp_path / "o" / "masks" / "00003.png")))
    assert 9 in np.unique(np.array(Image.open(tmp_path / "o" / "masks" / "00004.png")))


def _error(result, code_nonzero=True):
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_error_paths(data, tmp_path):
    root, video, mask, weights = data
    base = ["--weights", weights, "--out", tmp_path / "e"]
    assert "no such file" in _error(run("segment", tmp_path / "nope.mp4", "--mask", mask, *base)).lower()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(4096))
    _error(run("segment", corrupt, "--mask", mask, *base))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    _error(run("segment", video, "--mask", junk, *base))
    empty = tmp_path / "empty.png"
    save_index_png(empty, np.zeros((H, W), np.uint8))
    assert "no object" in _error(run("segment", video, "--mask", empty, *base))
    assert "unknown model" in _error(run("segment", video, "--mask", mask, "--model", "nope", *base))
    assert "not found" in _error(run("segment", video, "--mask", mask, "--weights", tmp_path / "w.safetensors",
                                     "--out", tmp_path / "e"))
    assert "--mask is required" in _error(run("segment", video, *base))
    assert "unknown output" in _error(run("segment", video, "--mask", mask, "--outputs", "masks,gif", *base)).lower()
    if not torch.cuda.is_available():
        assert "CUDA" in _error(run("segment", video, "--mask", mask, "--device", "cuda", *base))
    # existing output without --overwrite, then with it
    out = tmp_path / "exists"
    assert run("segment", video, "--mask", mask, "--weights", weights, "--out", out, "--outputs", "masks").exit_code == 0
    assert "--overwrite" in _error(run("segment", video, "--mask", mask, "--weights", weights, "--out", out))
    assert run("segment", video, "--mask", mask, "--weights", weights, "--out", out, "--overwrite",
               "--outputs", "masks").exit_code == 0


def test_missing_shipped_weights_message(data, tmp_path, monkeypatch):
    root, video, mask, weights = data
    import vostool.models.weights as shipped

    # nothing in $VOSTOOL_WEIGHTS, the package or the cache, and no download URL
    monkeypatch.setenv("VOSTOOL_WEIGHTS", str(tmp_path / "noweights"))
    monkeypatch.setenv("VOSTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VOSTOOL_WEIGHTS_URL", raising=False)
    monkeypatch.setattr(shipped, "package_weights_dir", lambda: tmp_path / "nopackage")
    line = _error(run("segment", video, "--mask", mask, "--out", tmp_path / "o"))
    assert "no shipped weights" in line


# A run stopped by Ctrl-C, SIGTERM, SIGHUP or SIGKILL: tests/test_cli_interrupts.py
