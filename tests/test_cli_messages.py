"""Messages are printed as they are: square brackets in paths or hints are not rich markup."""

from __future__ import annotations

from typer.testing import CliRunner

from vostool.cli.app import app


def test_error_line_keeps_square_brackets(tmp_path):
    missing = tmp_path / "no[such]" / "clip[1].mp4"
    result = CliRunner().invoke(app, ["segment", str(missing), "--mask", str(tmp_path / "m.png")])
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()] if result.stderr_bytes is not None else []
    text = result.stderr if result.stderr_bytes is not None else result.output
    assert "no[such]" in text and "clip[1].mp4" in text
    assert len(lines) <= 1
