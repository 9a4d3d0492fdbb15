"""``vostool eval``: DAVIS-2016, DAVIS-2017 and folder scoring, thin over ``vostool.eval``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import typer

from vostool.cli.common import adapt_progress, check_device_precision, console, err_console, friendly_errors, \
    float_option, int_option, make_progress
from vostool.errors import VostoolError

if TYPE_CHECKING:
    from vostool.eval import EvalReport

eval_app = typer.Typer(
    help="Score results on DAVIS-2016, DAVIS-2017 or your own folders, exactly as the official "
    "DAVIS toolkit does (J, F, recall, decay), in parallel processes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by the commands (Typer reads them as parameter defaults).
_DAVIS_ROOT = typer.Option(
    None, "--davis-root", envvar="DAVIS_ROOT", show_envvar=True,
    help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/...).",
)
_MODEL = typer.Option(None, "--model", help="Model to run (see `vostool models`; default crvos).")
_WEIGHTS = typer.Option(None, "--weights", help="Checkpoint (default: the model's shipped one).")
_RESULTS = typer.Option(
    None, "--results", help="Score the index PNGs in DIR/<seq>/<frame>.png instead of running a model."
)
_SPLIT = typer.Option("val", "--split", help="Split: ImageSets file name (val, train, ...).")
_SEQUENCES = typer.Option(None, "--sequences", help="Comma list of sequences to score (default: all).")
_OUT = typer.Option(
    None, "--out", "-o",
    help="Folder for the results PNGs and the CSVs (default: runs/eval/<benchmark>-<model>-<split>; "
    "with --results, the results folder).",
)
_JSON = typer.Option(False, "--json", help="Print one JSON object with all figures on stdout.")
_WORKERS = int_option(None, "--workers", lo=1, hi=1024, help="Scoring processes (default: one per CPU core).")
_LEGACY = typer.Option(
    False, "--legacy-uint8-decay",
    help="Cut decay bins with the official tool's uint8 arithmetic (NaN decay past 256 frames).",
)
_DEVICE = typer.Option("auto", "--device", help="auto|cpu|cuda|mps")
_PRECISION = typer.Option("auto", "--precision", help="auto|fp32|fp16|bf16")
_SIZE = int_option(None, "--size", lo=32, hi=4096, help="Internal size of the shorter side (default: the "
                   "checkpoint's).")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars or tables.")
_ADAPT = typer.Option(False, "--adapt", help="Each sequence first learns its objects from its first mask "
                      "(as `vostool segment --adapt`), from the shipped weights.")
_ADAPT_STEPS = int_option(None, "--adapt-steps", lo=0, hi=100_000, help="Optimisation steps of --adapt "
                          "(default 100).")
_WINDOW = float_option(None, "--window", lo=0, hi=100, help="Search window: each object is kept within its "
                       "previous box grown by this multiple of the box's side, and for most models "
                       "connected to its previous mask (0: off; default: the "
                       "model's, see `vostool models`).")
_REPORT = typer.Option(None, "--report", help="Also write DIR/report.html: J&F bars worst first, J per frame "
                       "curves, and prediction/ground-truth frame strips of the worst sequences (PNGs beside it).")


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    wrapped = friendly_errors(fn)
    wrapped._friendly = True  # type: ignore[attr-defined]  # the main app must not wrap it again
    return wrapped


def _names(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise VostoolError("--sequences is empty")
    return names


def _write_report(report: EvalReport, report_dir: Optional[Path], quiet: bool, title: str) -> None:
    """``--report DIR``: the HTML page with its pictures (path said on stderr)."""
    if report_dir is None:
        return
    from vostool.eval.html_report import write_html_report

    meta = {"benchmark": report.benchmark, "split": report.split, "model": report.model,
            "results": str(report.results_dir)}
    if report.run is not None and report.run.fps:
        meta["speed"] = f"{report.run.fps:.1f} fps on {report.run.device} ({report.run.precision})"
    page = write_html_report(report.result, report.specs, report.results_dir, report_dir, binary=report.binary,
                             title=f"vostool eval: {title}", meta={k: v for k, v in meta.items() if v})
    if not quiet:
        err_console.print(f"report: {page}", highlight=False, soft_wrap=True)


def _print_report(report: EvalReport, as_json: bool, quiet: bool, title: str) -> None:
    from vostool.eval import render_tables

    if as_json:
        if not quiet:
            render_tables(report.result, err_console, title=title)
        typer.echo(json.dumps(report.payload(), allow_nan=False))
        return
    if quiet:
        return
    render_tables(report.result, console, title=title)
    res = report.result
    if report.run is not None and report.run.fps:
        run = report.run
        console.print(
            f"model {report.model} on {run.device} ({run.precision}): {run.frames} frames, "
            f"{run.fps:.1f} fps; results in {report.results_dir}", highlight=False,
        )
        if run.adapt_seconds is not None:
            n = max(len(res.sequences), 1)
            console.print(f"--adapt: {run.adapt_seconds:.1f} s learning the objects "
                          f"({run.adapt_seconds / n:.1f} s per sequence, not in the fps)", highlight=False)
    console.print(
        f"scored {res.scored_frames} frames of {len(res.sequences)} sequences in {res.seconds:.1f} s "
        f"({res.workers} worker{'s' if res.workers != 1 else ''}); CSVs: "
        f"{report.csv_files[0]}, {report.csv_files[1]}", highlight=False,
    )


def _davis(
    year: int, davis_root: Optional[Path], model: Optional[str], weights: Optional[Path],
    results: Optional[Path], split: str, sequences: Optional[str], out: Optional[Path], as_json: bool,
    workers: Optional[int], legacy: bool, device: str, precision: str, size: Optional[int], quiet: bool,
    report_dir: Optional[Path] = None, adapt: bool = False, adapt_steps: Optional[int] = None,
    window: Optional[float] = None,
) -> None:
    from vostool.cli.segment import _adapt_config
    from vostool.eval import davis_sequences, evaluate_davis

    names = _names(sequences)
    adapt_config = _adapt_config(adapt, adapt_steps)
    if adapt_config is not None and results is not None:
        raise VostoolError("--adapt runs a model: drop --results")
    if window is not None and results is not None:
        raise VostoolError("--window runs a model: drop --results")
    if results is None:  # a model runs: --device/--precision errors (and the bf16 note) first
        check_device_precision(device, precision)
    lengths = {s.name: len(s.frames) for s in davis_sequences(davis_root, year, split, names)} \
        if davis_root else {}
    with make_progress(quiet) as progress:
        now = time.perf_counter()
        t0 = {"segment": now, "score": now}  # scoring starts when the last sequence is segmented
        tasks: dict[str, Any] = {}
        counts = {"segment": 0, "score": 0}

        def advance(kind: str, name: str, frames: int) -> None:
            if kind not in tasks:
                tasks[kind] = progress.add_task(kind, total=len(lengths), fps=0.0)
            counts[kind] += frames
            fps = counts[kind] / max(time.perf_counter() - t0[kind], 1e-9)
            progress.update(tasks[kind], advance=1, description=f"{kind} {name}", fps=fps)

        def on_run(name: str, n: int) -> None:
            advance("segment", name, n)
            t0["score"] = time.perf_counter()

        def on_score(name: str) -> None:
            advance("score", name, max(lengths.get(name, 2) - 2, 0))

        report = evaluate_davis(
            davis_root, year=year, split=split, sequences=names,
            results_dir=results, out_dir=out, model=model,
            weights=str(weights) if weights is not None else None,
            device=device, precision=precision, size=size, workers=workers,
            legacy_uint8_decay=legacy, run_progress=on_run, score_progress=on_score,
            adapt=adapt_config, adapt_progress=adapt_progress(progress, "sequence") if adapt_config else None,
            window=window,
        )
    _print_report(report, as_json, quiet, f"DAVIS-{year} {split}")
    _write_report(report, report_dir, quiet, f"DAVIS-{year} {split}")


@eval_app.command("davis16")
@_friendly
def davis16(
    davis_root: Optional[Path] = _DAVIS_ROOT, model: Optional[str] = _MODEL,
    weights: Optional[Path] = _WEIGHTS, results: Optional[Path] = _RESULTS, split: str = _SPLIT,
    sequences: Optional[str] = _SEQUENCES, out: Optional[Path] = _OUT, as_json: bool = _JSON,
    workers: Optional[int] = _WORKERS, legacy_uint8_decay: bool = _LEGACY, device: str = _DEVICE,
    precision: str = _PRECISION, size: Optional[int] = _SIZE, quiet: bool = _QUIET,
    report_dir: Optional[Path] = _REPORT, adapt: bool = _ADAPT, adapt_steps: Optional[int] = _ADAPT_STEPS,
    window: Optional[float] = _WINDOW,
) -> None:
    """DAVIS-2016 (single object): run a model over a split, or score --results, exactly like the
    official toolkit."""
    _davis(2016, davis_root, model, weights, results, split, sequences, out, as_json, workers,
           legacy_uint8_decay, device, precision, size, quiet, report_dir, adapt, adapt_steps, window)


@eval_app.command("davis17")
@_friendly
def davis17(
    davis_root: Optional[Path] = _DAVIS_ROOT, model: Optional[str] = _MODEL,
    weights: Optional[Path] = _WEIGHTS, results: Optional[Path] = _RESULTS, split: str = _SPLIT,
    sequences: Optional[str] = _SEQUENCES, out: Optional[Path] = _OUT, as_json: bool = _JSON,
    workers: Optional[int] = _WORKERS, legacy_uint8_decay: bool = _LEGACY, device: str = _DEVICE,
    precision: str = _PRECISION, size: Optional[int] = _SIZE, quiet: bool = _QUIET,
    report_dir: Optional[Path] = _REPORT, adapt: bool = _ADAPT, adapt_steps: Optional[int] = _ADAPT_STEPS,
    window: Optional[float] = _WINDOW,
) -> None:
    """DAVIS-2017 (multi-object, semi-supervised): run a model over a split, or score --results,
    exactly like the official toolkit."""
    _davis(2017, davis_root, model, weights, results, split, sequences, out, as_json, workers,
           legacy_uint8_decay, device, precision, size, quiet, report_dir, adapt, adapt_steps, window)


@eval_app.command("folders")
@_friendly
def folders(
    gt: Path = typer.Option(..., "--gt", help="Ground truth: one sub-folder of index PNGs per video."),
    pred: Path = typer.Option(..., "--pred", help="Results: the same sub-folders and frame names."),
    binary: bool = typer.Option(False, "--binary", help="Single object: any non-zero pixel is the object "
                                "(for 0/255 masks)."),
    sequences: Optional[str] = _SEQUENCES,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the CSVs (default: --pred)."),
    as_json: bool = _JSON, workers: Optional[int] = _WORKERS, legacy_uint8_decay: bool = _LEGACY,
    quiet: bool = _QUIET,
    report_dir: Optional[Path] = _REPORT,
) -> None:
    """Score any pair of folders of index PNGs with the DAVIS protocol (ids 1..N from each video's
    first ground-truth frame, 255 = void, first and last frames not scored)."""
    from vostool.eval import evaluate_folders, folder_sequences

    names = _names(sequences)
    lengths = {s.name: len(s.frames) - 2 for s in folder_sequences(gt, names)}
    with make_progress(quiet) as progress:
        task = progress.add_task("score", total=len(lengths), fps=0.0)
        t0 = time.perf_counter()
        done = [0]

        def on_score(name: str) -> None:
            done[0] += lengths.get(name, 0)
            fps = done[0] / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, advance=1, description=f"score {name}", fps=fps)

        report = evaluate_folders(
            gt, pred, sequences=names, out_dir=out, binary=binary, workers=workers,
            legacy_uint8_decay=legacy_uint8_decay, score_progress=on_score,
        )
    _print_report(report, as_json, quiet, "folders")
    _write_report(report, report_dir, quiet, "folders")
