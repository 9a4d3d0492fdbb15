"""The evaluations behind ``vostool eval``: run (optionally) a model, score, write the CSVs."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vostool.errors import VostoolError
from vostool.eval.datasets import SequenceSpec, davis_sequences, folder_sequences
from vostool.eval.report import json_payload, write_csvs

if TYPE_CHECKING:
    from vostool.engine.adapt import AdaptConfig
from vostool.eval.runner import PropagatorLike, RunStats, build_propagator, run_sequences
from vostool.eval.scoring import EvalResult, score_results


#: The model run when none is named (the same default as ``vostool segment``).
DEFAULT_MODEL = "crvos"


@dataclass
class EvalReport:
    """Everything one evaluation produced.

    result: the scores. run: how the model run went (None when existing results were scored).
    results_dir: where the scored PNGs are. csv_files: (global, per-sequence) CSVs written.
    specs: the sequences scored. binary: single-object scoring (any non-zero id is the object).
    """

    benchmark: str
    split: str | None
    result: EvalResult
    results_dir: Path
    csv_files: tuple[Path, Path]
    model: str | None = None
    run: RunStats | None = None
    specs: list[SequenceSpec] = field(default_factory=list)
    binary: bool = False

    def payload(self) -> dict[str, Any]:
        """The ``--json`` object (see :func:`vostool.eval.report.json_payload`); with
        ``--adapt`` also ``adapt_seconds`` (all sequences, not in ``fps``)."""
        out = json_payload(
            self.result,
            benchmark=self.benchmark,
            split=self.split,
            model=self.model,
            device=self.run.device if self.run else None,
            precision=self.run.precision if self.run else None,
            fps=round(self.run.fps, 3) if self.run and self.run.fps else None,
            frames=self.run.frames if self.run else None,
            results_dir=self.results_dir,
            csv_files=self.csv_files,
        )
        if self.run is not None and self.run.adapt_seconds is not None:
            out["adapt_seconds"] = round(self.run.adapt_seconds, 3)
        return out


def _default_out(benchmark: str, model: str, split: str, adapt: bool = False) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", model)
    return Path("runs") / "eval" / f"{benchmark}-{safe}-{split}{'-adapt' if adapt else ''}"


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """Hold ``folder`` for one evaluation: a second one writing or scoring the same folder at
    the same time (two shells, the same default folder) would mix the two runs' PNGs and
    print wrong figures, so it stops with one clear error instead. An OS lock on
    ``folder/.vostool-eval.lock``: released when the process ends, however it ends."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / ".vostool-eval.lock", "a+b")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise VostoolError(f"cannot write results to {folder}: {exc.strerror or exc}") from None
    with fh:
        try:
            if os.name == "nt":  # pragma: no cover - Windows
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise VostoolError(f"another vostool eval is using {folder}; wait for it, or give this one "
                               "its own --out") from None
        yield


def evaluate_davis(
    davis_root: str | os.PathLike[str] | None,
    *,
    year: int,
    split: str = "val",
    sequences: list[str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    model: str | None = None,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    size: int | None = None,
    propagator_factory: Callable[[], PropagatorLike] | None = None,
    workers: int | None = None,
    legacy_uint8_decay: bool = False,
    run_progress: Callable[[str, int], None] | None = None,
    score_progress: Callable[[str], None] | None = None,
    adapt: AdaptConfig | None = None,
    adapt_progress: Callable[[int, int, float], None] | None = None,
    window: float | None = None,
) -> EvalReport:
    """Score a DAVIS split (year 2016: single object; 2017: multi-object).

    With ``results_dir`` its PNGs are scored as they are; otherwise the model (``model``, default
    :data:`DEFAULT_MODEL`, and ``weights``; or ``propagator_factory()`` when given; ``size``
    None = the checkpoint's training size; ``window``: the search window margin, None = the
    model's default, 0 = off) is run over the split first, writing
    its PNGs under ``out_dir`` (default ``runs/eval/davis<yy>-<model>-<split>``, ``-adapt``
    appended with ``adapt``), which no other evaluation may use meanwhile (a one-line error
    if one does). The CSVs go to ``out_dir`` (default: the results folder) and always
    replace older ones.
    """
    if davis_root is None or str(davis_root) == "":
        raise VostoolError("no DAVIS root: pass --davis-root PATH or set DAVIS_ROOT")
    benchmark = f"davis{year % 100}"
    binary = year == 2016
    specs = davis_sequences(davis_root, year, split, sequences)
    run: RunStats | None = None
    if results_dir is not None:
        results = Path(results_dir)
        if model is not None or weights is not None:
            raise VostoolError("--results scores existing PNGs; drop --model/--weights, or --results")
        out = Path(out_dir) if out_dir is not None else results
    else:
        if propagator_factory is None:
            model = model or DEFAULT_MODEL
            name = model

            def propagator_factory() -> PropagatorLike:
                return build_propagator(name, weights, device=device, precision=precision, size=size,
                                        adapt=adapt, adapt_progress=adapt_progress, window=window)

        label = model or "custom"
        out = Path(out_dir) if out_dir is not None else _default_out(benchmark, label, split, adapt is not None)
        results = out
    with _exclusive(out) if results_dir is None else contextlib.nullcontext():
        if results_dir is None:
            assert propagator_factory is not None
            run = run_sequences(specs, results, propagator_factory(), binary=binary, progress=run_progress)
        result = score_results(
            specs,
            results,
            binary=binary,
            workers=workers,
            legacy_uint8_decay=legacy_uint8_decay,
            progress=score_progress,
        )
        csvs = write_csvs(result, out, split)
    return EvalReport(benchmark, split, result, results, csvs, model=model, run=run, specs=list(specs),
                      binary=binary)


def evaluate_folders(
    gt_dir: str | os.PathLike[str],
    pred_dir: str | os.PathLike[str],
    *,
    sequences: list[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    binary: bool = False,
    workers: int | None = None,
    legacy_uint8_decay: bool = False,
    score_progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Score ``pred_dir/<video>/<frame>.png`` against ``gt_dir/<video>/<frame>.png``.

    Index PNGs, one sub-folder per video; ``binary`` scores any non-zero pixel as one object.
    CSVs (``global_results.csv``, ``per-sequence_results.csv``) go to ``out_dir``, default
    ``pred_dir``.
    """
    specs: list[SequenceSpec] = folder_sequences(gt_dir, sequences)
    result = score_results(
        specs,
        pred_dir,
        binary=binary,
        workers=workers,
        legacy_uint8_decay=legacy_uint8_decay,
        progress=score_progress,
    )
    out = Path(out_dir) if out_dir is not None else Path(pred_dir)
    csvs = write_csvs(result, out, None)
    return EvalReport("folders", None, result, Path(pred_dir), csvs, specs=list(specs), binary=binary)
