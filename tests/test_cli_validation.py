"""Bad options and usage errors in every command: exactly one line on stderr, a non-zero exit,
nothing created; plain help (no boxed panels, no ``<bool>`` metavars)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vostool.cli.app import app
from vostool.io.masks import save_index_png
from vostool.models import build_model, save_checkpoint

runner = CliRunner()
W, H = 64, 48


def invoke(*args: object, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_error_line(result) -> str:
    """The single ``error: ...`` line on stderr of a failed command (nothing else there)."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "╭" not in result.output and "│" not in result.output
    return lines[0]


# -- item 9: usage errors and help ------------------------------------------------------------

def test_usage_errors_are_one_line(tmp_path):
    line = one_error_line(invoke("segment", "x.mp4", "--size", "abc"))
    assert "--size" in line and "vostool segment -h" in line
    assert "Missing argument" in one_error_line(invoke("segment"))
    assert "--bogus" in one_error_line(invoke("segment", "x.mp4", "--bogus"))
    assert "--frames" in one_error_line(invoke("bench", "--frames", "many"))
    assert "--workers" in one_error_line(invoke("eval", "folders", "--gt", tmp_path, "--pred", tmp_path,
                                                "--workers", "x"))
    assert "No such command" in one_error_line(invoke("segmnt"))


def test_help_is_plain_without_bool_metavar():
    for cmd in (["segment"], ["bench"], ["train"], ["models"], ["eval", "davis16"], ["eval", "folders"]):
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output and "╭" not in r.output, cmd
    r = invoke("segment", "--help")
    assert "--overwrite " in r.output and "--quiet " in r.output


def test_version_and_bare_command_still_work():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("vostool ")
    r = invoke()
    assert "Usage: vostool" in r.output and "segment" in r.output


def test_models_lists_inference_size_without_breaking_words(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(build_model("crvos"), tmp_path / "crvos.safetensors", extra={"size": 352})
    monkeypatch.setenv("VOSTOOL_WEIGHTS", str(tmp_path))
    r = invoke("models", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    row = next(ln for ln in lines if ln.startswith("│ crvos"))
    assert "352" in row.split("│")[4]  # the size column
    assert all(len(ln) <= 80 for ln in lines if ln.startswith(("│", "┃", "┏", "└")))
    # the long texts are whole lines (soft-wrapped by the terminal), never cut inside a word
    assert any("CRVOS: Clue Refining Network for Video Object Segmentation" in ln for ln in lines)
    r = invoke("models", "--json")
    crvos = next(m for m in __import__("json").loads(r.output)["models"] if m["model"] == "crvos")
    assert crvos["inference_size"] == 352
