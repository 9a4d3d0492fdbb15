"""Many videos: --mask-dir, torchrun ranks (two gloo processes), --shard K/N and --skip-done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from test_io_helpers import make_video
from vostool.cli.app import app
from vostool.engine.shard import Worker, current_worker, parse_shard, worker_device
from vostool.errors import VostoolError
from vostool.io.completion import DONE_NAME
from vostool.io.masks import save_index_png
from vostool.models import build_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
W, H, N = 48, 32, 4
NAMES = ["a", "b", "c", "d"]


def frame_fn(k: int):
    def draw(i: int, width: int = W, height: int = H) -> np.ndarray:
        img = np.full((height, width, 3), 30 + 20 * k, np.uint8)
        img[6:18, 4 + 2 * i + k: 16 + 2 * i + k] = (220, 40, 40)
        return img
    return draw


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard")
    (root / "shots").mkdir()
    (root / "masks").mkdir()
    for k, name in enumerate(NAMES):
        make_video(root / "shots" / f"{name}.mp4", n=N, codec="libx264", size=(W, H), frame_fn=frame_fn(k))
        m = np.zeros((H, W), np.uint8)
        m[6:18, 4 + k:16 + k] = 1 + k % 2
        save_index_png(root / "masks" / f"{name}.png", m)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return root, weights


def common(root: Path, weights: Path) -> list[str]:
    return [str(root / "shots"), "--mask-dir", str(root / "masks"), "--weights", str(weights), "--outputs",
            "masks", "--device", "cpu", "--precision", "fp32", "--size", "32"]


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in (result.output or "")
    return result


def masks_of(out: Path) -> dict[str, list[np.ndarray]]:
    return {name: [np.array(Image.open(p)) for p in sorted((out / name / "masks").glob("*.png"))]
            for name in NAMES if (out / name).is_dir()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) == NAMES
    for name in NAMES:
        assert len(a[name]) == len(b[name]) == N
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    root, weights = data
    out = tmp_path_factory.mktemp("single") / "out"
    r = run("segment", *common(root, weights), "--out", out)
    assert r.exit_code == 0, r.output
    return out


def test_worker_split_and_parse(monkeypatch):
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) == (0, 1)
    for bad in ("5/5", "1/0", "a/2", "1", "-1/2"):
        with pytest.raises(VostoolError, match="--shard"):
            parse_shard(bad)
    items = list(range(10))
    parts = [Worker(i, 3).take(items) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[0] == [0, 3, 6, 9]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    w = current_worker("1/3")  # job 1 of 3, rank 1 of 2: worker 3 of 6
    assert (w.index, w.count, w.distributed, w.is_main) == (3, 6, True, False)


def test_each_rank_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rank3 = Worker(3, 4, rank=3, world_size=4, local_rank=3)
    assert worker_device("auto", rank3) == "cuda:1" and worker_device("cuda", rank3) == "cuda:1"
    assert worker_device("cpu", rank3) == "cpu"
    assert worker_device("auto", Worker()) == "auto"  # one process: the usual choice
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert worker_device("auto", rank3) == "auto"


def test_two_gloo_processes_each_video_once_same_outputs(data, single, tmp_path):
    root, weights = data
    out = tmp_path / "out"
    env = {**os.environ, "VOSTOOL_THREADS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "vostool", "segment", *common(root, weights), "--out", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    for name in NAMES:  # one line per video, from whichever rank did it
        assert p.stdout.count(f"{name}.mp4: {N} frames") == 1, p.stdout
    assert f"4 of 4 video(s) segmented ({4 * N} frames) by 2 processes" in p.stdout
    assert_same(masks_of(out), masks_of(single))


def test_shards_cover_every_video_once(data, single, tmp_path):
    root, weights = data
    out = tmp_path / "out"
    seen = []
    for k in range(2):
        r = run("segment", *common(root, weights), "--out", out, "--shard", f"{k}/2")
        assert r.exit_code == 0, r.output
        seen += [name for name in NAMES if f"{name}.mp4: {N} frames" in r.output]
        assert f"2 of 4 video(s) segmented" in r.output and f"(shard {k}/2)" in r.output
    assert sorted(seen) == NAMES
    assert_same(masks_of(out), masks_of(single))


def test_skip_done_redoes_only_unfinished(data, single, tmp_path):
    root, weights = data
    out = tmp_path / "out"
    assert run("segment", *common(root, weights), "--out", out).exit_code == 0
    assert all((out / name / DONE_NAME).is_file() for name in NAMES)
    # "b" preempted mid-video: no marker, a frame short
    (out / "b" / DONE_NAME).unlink()
    sorted((out / "b" / "masks").glob("*.png"))[-1].unlink()
    before = {p: p.stat().st_mtime_ns for p in (out / "a" / "masks").glob("*.png")}
    again = run("segment", *common(root, weights), "--out", out)
    assert again.exit_code != 0 and "--overwrite" in again.output  # without --skip-done: refused
    r = run("segment", *common(root, weights), "--out", out, "--skip-done")
    assert r.exit_code == 0, r.output
    assert f"b.mp4: {N} frames" in r.output and "a.mp4" not in r.output
    assert "1 of 4 video(s) segmented" in r.output and "3 skipped as done" in r.output
    assert {p: p.stat().st_mtime_ns for p in (out / "a" / "masks").glob("*.png")} == before
    assert (out / "b" / DONE_NAME).is_file()
    assert_same(masks_of(out), masks_of(single))
    r = run("segment", *common(root, weights), "--out", out, "--skip-done", "--outputs", "masks,objects")
    assert r.exit_code == 0 and "4 of 4 video(s) segmented" in r.output  # asked for more: redone


def test_mask_dir_errors_before_any_work(data, tmp_path):
    root, weights = data
    masks = tmp_path / "masks"
    masks.mkdir()
    save_index_png(masks / "a.png", np.ones((H, W), np.uint8))
    out = tmp_path / "out"
    args = common(root, weights)
    args[2] = str(masks)
    r = run("segment", *args, "--out", out)
    assert r.exit_code != 0 and "no mask for 3 of 4 input(s): b, c, d" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()
    r = run("segment", *common(root, weights), "--out", out, "--mask", root / "masks" / "a.png")
    assert r.exit_code != 0 and "--mask-dir" in r.output and not out.exists()
    r = run("segment", *common(root, weights), "--out", out, "--shard", "2/2")
    assert r.exit_code != 0 and "--shard" in r.output and not out.exists()


def test_mask_dir_davis_layout(data, tmp_path):
    """DIR/<stem>/<first>.png: the first PNG of a per-video folder (DAVIS Annotations)."""
    root, weights = data
    masks = tmp_path / "ann"
    for name in NAMES:
        (masks / name).mkdir(parents=True)
        for t in (1, 0):
            Image.open(root / "masks" / f"{name}.png").save(masks / name / f"{t:05d}.png")
    args = common(root, weights)
    args[2] = str(masks)
    r = run("segment", *args, "--out", tmp_path / "out", "--shard", "0/4")
    assert r.exit_code == 0 and f"a.mp4: {N} frames" in r.output, r.output
