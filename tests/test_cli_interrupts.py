"""A `vostool segment` run stopped by SIGTERM, SIGHUP or a quick second Ctrl-C leaves playable
videos with as many frames as the PNG folders, and nothing half-written; after SIGKILL a rerun
is not tripped by the leftovers. Each case runs the CLI in a subprocess on a small clip and
signals it once its first frames are written (never after a fixed sleep)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import default_stop_signals
from test_io_helpers import make_video
from vostool.cli.app import app
from vostool.io.masks import save_index_png
from vostool.models import build_model, save_checkpoint

W, H, N = 48, 32, 600
OUTPUTS = "masks,alpha,matte,overlay,alpha-video"
FRAME_PNG = "[0-9][0-9][0-9][0-9][0-9].png"  # a finished frame PNG (never NNNNN.tmp.png)


def frame_fn(i: int, width: int = W, height: int = H) -> np.ndarray:
    img = np.full((height, width, 3), 30, np.uint8)
    x = 2 + i % 24
    img[8:20, x : x + 12] = (220, 40, 40)
    return img


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupts")
    video = make_video(root / "long.mp4", n=N, codec="libx264", size=(W, H), frame_fn=frame_fn)
    short = make_video(root / "short.mp4", n=3, codec="libx264", size=(W, H), frame_fn=frame_fn)
    mask = np.zeros((H, W), np.uint8)
    mask[8:20, 2:14] = 3
    save_index_png(root / "first.png", mask)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return video, short, root / "first.png", weights


def start(data, out: Path, alpha_format: str = "mov") -> subprocess.Popen:
    """Start the CLI and return once it has written its first frames (or has exited)."""
    video, _, mask, weights = data
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vostool", "segment", str(video), "--mask", str(mask), "--weights", str(weights),
         "--out", str(out), "--outputs", OUTPUTS, "--alpha-format", alpha_format, "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=default_stop_signals,
    )
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list((out / "masks").glob(FRAME_PNG))) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1].decode()
    return proc


def video_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def check_complete(out: Path, alpha_format: str, total: int | None = None) -> int:
    """Every output has the same frames, every file is whole; returns the frame count."""
    assert not list(out.rglob("*.tmp*")) and not list(out.rglob("*.part"))
    names = sorted(p.name for p in (out / "masks").iterdir())
    assert names and all(Path(n).match(FRAME_PNG) for n in names)
    for sub in ("alpha", "matte"):
        assert sorted(p.name for p in (out / sub).iterdir()) == names, sub
    for sub in ("masks", "alpha", "matte"):
        for name in names:
            Image.open(out / sub / name).load()  # a truncated PNG raises
    for video in ("overlay.mp4", f"alpha.{alpha_format}"):
        assert video_frames(out / video) == len(names), video
    if total is not None:
        assert len(names) == total
    return len(names)


@pytest.mark.parametrize(
    "signals, alpha_format",
    [([signal.SIGINT], "mov"), ([signal.SIGTERM], "mov"), ([signal.SIGHUP], "webm"),
     ([signal.SIGINT, signal.SIGINT], "mov")],
    ids=["ctrl-c", "sigterm", "sighup", "two-ctrl-c"],
)
def test_stopped_run_leaves_playable_videos_in_step_with_the_pngs(data, tmp_path, signals, alpha_format):
    out = tmp_path / "o"
    proc = start(data, out, alpha_format)
    for k, sig in enumerate(signals):
        if k:
            time.sleep(0.05)  # the second signal lands while the first one's shutdown runs
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signals[0], err.decode()
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted"), err.decode()
    if signals[0] != signal.SIGINT:
        assert signals[0].name in lines[0]
    n = check_complete(out, alpha_format)
    assert 3 <= n < N


def test_rerun_after_sigkill(data, tmp_path):
    _, short, mask, weights = data
    out = tmp_path / "o"
    proc = start(data, out)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    runner = CliRunner()
    args = ["segment", str(short), "--mask", str(mask), "--weights", str(weights), "--out", str(out),
            "--outputs", OUTPUTS, "--device", "cpu", "--quiet"]
    r = runner.invoke(app, args)  # earlier results are there: one line asking for --overwrite
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and "--overwrite" in lines[0], r.output
    r = runner.invoke(app, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    check_complete(out, "mov", total=3)
