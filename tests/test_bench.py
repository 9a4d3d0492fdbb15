"""``vostool bench``: JSON keys and types, --long memory, the bf16 -> fp32 fallback, the
table. Tiny clips on the CPU; timings are never asserted."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from vostool.bench import BenchResult, benchmark, conditions_lines, results_table
from vostool.bench.synthetic import SyntheticClip, clip_size
from vostool.cli.bench import bench
from vostool.cli.common import friendly_errors

TINY = dict(random_weights=True, device="cpu", size=32, frames=3, warmup=1)


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(friendly_errors(bench))

    @app.command("noop")
    def _noop() -> None:  # a second command keeps "bench" as a sub-command
        pass

    return app


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_json_keys_and_types():
    result = CliRunner().invoke(_app(), ["bench", "--model", "crvos", "--size", "32", "--frames", "3",
                                         "--warmup", "1", "--random-weights", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    rows = _json_lines(result.stdout)  # nothing but JSON on stdout
    assert len(rows) == 1
    r = rows[0]
    types = {
        "model": str, "fps_model": float, "fps_end_to_end": float, "ms_median": float, "ms_p90": float,
        "peak_mem_mb": float, "device": str, "precision": str, "size": int, "torch": str,
        "channels_last": bool, "compile": bool, "objects": int, "threads": int, "weights": str,
        "backbone": str, "internal_hw": list, "padded_hw": list, "notes": list,
    }
    for key, kind in types.items():
        assert key in r, key
        assert isinstance(r[key], kind), (key, r[key])
    assert r["model"] == "crvos" and r["size"] == 32 and r["weights"] == "random"
    assert r["precision"] in ("fp32", "bf16")
    assert r["fps_model"] > 0 and r["fps_end_to_end"] > 0 and r["ms_median"] > 0 and r["peak_mem_mb"] > 0
    assert r["frames_end_to_end"] == 4  # the first frame and the 3 timed ones
    assert r["internal_hw"] == [32, 56] and r["padded_hw"] == [32, 64]
    assert r["compile"] is False
    assert r["propagation_share"] is None  # crvos has no streams


def test_long_reports_memory_at_start_and_end():
    r = benchmark("crvos", long=20, end_to_end=False, **TINY)
    assert r.long_frames == 20
    assert r.mem_start_mb > 0 and r.mem_end_mb > 0
    assert r.long_ms_median > 0
    d = r.to_dict()
    assert d["mem_start_mb"] == r.mem_start_mb and d["fps_end_to_end"] is None


def test_precision_falls_back_to_fp32_without_bf16(monkeypatch):
    monkeypatch.setenv("VOSTOOL_NO_BF16", "1")
    r = benchmark("crvos", precision="auto", end_to_end=False, **TINY)
    assert r.precision == "fp32"
    r = benchmark("crvos", precision="bf16", end_to_end=False, **TINY)
    assert r.precision == "fp32"


def test_objects_backbone_and_baseline():
    r = benchmark("crvos", backbone="resnet18", objects=3, end_to_end=False, baseline=True, baseline_frames=2,
                  precision="fp32", **TINY)
    assert r.backbone == "resnet18" and r.objects == 3 and r.precision == "fp32"
    assert r.baseline_ms > 0 and r.baseline_ratio > 0


def test_cli_table_lists_conditions():
    result = CliRunner().invoke(_app(), ["bench", "--size", "32", "--frames", "2", "--warmup", "1",
                                         "--random-weights", "--device", "cpu", "--no-e2e"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("crvos", "FPS model", "ms median", "device:", "torch", "precision", "channels_last",
                 "torch.compile", "threads", "internal size 32"):
        assert word in out, word


def test_cli_errors_are_one_line():
    result = CliRunner().invoke(_app(), ["bench", "--model", "nope", "--device", "cpu", "--json"])
    assert result.exit_code != 0
    result = CliRunner().invoke(_app(), ["bench", "--all", "--model", "crvos"])
    assert result.exit_code != 0


def test_explicit_missing_weights_fail(tmp_path):
    with pytest.raises(Exception, match="not found"):
        benchmark("crvos", weights=tmp_path / "none.safetensors", device="cpu", size=32, frames=1)


def test_table_renders_every_column():
    from rich.console import Console

    r = benchmark("crvos", long=3, end_to_end=False, **TINY)
    console = Console(width=250, record=True)
    console.print(results_table([r, r]))
    text = console.export_text()
    assert "mem start->end" in text and text.count("crvos") == 2
    assert any("device:" in line for line in conditions_lines([r]))


def test_synthetic_clip():
    h, w = clip_size(480)
    assert (h, w) == (480, 854)
    clip = SyntheticClip(h, w, objects=4)
    f0, f5 = clip.frame(0), clip.frame(5)
    assert f0.shape == (480, 854, 3) and f0.dtype.name == "uint8"
    assert (f0 != f5).any()  # it moves
    mask = clip.first_mask()
    assert set(mask.ravel().tolist()) == {0, 1, 2, 3, 4}


def test_result_dataclass_roundtrips_to_json():
    r = benchmark("crvos", end_to_end=False, **TINY)
    assert isinstance(r, BenchResult)
    json.dumps(r.to_dict())
