"""``segment`` over many inputs: first masks by stem (``--mask-dir``), this worker's share
(``--shard``, torchrun), skipping finished videos (``--skip-done``) and the summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vostool.engine.shard import Worker
from vostool.errors import VostoolError
from vostool.io.completion import is_done

MASK_EXTS = (".png",)


def input_stem(path: Path) -> str:
    """The name a video is matched by: a file's stem, a folder's name."""
    return path.name if path.is_dir() else path.stem


def mask_for(mask_dir: Path, stem: str) -> Path | None:
    """``DIR/<stem>.png``, or the first PNG (natural order) of ``DIR/<stem>/`` (the DAVIS
    ``Annotations`` layout); None if neither exists."""
    from vostool.data.files import natural_key

    for ext in MASK_EXTS:
        if (mask_dir / f"{stem}{ext}").is_file():
            return mask_dir / f"{stem}{ext}"
    folder = mask_dir / stem
    if folder.is_dir():
        pngs = sorted((p for p in folder.iterdir() if p.suffix.lower() in MASK_EXTS and p.is_file()),
                      key=lambda p: natural_key(p.name))
        if pngs:
            return pngs[0]
    return None


def masks_by_stem(paths: list[Path], mask_dir: Path) -> list[Path]:
    """One first mask per input, matched by stem (see :func:`mask_for`).

    Raises:
        VostoolError: ``mask_dir`` is not a folder, or some inputs have no mask (all named).
    """
    if not mask_dir.is_dir():
        raise VostoolError(f"--mask-dir {mask_dir}: no such folder")
    found = [mask_for(mask_dir, input_stem(p)) for p in paths]
    missing = [input_stem(p) for p, m in zip(paths, found) if m is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VostoolError(f"--mask-dir {mask_dir}: no mask for {len(missing)} of {len(paths)} input(s): {shown} "
                           f"(expected {mask_dir}/<stem>.png or {mask_dir}/<stem>/<first>.png)")
    return found  # type: ignore[return-value]


@dataclass
class Job:
    """One input to segment: where its outputs go and its first mask (None: ``--mask`` or none)."""

    path: Path
    dest: Path
    mask: Path | None = None


@dataclass
class Plan:
    """This worker's jobs, and the inputs it skipped as done."""

    jobs: list[Job]
    skipped: list[Job] = field(default_factory=list)
    total: int = 0


def plan_jobs(
    paths: list[Path], dests: list[Path], worker: Worker, mask_dir: Path | None = None,
    skip_done: bool = False, outputs: set[str] | None = None,
) -> Plan:
    """Split the inputs over workers, then drop this worker's finished ones.

    Args:
        paths, dests: every input and its output folder (the same lists in every worker).
        worker: this process's share (:func:`vostool.engine.shard.current_worker`).
        mask_dir: match a first mask to each input by stem (checked for every input, so
            every worker fails alike before any work).
        skip_done: skip inputs whose output folder is complete (:func:`is_done`).
        outputs: the ``--outputs`` names a finished folder must hold.
    """
    masks: list[Path | None] = masks_by_stem(paths, mask_dir) if mask_dir is not None else [None] * len(paths)
    mine = worker.take([Job(p, d, m) for p, d, m in zip(paths, dests, masks)])
    if not skip_done:
        return Plan(mine, [], len(paths))
    todo = [j for j in mine if not is_done(j.dest, outputs or set())]
    return Plan(todo, [j for j in mine if j not in todo], len(paths))


def summary_line(reports: list[list[dict[str, Any]]], plan_total: int, workers: int) -> str:
    """One line over every worker's per-video reports (``frames``, ``seconds``, ``skipped``)."""
    flat = [r for rep in reports for r in rep]
    done = [r for r in flat if not r.get("skipped")]
    skipped = len(flat) - len(done)
    frames = sum(int(r.get("frames", 0)) for r in done)
    secs = max([sum(float(r.get("seconds", 0.0)) for r in rep if not r.get("skipped")) for rep in reports] or [0.0])
    text = f"{len(done)} of {plan_total} video(s) segmented ({frames} frames)"
    if skipped:
        text += f", {skipped} skipped as done"
    if workers > 1:
        text += f" by {workers} processes"
    return text + f"; {secs:.1f} s for the slowest process"
