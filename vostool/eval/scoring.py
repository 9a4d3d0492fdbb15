"""Scoring results against ground truth: per sequence, then over a whole split in parallel.

Every call reads the PNGs and recomputes every figure; nothing is cached between runs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vostool.errors import VostoolError
from vostool.data.davis import SequenceSpec, list_frames
from vostool.data.masks import read_index_mask, without_void
from vostool.eval.metrics import (
    BOUND_TH,
    _contour_accuracy,
    bound_pixels,
    disk_kernel,
    region_similarity,
    statistics,
)

#: Column names of the official global table, in order.
GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)


@dataclass
class SequenceScore:
    """Per-frame figures of one sequence.

    object_ids: the objects 1..N (N = largest id in the first ground-truth frame; 1 for
        single-object scoring).
    frames: names of the scored frames (all but the first and the last), T of them.
    j, f: N x T float64, region similarity and contour accuracy per object and frame.
    """

    name: str
    object_ids: list[int]
    frames: list[str]
    j: np.ndarray
    f: np.ndarray


@dataclass
class ObjectRow:
    """Sequence statistics of one object; ``name`` is ``<sequence>_<object id>``."""

    sequence: str
    object_id: int
    frames: int
    j_mean: float
    j_recall: float
    j_decay: float
    f_mean: float
    f_recall: float
    f_decay: float

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.object_id}"

    @property
    def jf_mean(self) -> float:
        return (self.j_mean + self.f_mean) / 2.0

    def figures(self) -> dict[str, float]:
        """The seven figures of this object, keyed like the global table."""
        return {
            "J&F-Mean": self.jf_mean,
            "J-Mean": self.j_mean,
            "J-Recall": self.j_recall,
            "J-Decay": self.j_decay,
            "F-Mean": self.f_mean,
            "F-Recall": self.f_recall,
            "F-Decay": self.f_decay,
        }


@dataclass
class EvalResult:
    """Scores of a set of sequences.

    global_figures: the seven official figures (keys :data:`GLOBAL_COLUMNS`), fractions in
        [0, 1] (decays in [-1, 1]), each the plain mean over all objects of all sequences.
    rows: one :class:`ObjectRow` per object, sequences in split order, objects by id.
    sequences: the per-frame figures behind the rows.
    seconds: wall time spent scoring; workers: processes used (1 = in this process).
    """

    global_figures: dict[str, float]
    rows: list[ObjectRow]
    sequences: list[SequenceScore] = field(default_factory=list)
    seconds: float = 0.0
    workers: int = 1
    legacy_uint8_decay: bool = False

    @property
    def scored_frames(self) -> int:
        return sum(len(s.frames) for s in self.sequences)


def score_sequence(
    gt_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    *,
    binary: bool = False,
    frames: Sequence[str] | None = None,
    name: str | None = None,
    bound_th: float = BOUND_TH,
) -> SequenceScore:
    """Score one sequence of result index PNGs against its ground truth.

    gt_dir / pred_dir: folders of ``<frame>.png`` index PNGs (H x W each). ``frames`` are the
    ground-truth frame names in order (default: every PNG in ``gt_dir``, in natural order); the
    first and the last are not scored, and only the scored ones are read from ``pred_dir``.
    binary: single-object scoring (DAVIS-2016): any non-zero pixel is the object, in the
    ground truth and in the results. Otherwise pixel values are object ids: ground-truth 255
    ("void") counts as background, the objects are 1..N with N the largest id of the first
    ground-truth frame, an object missing from a result frame scores as an empty mask and a
    result id above N is an error.
    Raises VostoolError on a missing frame, a size mismatch, a non-index PNG or a bad id.
    """
    gt_dir = Path(gt_dir)
    pred_dir = Path(pred_dir)
    name = name or gt_dir.name
    frames = list(frames) if frames is not None else list(list_frames(gt_dir, name))
    if len(frames) < 3:
        raise VostoolError(
            f"sequence {name} has {len(frames)} frame(s); at least 3 are needed "
            "(the first and last frames are not scored)"
        )
    first = read_index_mask(gt_dir / f"{frames[0]}.png", "ground truth")
    if binary:
        n_objects = 1
    else:
        first = without_void(first)
        n_objects = int(first.max())
        if n_objects == 0:
            raise VostoolError(
                f"the first ground-truth frame of sequence {name} ({gt_dir / frames[0]}.png) "
                "has no object (ids 1..254; 255 is void); for 0/255 masks score a single "
                "object with --binary"
            )
    if not pred_dir.is_dir():
        raise VostoolError(f"no results for sequence {name}: {pred_dir} is not a folder")
    height, width = first.shape
    kernel = disk_kernel(bound_pixels(height, width, bound_th))
    scored = frames[1:-1]
    j = np.empty((n_objects, len(scored)), np.float64)
    f = np.empty((n_objects, len(scored)), np.float64)
    for t, frame in enumerate(scored):
        gt_path = gt_dir / f"{frame}.png"
        gt = read_index_mask(gt_path, "ground truth")
        if gt.shape != first.shape:
            raise VostoolError(
                f"ground truth {gt_path} is {gt.shape[1]}x{gt.shape[0]} but the first frame of "
                f"sequence {name} is {width}x{height}"
            )
        pred_path = pred_dir / f"{frame}.png"
        if not pred_path.is_file():
            raise VostoolError(
                f"results for sequence {name} miss frame {frame}: {pred_path} not found"
            )
        pred = read_index_mask(pred_path, "result")
        if pred.shape != gt.shape:
            raise VostoolError(
                f"result {pred_path} is {pred.shape[1]}x{pred.shape[0]} but the ground truth "
                f"of sequence {name} is {width}x{height}"
            )
        if binary:
            pairs = [(gt != 0, pred != 0)]
        else:
            top = int(pred.max())
            if top > n_objects:
                hint = "; is it a 0/255 mask? save ids 1..N" if top == 255 else ""
                raise VostoolError(
                    f"result {pred_path} has object id {top} but sequence {name} has "
                    f"{n_objects} object(s) in its first ground-truth frame (ids 1..{n_objects})"
                    f"{hint}"
                )
            # ids are 1..N <= 254, so void (255) never matches an object: it is background
            pairs = [(gt == k, pred == k) for k in range(1, n_objects + 1)]
        for k, (g, p) in enumerate(pairs):
            j[k, t] = region_similarity(g, p)
            f[k, t] = _contour_accuracy(g, p, kernel)
    return SequenceScore(name, list(range(1, n_objects + 1)), scored, j, f)


def summarise(
    scores: Sequence[SequenceScore], legacy_uint8_decay: bool = False
) -> tuple[dict[str, float], list[ObjectRow]]:
    """Per-object statistics and the seven global figures (object-weighted means)."""
    rows: list[ObjectRow] = []
    for s in scores:
        for k, obj in enumerate(s.object_ids):
            jm, jr, jd = statistics(s.j[k], legacy_uint8_decay)
            fm, fr, fd = statistics(s.f[k], legacy_uint8_decay)
            rows.append(ObjectRow(s.name, obj, len(s.frames), jm, jr, jd, fm, fr, fd))
    if not rows:
        raise VostoolError("nothing to score: no objects in the selected sequences")

    def mean(values: list[float]) -> float:
        # np.mean (pairwise sum) over objects in split order, as the official tool does, so
        # that ties at the third decimal round the same way.
        return float(np.mean(np.array(values, np.float64)))

    j_mean = mean([r.j_mean for r in rows])
    f_mean = mean([r.f_mean for r in rows])
    figures = {
        "J&F-Mean": (j_mean + f_mean) / 2.0,
        "J-Mean": j_mean,
        "J-Recall": mean([r.j_recall for r in rows]),
        "J-Decay": mean([r.j_decay for r in rows]),
        "F-Mean": f_mean,
        "F-Recall": mean([r.f_recall for r in rows]),
        "F-Decay": mean([r.f_decay for r in rows]),
    }
    return figures, rows


def _score_task(
    spec: SequenceSpec, results_root: Path, binary: bool, bound_th: float
) -> SequenceScore:
    return score_sequence(
        spec.gt_dir,
        results_root / spec.name,
        binary=binary,
        frames=spec.frames,
        name=spec.name,
        bound_th=bound_th,
    )


def _init_worker() -> None:
    # One process per core already; OpenCV's own thread pool would only oversubscribe.
    import cv2

    cv2.setNumThreads(1)


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork (fast, no re-import of __main__) on Linux while torch is not loaded; spawn once it
    is, since a parent that ran a model holds thread pools and maybe a CUDA context that
    forked children must not inherit."""
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def default_workers() -> int:
    """Worker processes used when none are asked for: one per CPU core."""
    return max(os.cpu_count() or 1, 1)


