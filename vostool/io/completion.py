"""Completion markers: how a rerun with ``--skip-done`` knows a video is finished.

``segment`` removes ``.vostool-done.json`` from an output folder before it writes there,
and writes it again (atomically) only after every output of the video is closed: the
last file of a run. A folder with a marker whose outputs cover what is asked now, and
whose listed outputs are all present, is complete; anything else (no marker: a run
killed or preempted mid-video; other outputs asked for) is done again. The marker sits
beside the manifest of :mod:`vostool.io.outdir` and is never one of a run's targets, so
``--overwrite`` does not touch it; ``segment`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DONE_NAME = ".vostool-done.json"


def clear_done(out_dir: Path) -> None:
    """Remove the marker (before a run writes into ``out_dir``)."""
    try:
        (Path(out_dir) / DONE_NAME).unlink(missing_ok=True)
    except IsADirectoryError:  # pragma: no cover - someone made a folder of that name
        pass


def mark_done(out_dir: Path, outputs: Iterable[str], files: Iterable[str], **info: Any) -> None:
    """Write the marker: the ``--outputs`` names, the top-level files/folders they made
    (checked by :func:`is_done`), and any ``info`` (frames, input, model)."""
    path = Path(out_dir) / DONE_NAME
    data = {"vostool-done": 1, "outputs": sorted(outputs), "files": sorted(files), **info}
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_done(out_dir: Path) -> dict[str, Any] | None:
    """The marker's content, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads((Path(out_dir) / DONE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("vostool-done") == 1 else None


def is_done(out_dir: Path, outputs: Iterable[str]) -> bool:
    """Whether ``out_dir`` holds a finished run that wrote every name in ``outputs``."""
    data = read_done(out_dir)
    if data is None:
        return False
    if not set(outputs) <= set(data.get("outputs", [])):
        return False
    return all(os.path.lexists(Path(out_dir) / rel) for rel in data.get("files", []))
