"""Reporting scores: official-layout CSVs, a JSON payload and rich tables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from vostool.errors import VostoolError
from vostool.eval.scoring import GLOBAL_COLUMNS, EvalResult

GLOBAL_HEADER = ",".join(GLOBAL_COLUMNS)
PER_SEQUENCE_HEADER = "Sequence,J-Mean,F-Mean"


def _fmt(x: float) -> str:
    # pandas' to_csv(float_format="%.3f") as the official tool writes it: NaN is an empty cell.
    return "" if math.isnan(x) else "%.3f" % x


def csv_paths(out_dir: str | os.PathLike[str], split: str | None) -> tuple[Path, Path]:
    """Paths of the global and per-sequence CSVs: ``global_results-<split>.csv`` and
    ``per-sequence_results-<split>.csv`` (no ``-<split>`` suffix when split is None)."""
    suffix = f"-{split}" if split else ""
    out = Path(out_dir)
    return out / f"global_results{suffix}.csv", out / f"per-sequence_results{suffix}.csv"


def write_csvs(
    result: EvalResult, out_dir: str | os.PathLike[str], split: str | None
) -> tuple[Path, Path]:
    """Write both CSVs in the official layout (3 decimals), replacing any old ones.

    Returns (global_csv, per_sequence_csv).
    """
    global_path, seq_path = csv_paths(out_dir, split)
    g = result.global_figures
    global_text = GLOBAL_HEADER + "\n" + ",".join(_fmt(g[c]) for c in GLOBAL_COLUMNS) + "\n"
    seq_lines = [PER_SEQUENCE_HEADER]
    seq_lines += [f"{r.name},{_fmt(r.j_mean)},{_fmt(r.f_mean)}" for r in result.rows]
    seq_text = "\n".join(seq_lines) + "\n"
    try:
        global_path.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((global_path, global_text), (seq_path, seq_text)):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
    except OSError as exc:
        raise VostoolError(f"cannot write the results CSVs in {global_path.parent}: {exc}") from None
    return global_path, seq_path


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def json_payload(
    result: EvalResult,
    *,
    benchmark: str,
    split: str | None = None,
    model: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    fps: float | None = None,
    frames: int | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    csv_files: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """One JSON-ready dict: the seven global figures as top-level keys (fractions), the same
    again under ``global``, ``per_sequence`` rows, and how the run was made.

    NaN (only possible with the legacy uint8 decay) becomes null. ``fps``, ``device`` and
    ``model`` are null when existing results were scored.
    """
    figures = {c: _num(result.global_figures[c]) for c in GLOBAL_COLUMNS}
    payload: dict[str, Any] = dict(figures)
    payload.update(
        {
            "global": dict(figures),
            "per_sequence": [
                {"Sequence": r.name, "sequence": r.sequence, "object": r.object_id,
                 "frames": r.frames, **{k: _num(v) for k, v in r.figures().items()}}
                for r in result.rows
            ],
            "benchmark": benchmark,
            "split": split,
            "model": model,
            "device": device,
            "precision": precision,
            "fps": fps,
            "frames": frames,
            "sequences": len(result.sequences),
            "objects": len(result.rows),
            "scored_frames": result.scored_frames,
            "scoring_seconds": round(result.seconds, 3),
            "workers": result.workers,
            "legacy_uint8_decay": result.legacy_uint8_decay,
            "results_dir": str(results_dir) if results_dir is not None else None,
            "csv": [str(p) for p in csv_files] if csv_files else None,
        }
    )
    return payload


def _cell(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3f}"


def render_tables(
    result: EvalResult, console: Console, title: str = "DAVIS scores", per_sequence: bool = True
) -> None:
    """Print the global figures and (optionally) one row per object as rich tables."""
    if per_sequence:
        seq = Table(title=f"{title}: per sequence", title_justify="left", box=box.SIMPLE_HEAD,
                    padding=(0, 1), show_edge=False, pad_edge=False)
        seq.add_column("Sequence", style="bold", no_wrap=True)
        for c in GLOBAL_COLUMNS:  # short headers so that the table fits 80 columns
            seq.add_column(c.replace("-Mean", "").replace("-Recall", "-Rec").replace("-Decay", "-Dec"),
                           justify="right", no_wrap=True, min_width=5)
        for r in result.rows:
            f = r.figures()
            seq.add_row(r.name, *(_cell(f[c]) for c in GLOBAL_COLUMNS))
        console.print(seq)
        console.print()
    n_obj, n_seq = len(result.rows), len(result.sequences)
    glob = Table(title=f"{title}: global ({n_obj} object{'s' if n_obj != 1 else ''}, "
                 f"{n_seq} sequence{'s' if n_seq != 1 else ''})", title_justify="left")
    for c in GLOBAL_COLUMNS:
        glob.add_column(c, justify="right", style="bold" if c == "J&F-Mean" else None)
    glob.add_row(*(_cell(result.global_figures[c]) for c in GLOBAL_COLUMNS))
    console.print(glob)
