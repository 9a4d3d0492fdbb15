"""DistributedDataParallel smoke test: two CPU processes (gloo) launched by torchrun run the
same ``vostool train`` command for two steps on a tiny DAVIS-layout tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vostool.train import load_run


def make_davis(root: Path, seqs: int = 3, frames: int = 5, h: int = 48, w: int = 64) -> Path:
    rng = np.random.default_rng(1)
    for s in range(seqs):
        name = f"seq{s}"
        (root / "JPEGImages/480p" / name).mkdir(parents=True)
        (root / "Annotations/480p" / name).mkdir(parents=True)
        bg = (rng.random((h, w, 3)) * 120).astype(np.uint8)
        for t in range(frames):
            img = bg.copy()
            m = np.zeros((h, w), np.uint8)
            m[10 + t:26 + t, 12 + 2 * t:32 + 2 * t] = 1
            img[m > 0] = (200, 60 + 30 * s, 40)
            Image.fromarray(img).save(root / "JPEGImages/480p" / name / f"{t:05d}.jpg")
            Image.fromarray(m * 255).save(root / "Annotations/480p" / name / f"{t:05d}.png")
    return root


def test_ddp_two_cpu_processes(tmp_path):
    data = make_davis(tmp_path / "davis")
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vostool.train", "--model", "crvos", "--backbone", "mobilenet_v2", "--no-pretrained",
           "--data", str(data), "--size", "32x48", "--clip-len", "3", "--batch", "1", "--iters", "2",
           "--precision", "fp32", "--device", "cpu", "--log-every", "1", "--val-sequences", "seq2",
           "--out", str(out)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ck = load_run(out / "last.pt")
    assert ck["iteration"] == 2
    assert ck["hardware"].startswith("2 x ")
    assert ck["commands"][-1].startswith("torchrun --nproc_per_node 2 -m vostool.train")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    log = (out / "log.txt").read_text()
    assert "it 2/2" in log and "val it 2" in log
    # one log line per iteration: only rank 0 writes
    assert log.count("it 1/2") == 1
