"""Output folders: what vostool wrote there (a manifest) and what ``--overwrite`` may replace.

Every file vostool writes into an output folder is first recorded in the folder's
``.vostool-manifest.jsonl`` (one JSON object a line, appended before the file is created,
so even a run killed with SIGKILL has its files and their ``.part``/``.tmp`` leftovers on
record). Preparing a folder for a run looks only at the run's *targets* (the PNG folders
and video files its ``--outputs`` write):

- a target holding anything vostool did not record (a user's file) is refused, with or
  without ``--overwrite``: vostool never deletes or overwrites a file it did not write;
- a target holding vostool's earlier results needs ``--overwrite``, which removes exactly
  the recorded files (and the folders vostool created, once empty);
- leftovers of an interrupted or killed run (``<file>.part``, ``<stem>.tmp<suffix>`` of a
  recorded file) are removed in any case;
- everything else in the folder (the input, a mask, notes, other outputs) is left alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from vostool.errors import VostoolError
from vostool.interrupts import deferred_signals

MANIFEST_NAME = ".vostool-manifest.jsonl"
PNG_TARGETS: dict[str, str] = {"masks": "masks", "objects": "objects", "probs": "probs", "alpha": "alpha",
                               "matte": "matte"}
VIDEO_TARGETS: dict[str, str] = {"overlay": "overlay.mp4"}
ALPHA_VIDEO_FILES: dict[str, str] = {"mov": "alpha.mov", "webm": "alpha.webm"}
_LEFTOVER_SUFFIX = ".part"


def output_targets(outputs: Iterable[str], alpha_format: str = "mov") -> list[str]:
    """Top-level names (folders and files, relative to the output folder) a run writes.

    Args:
        outputs: ``--outputs`` names (see :data:`vostool.io.writers.VALID_OUTPUTS`).
        alpha_format: ``mov`` or ``webm`` (the ``alpha-video`` file).
    """
    wanted = set(outputs)
    names = [folder for name, folder in PNG_TARGETS.items() if name in wanted]
    names += [file for name, file in VIDEO_TARGETS.items() if name in wanted]
    if "alpha-video" in wanted:
        names.append(ALPHA_VIDEO_FILES.get(alpha_format, f"alpha.{alpha_format}"))
    return names


ALL_TARGETS: tuple[str, ...] = tuple(PNG_TARGETS.values()) + tuple(VIDEO_TARGETS.values()) + tuple(
    ALPHA_VIDEO_FILES.values()
)


def _leftovers_of(rel: str) -> tuple[str, str]:
    """Names an unfinished write of ``rel`` leaves: ``rel.part`` (videos), ``stem.tmp.suffix`` (PNGs)."""
    head, _, name = rel.rpartition("/")
    stem, dot, suffix = name.rpartition(".")
    tmp = f"{stem}.tmp.{suffix}" if dot else f"{name}.tmp.png"
    return rel + _LEFTOVER_SUFFIX, f"{head}/{tmp}" if head else tmp


class Manifest:
    """The record of the files and folders vostool wrote in one output folder.

    ``files`` and ``dirs`` are POSIX paths relative to the folder. ``record()`` appends to
    the file (flushed, so the record survives the process) before the caller writes.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / MANIFEST_NAME
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self._fh: IO[str] | None = None
        self._ready_dirs: set[str] = set()
        self._load()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise VostoolError(f"cannot read {self.path} ({exc.strerror or exc})") from None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut short by a killed run
                continue
            if isinstance(entry, dict):
                if isinstance(entry.get("f"), str):
                    self.files.add(entry["f"])
                if isinstance(entry.get("d"), str):
                    self.dirs.add(entry["d"])

    def _append(self, entries: list[dict[str, str]]) -> None:
        if self._fh is None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._fh = open(self.path, "a", encoding="utf-8")
            if new:
                self._fh.write(json.dumps({"vostool-manifest": 1}) + "\n")
        self._fh.write("".join(json.dumps(e) + "\n" for e in entries))
        self._fh.flush()

    def record(self, rels: Iterable[str]) -> None:
        """Record files about to be written and create their folders (recording the new ones)."""
        entries: list[dict[str, str]] = []
        created: list[str] = []
        for rel in rels:
            head = rel.rpartition("/")[0]
            if head and head not in self._ready_dirs:
                parts = head.split("/")
                for k in range(1, len(parts) + 1):
                    sub = "/".join(parts[:k])
                    if sub in self._ready_dirs:
                        continue
                    if not (self.out_dir / sub).is_dir():
                        created.append(sub)
                    self._ready_dirs.add(sub)
            if rel not in self.files:
                entries.append({"f": rel})
                self.files.add(rel)
        entries = [{"d": d} for d in created if d not in self.dirs] + entries
        self.dirs.update(created)
        if entries:
            self._append(entries)
        for sub in created:  # after the record: a killed run leaves no unrecorded folder
            (self.out_dir / sub).mkdir(parents=True, exist_ok=True)

    def rewrite(self) -> None:
        """Replace the file with the current ``files`` and ``dirs`` (removes it when both are empty)."""
        self.close()
        if not self.files and not self.dirs:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + _LEFTOVER_SUFFIX)
        lines = [json.dumps({"vostool-manifest": 1})]
        lines += [json.dumps({"d": d}) for d in sorted(self.dirs)]
        lines += [json.dumps({"f": f}) for f in sorted(self.files)]
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def close(self) -> None:
        """Close the file (idempotent); ``record()`` reopens it."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class _Plan:
    """What is found in an output folder for a run's targets."""

    def __init__(self, out_dir: Path, targets: Iterable[str]) -> None:
        self.out_dir = out_dir
        self.manifest = Manifest(out_dir)
        self.foreign: list[str] = []  # not written by vostool: never touched
        self.results: list[str] = []  # vostool's earlier results in the targets
        self.leftovers: list[str] = []  # unfinished writes of recorded files, anywhere
        known = self.manifest.files
        leftover_names = {name for rel in known for name in _leftovers_of(rel)}
        leftover_names.add(MANIFEST_NAME + _LEFTOVER_SUFFIX)  # a manifest rewrite cut short
        for head in sorted({name.rpartition("/")[0] for name in leftover_names}):
            try:
                names = os.listdir(out_dir / head) if head else os.listdir(out_dir)
            except OSError:  # the folder is gone or is not a folder
                continue
            self.leftovers += [rel for name in sorted(names)
                               if (rel := f"{head}/{name}" if head else name) in leftover_names]
        leftovers = set(self.leftovers)
        for target in targets:
            for rel in (target, target + _LEFTOVER_SUFFIX):
                path = out_dir / rel
                if not os.path.lexists(path) or rel in leftovers:
                    continue
                if path.is_dir() and not path.is_symlink():
                    self._walk(path, rel, known, leftovers)
                elif rel in known:
                    self.results.append(rel)
                else:
                    self.foreign.append(rel)

    def _walk(self, path: Path, rel: str, known: set[str], leftovers: set[str]) -> None:
        for root, dirnames, filenames in os.walk(path):
            base = Path(root).relative_to(self.out_dir).as_posix()
            for name in sorted(dirnames):
                if (Path(root) / name).is_symlink():
                    self.foreign.append(f"{base}/{name}")
            for name in sorted(filenames):
                entry = f"{base}/{name}"
                if entry in leftovers:
                    continue
                (self.results if entry in known else self.foreign).append(entry)


