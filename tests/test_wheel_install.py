"""The wheel carries the shipped weights: build it, install it into a fresh venv outside the
checkout, and segment the first frames of the demo with the packaged crvos checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.skipif(not (_have("pip") and _have("setuptools")), reason="needs pip and setuptools")
def test_wheel_installs_with_weights_and_segments_the_demo(tmp_path):
    # 1. build from a copy of the tree, so that the checkout gets no build/ folder
    src = tmp_path / "src"
    shutil.copytree(ROOT / "vostool", src / "vostool",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("vostool-*.whl")

    # 2. a fresh venv; the dependencies (torch, ...) come from this interpreter's site-packages via
    # a .pth line, which does not run that folder's own .pth files (so no editable vostool leaks in)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(py), "install", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)

    # 3. the first 3 frames of the demo, run from a folder outside the checkout
    work = tmp_path / "work"
    work.mkdir()
    clip = work / "demo3"
    clip.mkdir()
    with av.open(str(ROOT / "examples" / "demo.mp4")) as c:
        for i, frame in enumerate(c.decode(video=0)):
            frame.to_image().save(clip / f"{i:05d}.png")
            if i == 2:
                break
    env = {k: v for k, v in os.environ.items()
           if k not in ("VOSTOOL_WEIGHTS", "VOSTOOL_WEIGHTS_URL", "PYTHONPATH")}
    env["VOSTOOL_CACHE"] = str(tmp_path / "empty-cache")
    where = subprocess.run([str(py), "-c", "import vostool.models.weights as w; "
                            "print(w.resolve_weights('crvos'))"],
                           cwd=work, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the packaged file, not the checkout's
    cli = env_dir / ("Scripts/vostool.exe" if os.name == "nt" else "bin/vostool")
    out = work / "out"
    r = subprocess.run([str(cli), "segment", str(clip), "--mask", str(ROOT / "examples" / "demo_mask.png"),
                        "--out", str(out), "--outputs", "masks", "--device", "cpu", "--size", "240", "--quiet"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    masks = sorted((out / "masks").glob("*.png"))
    assert [p.name for p in masks] == ["00000.png", "00001.png", "00002.png"]
    first = np.array(Image.open(ROOT / "examples" / "demo_mask.png"))
    assert np.array_equal(np.array(Image.open(masks[0])), first)  # frame 0 is the given mask
    last = np.array(Image.open(masks[-1]))
    assert last.shape == first.shape
    for oid in (1, 2):  # both objects of the demo (ball, kite) are still found two frames on
        assert (last == oid).sum() > 0.3 * (first == oid).sum() > 0
