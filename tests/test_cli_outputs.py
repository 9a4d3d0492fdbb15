"""`vostool segment` output folders: --overwrite never touches a user's file, name clashes are
refused before any work, and a run stopped by a signal leaves only complete, playable files."""

from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from synthetic import cli_clip
from vostool.cli.app import app
from vostool.io import MANIFEST_NAME

runner = CliRunner()
W, H = 64, 48


def frame_fn(i: int, width: int = W, height: int = H) -> np.ndarray:
    img = np.full((height, width, 3), 30, np.uint8)
    img[8:20, 4 + i % 30 : 16 + i % 30] = (220, 40, 40)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cli_clip(tmp_path_factory.mktemp("outputs"), 4, frame_fn, {3: (slice(8, 20), slice(4, 16))})


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in (result.output or "")
    return result


def error_line(result) -> str:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def tree(root: Path) -> list[str]:
    """Every file and folder under ``root`` but vostool's hidden bookkeeping (manifest, markers)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.name.startswith(".vostool-"))


def test_overwrite_keeps_the_users_mask_and_notes(data, tmp_path):
    _, video, mask, weights = data
    proj = tmp_path / "proj"
    (proj / "masks").mkdir(parents=True)
    shutil.copy(video, proj / "clip.mp4")
    shutil.copy(mask, proj / "masks" / "first.png")
    (proj / "notes.txt").write_text("my notes")
    for _ in range(2):  # the reported command, twice: the second run replaces its own overlay
        r = run("segment", proj / "clip.mp4", "--mask", proj / "masks" / "first.png", "--outputs", "overlay",
                "--out", proj, "--overwrite", "--weights", weights, "--device", "cpu", "--quiet")
        assert r.exit_code == 0, r.output
    assert tree(proj) == ["clip.mp4", "masks", "masks/first.png", "notes.txt", "overlay.mp4"]
    assert (proj / MANIFEST_NAME).is_file()
    assert (proj / "masks" / "first.png").read_bytes() == mask.read_bytes()
    assert (proj / "notes.txt").read_text() == "my notes"
    with av.open(str(proj / "overlay.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 4

    # masks/ would mix the results with the user's mask: refused before anything is written
    before = {p: p.stat().st_mtime_ns for p in proj.rglob("*")}
    line = error_line(run("segment", proj / "clip.mp4", "--mask", proj / "masks" / "first.png", "--outputs",
                          "masks,overlay", "--out", proj, "--overwrite", "--weights", weights))
    assert "masks/first.png" in line and "not written by vostool" in line
    assert {p: p.stat().st_mtime_ns for p in proj.rglob("*")} == before


def test_overwrite_replaces_vostools_own_outputs(data, tmp_path):
    _, video, mask, weights = data
    out = tmp_path / "o"
    assert run("segment", video, "--mask", mask, "--out", out, "--outputs", "masks,objects",
               "--weights", weights, "--quiet").exit_code == 0
    (out / "mine.txt").write_text("keep")
    line = error_line(run("segment", video, "--mask", mask, "--out", out, "--outputs", "masks",
                          "--weights", weights))
    assert "already holds vostool outputs (masks/)" in line and "--overwrite" in line
    r = run("segment", video, "--mask", mask, "--out", out, "--outputs", "masks", "--overwrite",
            "--weights", weights, "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    assert (out / "mine.txt").read_text() == "keep" and (out / "objects" / "3").is_dir()


def test_two_inputs_with_one_stem_are_refused_before_any_work(data, tmp_path):
    _, video, mask, weights = data
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        shutil.copy(video, tmp_path / sub / "clip.mp4")
    a, b = tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4"
    out = tmp_path / "o"
    line = error_line(run("segment", a, b, "--mask", mask, "--out", out, "--overwrite", "--weights", weights))
    assert f"inputs {a} and {b} would both write to {out / 'clip'}" in line
    assert not out.exists()
    assert "is given twice" in error_line(run("segment", a, a, "--mask", mask, "--weights", weights))
    assert not (tmp_path / "a" / "clip_vos").exists()
    # without --out each goes beside its input: no clash
    r = run("segment", a, b, "--mask", mask, "--outputs", "masks", "--weights", weights, "--quiet")
    assert r.exit_code == 0, r.output
    for sub in ("a", "b"):
        assert len(list((tmp_path / sub / "clip_vos" / "masks").glob("*.png"))) == 4


def test_frames_of_one_stem_are_refused_before_any_work(data, tmp_path):
    _, video, mask, weights = data
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        Image.fromarray(frame_fn(i)).save(frames / f"00{i}.png")
    Image.fromarray(frame_fn(2)).save(frames / "002.jpg")
    out = tmp_path / "o"
    # the clashing folder is the second input: the first is not segmented either
    line = error_line(run("segment", video, frames, "--mask", mask, "--out", out, "--weights", weights))
    assert f"{frames}: frames 002.jpg and 002.png would both be written as 002.png" in line
    assert not out.exists()
    (frames / "002.jpg").unlink()
    Image.fromarray(frame_fn(2)).save(frames / "002.tmp.png")
    line = error_line(run("segment", frames, "--mask", mask, "--out", out, "--weights", weights))
    assert "002.tmp.png is named like the temporary file of 002.png" in line
    (frames / "002.tmp.png").unlink()
    r = run("segment", frames, "--mask", mask, "--out", out, "--outputs", "masks", "--weights", weights, "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["000.png", "001.png", "002.png"]