def check_out_dir(out_dir: Path, targets: Iterable[str] | None = None, overwrite: bool = False) -> None:
    """Check that a run may write ``targets`` into ``out_dir``, changing nothing.

    Args:
        out_dir: the output folder (need not exist).
        targets: see :func:`output_targets` (default: every output vostool can write).
        overwrite: whether vostool's earlier results in the targets may be replaced.

    Raises:
        VostoolError: ``out_dir`` is a file; a target holds a file vostool did not write;
            a target holds vostool's results and ``overwrite`` is False.
    """
    _plan(Path(out_dir), targets, overwrite)


def _plan(out_dir: Path, targets: Iterable[str] | None, overwrite: bool) -> _Plan | None:
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise VostoolError(f"output path {out_dir} exists and is not a folder")
    if not out_dir.is_dir():
        return None
    plan = _Plan(out_dir, ALL_TARGETS if targets is None else targets)
    if plan.foreign:
        more = f" and {len(plan.foreign) - 1} more" if len(plan.foreign) > 1 else ""
        raise VostoolError(
            f"output folder {out_dir} holds {plan.foreign[0]}{more}, not written by vostool, where this run "
            "would write; vostool never replaces such files: move them or choose another --out"
        )
    if plan.results and not overwrite:
        tops = sorted({r.split("/")[0] + ("/" if "/" in r else "") for r in plan.results})
        raise VostoolError(
            f"output folder {out_dir} already holds vostool outputs ({', '.join(tops)}); "
            "pass --overwrite to replace them"
        )
    return plan


def prepare_out_dir(out_dir: Path, overwrite: bool, targets: Iterable[str] | None = None) -> None:
    """Create ``out_dir`` and clear the way for a run writing ``targets`` (see the module doc).

    With ``overwrite`` vostool's own earlier results in the targets are removed (only the
    files its manifest lists); files vostool did not write are never removed.

    Raises:
        VostoolError: as :func:`check_out_dir`, or the folder cannot be created or cleared.
    """
    out_dir = Path(out_dir)
    plan = _plan(out_dir, targets, overwrite)
    with deferred_signals():  # the removals and the manifest that lists them change together
        _clear(out_dir, plan)


def _clear(out_dir: Path, plan: _Plan | None) -> None:
    try:
        if plan is not None and (plan.results or plan.leftovers):
            manifest = plan.manifest
            for rel in plan.leftovers + plan.results:
                (out_dir / rel).unlink(missing_ok=True)
            manifest.files.difference_update(plan.results)
            manifest.files = {rel for rel in manifest.files if os.path.lexists(out_dir / rel)}
            for rel in sorted(manifest.dirs, key=lambda d: d.count("/"), reverse=True):
                path = out_dir / rel
                if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                    path.rmdir()
                    manifest.dirs.discard(rel)
                elif not path.exists():
                    manifest.dirs.discard(rel)
            manifest.rewrite()
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VostoolError(f"cannot prepare output folder {out_dir} ({exc.strerror or exc})") from None
