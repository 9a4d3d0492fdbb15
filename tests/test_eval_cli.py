"""`vostool eval` end to end on small synthetic DAVIS-layout trees (no trained weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import vostool.eval.api as eval_api
from vostool.cli.eval import eval_app
from vostool.errors import VostoolError
from vostool.eval import evaluate_davis, read_index_png
from vostool.types import FrameResult

COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
H, W, T = 40, 64, 5

app = typer.Typer()
app.add_typer(eval_app, name="eval")


@app.callback()
def _root() -> None:
    """Test app."""


def invoke(*args: str, **kw: Any) -> Any:
    return CliRunner().invoke(app, ["eval", *args], **kw)


def _palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(ids.astype(np.uint8), mode="L").convert("P")
    im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


def _scene(t: int, n_objects: int) -> np.ndarray:
    """Ids of frame t: objects move right by 2 pixels a frame; a void band around object 1."""
    ids = np.zeros((H, W), np.uint8)
    ids[8:20, 4 + 2 * t : 20 + 2 * t] = 1
    if n_objects == 2:
        ids[26:36, 40:56] = 2
        ids[7, 4 + 2 * t : 20 + 2 * t] = 255
    return ids


def make_davis(root: Path, year: int, seqs: tuple[str, ...] = ("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for s in seqs:
        for t in range(T):
            img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            (root / "JPEGImages/480p" / s).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "JPEGImages/480p" / s / f"{t:05d}.jpg")
            ids = _scene(t, 1 if year == 2016 else 2)
            ann = root / "Annotations/480p" / s / f"{t:05d}.png"
            if year == 2016:  # binary 0/255 greyscale, as DAVIS-2016 ships them
                ann.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray((ids > 0).astype(np.uint8) * 255, mode="L").save(ann)
            else:
                _palette_png(ann, ids)
            lines.append(f"/JPEGImages/480p/{s}/{t:05d}.jpg /Annotations/480p/{s}/{t:05d}.png")
    sets = root / "ImageSets" / ("480p" if year == 2016 else "2017")
    sets.mkdir(parents=True)
    # DAVIS-2016 lists every frame; DAVIS-2017 lists sequence names
    (sets / "val.txt").write_text("\n".join(lines if year == 2016 else seqs) + "\n")
    return root


class CopyFirstMask:
    """A propagator that repeats the first mask: J decays as the objects move away."""

    device_name = "fake-cpu"
    precision = "fp32"

    def start(self, image: np.ndarray, masks: np.ndarray) -> FrameResult:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        self.mask = np.asarray(masks).astype(np.uint8)
        return FrameResult(self.mask, np.zeros((0, H, W), np.uint8), [])

    def step(self, image: np.ndarray) -> FrameResult:
        return FrameResult(self.mask.copy(), np.zeros((0, H, W), np.uint8), [])


@pytest.fixture()
def fake_model(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def build(model: str, weights: Any = None, **kw: Any) -> CopyFirstMask:
        calls.append((model, weights, kw))
        return CopyFirstMask()

    monkeypatch.setattr(eval_api, "build_propagator", build)
    return calls


def test_davis16_run_csv_json_and_results(tmp_path: Path, fake_model: list) -> None:
    root = make_davis(tmp_path / "DAVIS", 2016)
    out = tmp_path / "out"
    out.mkdir()
    # stale CSVs from an older run must be replaced
    (out / "global_results-val.csv").write_text("J&F-Mean\n0.999\n")
    (out / "per-sequence_results-val.csv").write_text("Sequence,J-Mean,F-Mean\nold_1,1,1\n")
    r = invoke("davis16", "--davis-root", str(root), "--model", "fake", "--out", str(out), "--json",
               "--workers", "1", "--quiet")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert fake_model[0][0] == "fake"
    for c in COLUMNS:
        assert 0.0 <= data[c] <= 1.0, (c, data[c])
        assert data["global"][c] == data[c]
    assert data["model"] == "fake" and data["device"] == "fake-cpu" and data["fps"] > 0
    assert data["frames"] == 2 * T
    assert [row["Sequence"] for row in data["per_sequence"]] == ["cat_1", "dog_1"]
    assert data["J-Decay"] > 0  # the copied mask falls behind the moving object
    # every frame written as an index PNG with ids 0/1
    for s in ("cat", "dog"):
        for t in range(T):
            with Image.open(out / s / f"{t:05d}.png") as im:
                assert im.mode == "P"
            assert set(np.unique(read_index_png(out / s / f"{t:05d}.png"))) <= {0, 1}
    g_lines = (out / "global_results-val.csv").read_text().splitlines()
    assert g_lines[0] == "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
    assert g_lines[1] == ",".join(f"{data[c]:.3f}" for c in COLUMNS)
    s_lines = (out / "per-sequence_results-val.csv").read_text().splitlines()
    assert s_lines[0] == "Sequence,J-Mean,F-Mean"
    assert [line.split(",")[0] for line in s_lines[1:]] == ["cat_1", "dog_1"]
    assert all(len(line.split(",")[1]) == 5 for line in s_lines[1:])  # 3 decimals

    # scoring the written results again gives the same figures (and table output without --json)
    r2 = invoke("davis16", "--davis-root", str(root), "--results", str(out), "--json", "--quiet")
    assert r2.exit_code == 0, r2.output
    again = json.loads(r2.stdout)
    assert all(again[c] == data[c] for c in COLUMNS)
    assert again["model"] is None and again["fps"] is None
    r3 = invoke("davis16", "--davis-root", str(root), "--results", str(out), "--sequences", "dog",
                "--workers", "2")
    assert r3.exit_code == 0, r3.output
    assert "dog_1" in r3.stdout and "cat_1" not in r3.stdout and "J&F-Mean" in r3.stdout
    assert (out / "per-sequence_results-val.csv").read_text().splitlines()[1:] == [s_lines[2]]


def test_davis_root_from_environment(tmp_path: Path, fake_model: list) -> None:
    root = make_davis(tmp_path / "DAVIS", 2016, seqs=("cat",))
    r = invoke("davis16", "--out", str(tmp_path / "o"), "--json", "--quiet", env={"DAVIS_ROOT": str(root)})
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["sequences"] == 1


def test_davis17_multi_object_run_and_parallel_scoring(tmp_path: Path, fake_model: list) -> None:
    root = make_davis(tmp_path / "DAVIS17", 2017)
    out = tmp_path / "out17"
    r = invoke("davis17", "--davis-root", str(root), "--out", str(out), "--json", "--workers", "2",
               "--quiet")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [row["Sequence"] for row in data["per_sequence"]] == ["cat_1", "cat_2", "dog_1", "dog_2"]
    by_name = {row["Sequence"]: row for row in data["per_sequence"]}
    assert by_name["cat_2"]["J-Mean"] == 1.0  # object 2 does not move
    assert by_name["cat_1"]["J-Mean"] < 1.0
    # the first mask went to the model with void (255) as background
    first = read_index_png(out / "cat" / "00000.png")
    assert set(np.unique(first)) == {0, 1, 2}
    for c in COLUMNS:
        assert 0.0 <= data[c] <= 1.0
    assert (out / "global_results-val.csv").is_file()


def test_folders_command(tmp_path: Path) -> None:
    for t in range(T):
        _palette_png(tmp_path / "gt" / "v1" / f"{t}.png", _scene(t, 2))
        _palette_png(tmp_path / "pred" / "v1" / f"{t}.png", np.where(_scene(t, 2) == 255, 0, _scene(t, 2)))
    r = invoke("folders", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["J&F-Mean"] == 1.0 and data["objects"] == 2
    assert (tmp_path / "pred" / "global_results.csv").read_text().splitlines()[1] == \
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000"
    # 0/255 masks: no object without --binary (255 is void), one object with it
    for t in range(T):
        m = (_scene(t, 1) > 0).astype(np.uint8) * 255
        for d in ("gtb", "predb"):
            (tmp_path / d / "v").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m, mode="L").save(tmp_path / d / "v" / f"{t}.png")
    r = invoke("folders", "--gt", str(tmp_path / "gtb"), "--pred", str(tmp_path / "predb"))
    assert r.exit_code != 0 and "--binary" in r.output
    r = invoke("folders", "--gt", str(tmp_path / "gtb"), "--pred", str(tmp_path / "predb"), "--binary",
               "--json", "--quiet", "--legacy-uint8-decay", "--workers", "1")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["J-Mean"] == 1.0


def _expect_error(args: list[str], *fragments: str) -> None:
    r = invoke(*args)
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    for f in fragments:
        assert f in text, (f, text)
    assert "Traceback" not in r.output


def test_input_errors_are_one_line(tmp_path: Path, fake_model: list) -> None:
    root = make_davis(tmp_path / "DAVIS", 2017, seqs=("cat",))
    res = tmp_path / "res"
    for t in range(T):
        _palette_png(res / "cat" / f"{t:05d}.png", np.where(_scene(t, 2) == 255, 0, _scene(t, 2)))
    base = ["davis17", "--davis-root", str(root), "--quiet"]
    assert invoke(*base, "--results", str(res)).exit_code == 0

    (res / "cat" / "00002.png").unlink()  # missing frame
    _expect_error([*base, "--results", str(res)], "sequence cat", "frame 00002")

    _palette_png(res / "cat" / "00002.png", np.zeros((H // 2, W), np.uint8))  # size mismatch
    _expect_error([*base, "--results", str(res)], "64x20", "64x40")

    _palette_png(res / "cat" / "00002.png", np.full((H, W), 3, np.uint8))  # id above N = 2
    _expect_error([*base, "--results", str(res)], "object id 3", "2 object(s)")

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(res / "cat" / "00002.png")  # RGB
    _expect_error([*base, "--results", str(res)], "not an index PNG")

    _expect_error([*base, "--results", str(tmp_path / "nowhere")], "not found")
    _expect_error([*base, "--results", str(res), "--sequences", "cow"], "unknown sequence", "cow")
    _expect_error([*base, "--results", str(res), "--split", "test"], "ImageSets/2017/test.txt")
    _expect_error(["davis16", "--davis-root", str(root), "--quiet"], "ImageSets/480p/val.txt")
    _expect_error(["davis17", "--davis-root", str(tmp_path / "missing")], "is not a folder")
    r = invoke("davis17", "--quiet", env={"DAVIS_ROOT": ""})
    assert r.exit_code != 0 and "DAVIS_ROOT" in r.output


def test_library_call_with_injected_propagator(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "DAVIS", 2016, seqs=("cat",))
    report = evaluate_davis(root, year=2016, out_dir=tmp_path / "o", workers=1,
                            propagator_factory=CopyFirstMask)
    assert report.run is not None and report.run.frames == T
    assert report.csv_files[0].name == "global_results-val.csv"
    assert report.result.rows[0].name == "cat_1"
    with pytest.raises(VostoolError, match="--results"):
        evaluate_davis(root, year=2016, results_dir=tmp_path / "o", model="x")


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="the holder uses fcntl (POSIX)")
def test_a_folder_in_use_by_another_eval_is_one_clear_error(tmp_path: Path, fake_model: list,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Two evaluations writing one results folder at once (two shells, one default folder)
    would mix their PNGs and print wrong figures: the second one stops with one line."""
    import subprocess
    import sys

    root = make_davis(tmp_path / "DAVIS", 2016, seqs=("cat",))
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the folder, as a running eval does
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+b'); "
         "fcntl.flock(f.fileno(), fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(out / ".vostool-eval.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        _expect_error(["davis16", "--davis-root", str(root), "--model", "fake", "--out", str(out), "--quiet"],
                      "another vostool eval is using", "--out")
        assert not (out / "cat").exists()  # nothing of the second run was written
    finally:
        holder.kill()
        holder.wait()
    # once it is gone the folder is free again; the default folder names --adapt runs apart
    r = invoke("davis16", "--davis-root", str(root), "--model", "fake", "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert eval_api._default_out("davis16", "crvos", "val", adapt=True).name == "davis16-crvos-val-adapt"
    (tmp_path / "a_file").write_text("x")  # a results folder that cannot be made: one line too
    _expect_error(["davis16", "--davis-root", str(root), "--model", "fake", "--out", str(tmp_path / "a_file" / "o"),
                   "--quiet"], "cannot write results to")
    assert eval_api._default_out("davis16", "crvos", "val").name == "davis16-crvos-val"
