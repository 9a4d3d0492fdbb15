"""DistributedDataParallel smoke test: two CPU processes (gloo) launched by torchrun run the
same ``vostool train`` command for two steps on a tiny DAVIS-layout tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vostool.train import load_run

from synthetic import make_davis


def test_ddp_two_cpu_processes(tmp_path):
    data = make_davis(tmp_path / "davis", frames=5, x_step_per_seq=0, jpeg_quality=None)
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