def score_results(
    sequences: Sequence[SequenceSpec],
    results_root: str | os.PathLike[str],
    *,
    binary: bool = False,
    workers: int | None = None,
    legacy_uint8_decay: bool = False,
    bound_th: float = BOUND_TH,
    progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score ``<results_root>/<seq>/<frame>.png`` for every sequence, in parallel processes.

    workers: processes to use (default: one per CPU core, at most one per sequence); 1 scores
    in this process. ``progress(name)`` is called as each sequence finishes. The first input
    error stops the run and is raised as VostoolError. Once torch is imported, workers are
    spawned, which re-imports a calling script: guard it with ``if __name__ == "__main__"``.
    """
    results_root = Path(results_root)
    if not results_root.is_dir():
        raise VostoolError(f"results folder {results_root} not found")
    if not sequences:
        raise VostoolError("no sequences to score")
    missing = [s.name for s in sequences if not (results_root / s.name).is_dir()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise VostoolError(f"no results for sequence(s) {shown} in {results_root}")
    n_workers = max(1, min(workers or default_workers(), len(sequences)))
    start = time.perf_counter()
    scores: list[SequenceScore | None] = [None] * len(sequences)
    if n_workers == 1:
        for i, spec in enumerate(sequences):
            scores[i] = _score_task(spec, results_root, binary, bound_th)
            if progress is not None:
                progress(spec.name)
    else:
        # Longest sequences first so that the last worker to finish is not stuck with one.
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].frames))
        with ProcessPoolExecutor(n_workers, mp_context=_mp_context(), initializer=_init_worker) as pool:
            futures = {
                pool.submit(_score_task, sequences[i], results_root, binary, bound_th): i
                for i in order
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    exc = fut.exception()
                    if exc is not None:
                        for other in pending:
                            other.cancel()
                        raise exc
                    i = futures[fut]
                    scores[i] = fut.result()
                    if progress is not None:
                        progress(sequences[i].name)
    done_scores = [s for s in scores if s is not None]
    figures, rows = summarise(done_scores, legacy_uint8_decay)
    return EvalResult(
        global_figures=figures,
        rows=rows,
        sequences=done_scores,
        seconds=time.perf_counter() - start,
        workers=n_workers,
        legacy_uint8_decay=legacy_uint8_decay,
    )
