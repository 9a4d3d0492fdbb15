"""`vostool eval ... --report DIR`: report.html with bars (worst first), curves and strips whose
files exist, every sequence present; and, where Chromium is installed, every image loads."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import vostool.eval.api as eval_api
from test_eval_cli import CopyFirstMask, _palette_png, invoke, make_davis
from vostool.eval.html_report import THUMB_HEIGHT

ROOT = Path(__file__).resolve().parents[1]
H, W, T = 40, 64, 6
SHIFTS = {"alpha": 0, "bravo": 2, "charlie": 6, "delta": None}  # None: nothing predicted


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for name, shift in SHIFTS.items():
        for t in range(T):
            ids = np.zeros((H, W), np.uint8)
            ids[8:24, 4 + 3 * t : 24 + 3 * t] = 1
            ids[26:36, 40:56] = 2
            _palette_png(gt / name / f"{t:05d}.png", ids)
            p = np.zeros_like(ids) if shift is None else np.roll(ids, shift, axis=1)
            _palette_png(pred / name / f"{t:05d}.png", p)
    return gt, pred


def _refs(page: Path) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', page.read_text())


def test_folders_report(tmp_path: Path) -> None:
    gt, pred = _folders(tmp_path)
    rep = tmp_path / "rep"
    r = invoke("folders", "--gt", str(gt), "--pred", str(pred), "--workers", "1", "--quiet", "--report", str(rep))
    assert r.exit_code == 0, r.output
    page = rep / "report.html"
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<script" not in text
    # self-contained: only relative references, each to a file that exists
    refs = _refs(page)
    assert refs and all(not re.match(r"[a-z]+:", ref) and (rep / ref).is_file() for ref in refs), refs
    # every sequence: a bar per object, a curve, and the bars worst first
    for name in SHIFTS:
        assert f'id="curve-{name}"' in text
    bars = re.findall(r'<g class="bar" data-name="([^"]+)"', text)
    assert sorted(bars) == sorted(f"{n}_{k}" for n in SHIFTS for k in (1, 2))
    assert [b.rsplit("_", 1)[0] for b in bars][:2] == ["delta", "delta"]
    assert bars[-2:] == ["alpha_1", "alpha_2"]
    curve_order = re.findall(r'id="curve-([^"]+)"', text)
    assert curve_order == ["delta", "charlie", "bravo", "alpha"]
    # strips of the three worst sequences: T - 2 = 4 scored frames, prediction over ground truth
    assert sorted(p.name for p in (rep / "strips").iterdir()) == ["bravo.png", "charlie.png", "delta.png"]
    with Image.open(rep / "strips" / "delta.png") as im:
        tw = round(W * THUMB_HEIGHT / H)
        assert im.size == (4 * tw + 3 * 4, 2 * THUMB_HEIGHT + 4)
        strip = np.array(im.convert("RGB"))
    top, bottom = strip[:THUMB_HEIGHT], strip[THUMB_HEIGHT + 4 :]
    tinted = lambda a: (np.abs(a.astype(int) - 96).sum(-1) > 60).mean()  # noqa: E731
    assert tinted(top[20:]) < 0.02 < tinted(bottom[20:])  # nothing predicted, objects in the truth


def test_davis_report_over_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eval_api, "build_propagator", lambda *a, **k: CopyFirstMask())
    root = make_davis(tmp_path / "DAVIS", 2016)
    rep = tmp_path / "rep"
    r = invoke("davis16", "--davis-root", str(root), "--model", "fake", "--out", str(tmp_path / "out"),
               "--workers", "1", "--quiet", "--report", str(rep), "--json")
    assert r.exit_code == 0, r.output
    assert r.stdout.lstrip().startswith("{")  # --json stays clean: the report path goes to stderr
    text = (rep / "report.html").read_text()
    assert "cat" in text and "dog" in text and "fake" in text
    for ref in _refs(rep / "report.html"):
        assert (rep / ref).is_file()
    with Image.open(rep / "strips" / "cat.png") as im:
        strip = np.array(im.convert("RGB"))
    assert strip[40:THUMB_HEIGHT].std() > 30  # the (random) video frame under the overlay


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    gt, pred = _folders(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = invoke("folders", "--gt", str(gt), "--pred", str(pred), "--workers", "1", "--quiet",
               "--report", str(blocker))
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1 and "report" in r.output


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="needs Chromium (apt-get install chromium)")
def test_every_image_loads_in_chromium(tmp_path: Path) -> None:
    gt, pred = _folders(tmp_path)
    rep = tmp_path / "rep"
    assert invoke("folders", "--gt", str(gt), "--pred", str(pred), "--workers", "1", "--quiet",
                  "--report", str(rep)).exit_code == 0
    r = subprocess.run(["bash", str(ROOT / "scripts" / "check-report.sh"), str(rep / "report.html")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "IMAGES 3 BROKEN 0" in r.stdout
    # and a broken picture is caught
    (rep / "strips" / "delta.png").unlink()
    r = subprocess.run(["bash", str(ROOT / "scripts" / "check-report.sh"), str(rep / "report.html")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "BROKEN 1 strips/delta.png" in r.stdout, r.stdout + r.stderr
