"""``vostool segment``: the main job, thin over io + engine."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from typing import TYPE_CHECKING

from vostool.cli.common import adapt_progress, check_device_precision, console, float_option, int_option, \
    make_progress, parse_floats, warn
from vostool.errors import VostoolError

if TYPE_CHECKING:
    from vostool.cli.prompt_start import PromptStart
    from vostool.engine.adapt import AdaptConfig
    from vostool.models.base import VOSModel


def _parse_mask_at(items: list[str]) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for item in items:
        frame, sep, png = item.partition(":")
        if not sep or not frame.strip().isdigit() or not png:
            raise VostoolError(f"--mask-at takes FRAME:PNG (e.g. 120:fix.png), got '{item}'")
        idx = int(frame)
        if idx in out:
            raise VostoolError(f"--mask-at gives frame {idx} twice ({out[idx]} and {png}); "
                               "put both objects into one mask")
        out[idx] = Path(png)
    return out


SIZE_MIN, SIZE_MAX = 32, 4096  # --size: two strides of the models .. 4K
SCALE_MIN, SCALE_MAX = 0.25, 4.0
FPS_MAX = 1000.0


def _out_dir(out: Optional[Path], src: Path, stem: str, several: bool) -> Path:
    if out is None:
        return src.parent / f"{stem}_vos"
    return out / stem if several else out


def _adapt_config(adapt: bool, steps: Optional[int]) -> Optional["AdaptConfig"]:
    """``--adapt [--adapt-steps N]`` -> the adaptation's config (None: no adaptation)."""
    from vostool.engine.adapt import AdaptConfig

    if not adapt:
        if steps is not None:
            raise VostoolError("--adapt-steps needs --adapt")
        return None
    return AdaptConfig() if steps is None else AdaptConfig(steps=steps)


def _load_checked_model(
    model_name: str, weights: Optional[Path], has_first: bool, theta_c: Optional[float], size: Optional[int],
    scales: str, scale_list: list[float], window: Optional[float] = None,
) -> tuple["VOSModel", int]:
    """Load ``--model``/``--weights`` and check the options that depend on it: a first mask
    (unless zero-shot), ``--theta-c``, ``--scales`` at the internal size; ``--window`` (None:
    the model's default, 0: off) set on the model. Returns the model and the internal size
    (``--size``, else the checkpoint's)."""
    from vostool.engine import load_model
    from vostool.models import recommended_size

    model = load_model(model_name, weights=weights)
    if not has_first and not model.supports_zero_shot:
        raise VostoolError(f"--mask is required: model '{model_name}' needs a first-frame mask; "
                           "only rvos segments without one (zero-shot)")
    if theta_c is not None:
        if model.theta_c is None:
            raise VostoolError(f"--theta-c applies to dtn only, not '{model_name}'")
        model.theta_c = theta_c
    if window is not None:
        model.search_window = window or None
    internal = size if size is not None else recommended_size(model)
    if min(scale_list) * internal < model.stride or max(scale_list) * internal > SIZE_MAX:
        raise VostoolError(f"--scales {scales} at size {internal} gives internal sizes outside "
                           f"{model.stride}..{SIZE_MAX}")
    return model, internal


def _check_sources(paths: list[Path], fps: Optional[float], starter: Optional["PromptStart"],
                   corrections: dict[int, Path]) -> None:
    """Check the prompts and the ``--mask-at`` frames against every input before any work."""
    from vostool.io import open_source

    if starter is not None:
        for path in paths:
            with open_source(path, fps=fps) as src:
                starter.check_source(src.width, src.height, src.num_frames, path.name)
    if corrections:  # a --mask-at past the end: now, not after the whole video
        for path in paths:
            with open_source(path, fps=fps) as src:
                if src.num_frames is not None and max(corrections) >= src.num_frames:
                    raise VostoolError(f"{path.name}: --mask-at {max(corrections)} is past the last frame "
                                       f"({src.num_frames - 1})")


@dataclass(frozen=True)
class _Run:
    """What every input of one ``vostool segment`` run shares."""

    model: "VOSModel"
    starter: Optional["PromptStart"]
    corrections: dict[int, Path]
    fps: Optional[float]
    overwrite: bool
    targets: list[str]
    adaptation: Optional["AdaptConfig"]
    device: str
    precision: str
    size: int
    scales: list[float]
    max_objects: Optional[int]
    backend: str
    several: bool
    quiet: bool
    wanted: set[str]
    alpha_object: Optional[int]
    alpha_format: str
    preview: bool


def _segment_video(run: _Run, path: Path, dest: Path, mask: Optional[Path]) -> tuple[int, float]:
    """Segment one input into ``dest`` from its first ``mask`` (or prompts, or zero-shot)
    and the run's corrections; prints its line unless quiet. Returns (frames written, seconds)."""
    from vostool.engine import Propagator, propagate
    from vostool.engine.adapt import Adaptation
    from vostool.io import AsyncWriter, OutputWriter, open_source, prepare_out_dir, read_mask
    from vostool.io.completion import clear_done, mark_done

    model, starter = run.model, run.starter
    with open_source(path, fps=run.fps) as source:
        first = None
        if mask is not None:
            info = read_mask(mask, size=(source.width, source.height))
            if info.resized:
                warn(f"mask is {info.original_size[0]}x{info.original_size[1]} but the video is "
                     f"{source.width}x{source.height}; resized with nearest neighbour")
            first = info.ids
        extra: dict[int, np.ndarray] = {}
        for idx, png in run.corrections.items():
            info = read_mask(png, size=(source.width, source.height))
            if info.resized:
                warn(f"{png} resized to {source.width}x{source.height} with nearest neighbour")
            extra[idx] = info.ids
        prepare_out_dir(dest, run.overwrite, run.targets)
        clear_done(dest)
        adaptation = Adaptation(run.adaptation) if run.adaptation is not None else None
        prop = Propagator(model, device=run.device, precision=run.precision, size=run.size,
                          scales=run.scales, max_objects=run.max_objects, backend=run.backend, adapt=adaptation)
        frames, used = source, [True]
        if starter is not None:
            frames, first, extra, used = starter.frames(
                source, first, extra, prop, lambda: Propagator(
                    model, device=run.device, precision=run.precision, size=run.size, scales=run.scales,
                    backend=run.backend),
                starter.save_path(source.stem, run.several))
        n = 0
        t0 = time.perf_counter()
        with make_progress(run.quiet) as progress:
            if adaptation is not None:
                adaptation.progress = adapt_progress(progress, path.name)
            task = progress.add_task(path.name, total=source.num_frames, fps=0.0)
            with AsyncWriter(OutputWriter(dest, run.wanted, source, alpha_object=run.alpha_object,
                                          alpha_format=run.alpha_format, warn=warn,
                                          preview=12 if run.preview else 0)) as writer:
                for frame, result in propagate(prop, frames, first, extra):
                    writer.write(frame, result)
                    n += 1
                    progress.update(task, advance=1, fps=n / max(time.perf_counter() - t0, 1e-9))
        mark_done(dest, run.wanted, run.targets, frames=n, input=str(path), model=model.name)
        seconds = time.perf_counter() - t0
        if not used[0]:
            warn(f"--at {starter.at} is past the last frame ({n - 1}): the prompts were not used")
        missing = sorted(i for i in extra if i >= n)
        if missing:
            warn(f"--mask-at frame(s) {missing} are past the last frame ({n - 1}) and were not used")
        if adaptation is not None and adaptation.unsupported:
            warn(f"--adapt: model '{model.name}' has no image-only features to learn from; not adapted")
        if not run.quiet:
            dt = time.perf_counter() - t0
            adapted = f", adapted in {adaptation.total_seconds:.1f} s" if adaptation is not None else ""
            console.print(f"{path.name}: {n} frames in {dt:.1f} s ({n / max(dt, 1e-9):.1f} fps{adapted}) "
                          f"on {prop.device_name}, {prop.precision} -> {dest}", highlight=False, soft_wrap=True)
    return n, seconds


def segment(
    inputs: list[Path] = typer.Argument(..., help="Video files, folders of frames, or folders of videos.",
                                        show_default=False, metavar="INPUT"),
    mask: Optional[Path] = typer.Option(None, "--mask", "-m", help="First-frame mask PNG (palette, binary or RGB). "
                                        "Omit only with --model rvos (zero-shot)."),
    mask_at: list[str] = typer.Option([], "--mask-at", help="FRAME:PNG, add or correct objects at a later frame "
                                      "(repeatable)."),
    box: list[str] = typer.Option([], "--box", help="X0,Y0,X1,Y1[:ID]: no mask? a box around an object, in source "
                                  "pixels (repeatable, one per object); the mask is made from it (GrabCut, then "
                                  "the model)."),
    point: list[str] = typer.Option([], "--point", help="X,Y[:ID]: a click on an object (repeatable)."),
    neg_point: list[str] = typer.Option([], "--neg-point", help="X,Y[:ID]: a click on background (repeatable)."),
    at: Optional[int] = typer.Option(None, "--at", help="Frame of --box/--point (default 0; later frames add "
                                     "objects like --mask-at and need --mask)."),
    save_mask: Optional[Path] = typer.Option(None, "--save-mask", help="Write the mask made from --box/--point "
                                             "to this PNG (to check or touch up, then rerun with --mask)."),
    mask_dir: Optional[Path] = typer.Option(None, "--mask-dir", help="Folder of first masks, one per input "
                                            "matched by stem: DIR/<stem>.png or DIR/<stem>/<first>.png."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: do only share K (from 0) of N of the inputs "
                                        "(Slurm arrays, indexed jobs); under torchrun each rank takes its part."),
    skip_done: bool = typer.Option(False, "--skip-done", help="Skip inputs whose output folder is complete "
                                   "(a rerun after preemption); redo the others."),
    model_name: str = typer.Option("crvos", "--model", help="Model name (see `vostool models`)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default: the shipped one)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps"),
    precision: str = typer.Option("auto", "--precision", help="auto|fp32|fp16|bf16 (auto: fp16 on CUDA, "
                                  "bf16 on CPUs with native bf16, else fp32)."),
    backend: str = typer.Option("auto", "--backend", help="What runs the frame encoder: auto|torch|onnxruntime "
                                "(auto: onnxruntime for fp32 on CPUs without native bf16 when installed, "
                                "`pip install onnxruntime onnx`; torch elsewhere)."),
    size: Optional[int] = int_option(None, "--size", lo=SIZE_MIN, hi=SIZE_MAX,
                                     help="Internal size of the shorter side (default: the checkpoint's "
                                     "training size). Outputs are always at the source resolution."),
    scales: str = typer.Option("1.0", "--scales", help="Comma list of input scales averaged per frame, "
                               f"e.g. 0.5,0.75,1.0 (slower). Range: each {SCALE_MIN:g}..{SCALE_MAX:g}."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <input stem>_vos/ "
                                       "beside the input; with several inputs, one sub-folder each)."),
    outputs: str = typer.Option("masks,overlay", "--outputs", help="Comma list of: masks, objects, probs, "
                                "alpha, matte, overlay, alpha-video."),
    alpha_object: Optional[int] = int_option(None, "--alpha-object", lo=1, hi=65535, help="Object id for alpha "
                                             "outputs, one of the mask's (default: union of all objects)."),
    alpha_format: str = typer.Option("mov", "--alpha-format", help="mov (ProRes 4444) or webm (VP9 alpha)."),
    fps: Optional[float] = float_option(None, "--fps", lo=0, hi=FPS_MAX, lo_open=True,
                                        help="Frame rate of a folder of frames (default 24)."),
    max_objects: Optional[int] = int_option(None, "--max-objects", lo=1, hi=255, help="Zero-shot (rvos, no "
                                            "--mask): objects to find (default: the slots the checkpoint was "
                                            "trained with)."),
    theta_c: Optional[float] = float_option(None, "--theta-c", lo=0, hi=1, help="DTN decision threshold on "
                                            "its confidence (lower: faster, more box propagation)."),
    window: Optional[float] = float_option(None, "--window", lo=0, hi=100, help="Search window: each object "
                                           "is kept within its previous box grown by this multiple of the "
                                           "box's longer side, so that look-alikes elsewhere cannot take its "
                                           "id; for most models only the parts touching its previous mask are "
                                           "kept (0: off; default: the model's, see `vostool models`)."),
    adapt: bool = typer.Option(False, "--adapt", help="Before propagating, learn each video's objects from "
                               "the given mask (a light target model on the frozen encoder features; every "
                               "--mask-at learns its objects again); the weights are never changed."),
    adapt_steps: Optional[int] = int_option(None, "--adapt-steps", lo=0, hi=100_000, help="Optimisation "
                                            "steps of --adapt (default 100; 0: no adaptation)."),
    preview: bool = typer.Option(False, "--preview", help="Also write preview.jpg: a contact sheet of 12 "
                                 "overlay frames spread over the video, with their frame numbers."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs in an existing folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Segment the objects of the first-frame mask through every frame of each input."""
    from vostool.io import check_out_dir, check_output_names, expand_inputs, output_stem, output_targets, \
        parse_outputs, read_mask
    from vostool.cli.batch import plan_jobs, summary_line
    from vostool.cli.prompt_start import PromptStart
    from vostool.engine.shard import current_worker, finish_distributed, gather_to_rank0, init_distributed, \
        worker_device
    from vostool.engine.backends import check_backend

    wanted = parse_outputs(outputs)
    if alpha_format not in ("mov", "webm"):
        raise VostoolError(f"--alpha-format must be mov or webm, got '{alpha_format}'")
    scale_list = parse_floats(scales, "--scales", SCALE_MIN, SCALE_MAX)
    corrections = _parse_mask_at(mask_at)
    paths = expand_inputs(list(inputs))
    several = len(paths) > 1
    dests = [_out_dir(out, path, output_stem(path), several) for path in paths]
    check_output_names(paths, dests)  # no two inputs (or frames) writing the same outputs
    targets = output_targets(wanted, alpha_format) + (["preview.jpg"] if preview else [])
    worker = current_worker(shard)
    if mask_dir is not None and (mask is not None or box or point or neg_point):
        raise VostoolError("--mask-dir gives each input its first mask: use it without --mask, --box or --point")
    plan = plan_jobs(paths, dests, worker, mask_dir, skip_done, wanted)
    paths, dests = [j.path for j in plan.jobs], [j.dest for j in plan.jobs]
    job_masks = {j.path: j.mask for j in plan.jobs if j.mask is not None}
    overwrite = overwrite or skip_done  # a video not done again replaces vostool's own partial outputs
    device = worker_device(device, worker)
    check_backend(backend, device, precision)
    check_device_precision(device, precision)  # no CUDA, fp16 on the CPU...: before anything exists
    starter = PromptStart.from_options(box, point, neg_point, at, save_mask, mask, corrections)
    has_first = mask is not None or mask_dir is not None or (starter is not None and starter.at == 0)
    for dest in dests:  # before any work: never a user's file replaced, --overwrite where needed
        check_out_dir(dest, targets, overwrite)
    if not has_first and corrections:
        raise VostoolError("--mask-at needs --mask for the first frame")
    if mask is not None and not mask.is_file():
        raise VostoolError(f"mask not found: {mask}")
    given_ids: set[int] = set()  # every mask read once before anything is created or loaded
    for png in ([mask] if mask is not None else []) + list(corrections.values()):
        early = read_mask(png)
        for note in early.warnings:
            warn(note)
        given_ids.update(early.object_ids)
    if alpha_object is not None and mask is not None and starter is None and alpha_object not in given_ids:
        raise VostoolError(f"--alpha-object {alpha_object} is not an object of the mask "
                           f"(ids {', '.join(map(str, sorted(given_ids)))})")

    adaptation_config = _adapt_config(adapt, adapt_steps)
    model, internal = _load_checked_model(model_name, weights, has_first, theta_c, size, scales, scale_list, window)
    _check_sources(paths, fps, starter, corrections)
    dist_created = init_distributed(worker)
    reports: list[dict] = [{"input": str(j.path), "skipped": True} for j in plan.skipped]

    run = _Run(model=model, starter=starter, corrections=corrections, fps=fps, overwrite=overwrite, targets=targets,
               adaptation=adaptation_config, device=device, precision=precision, size=internal, scales=scale_list,
               max_objects=max_objects, backend=backend, several=several, quiet=quiet, wanted=wanted,
               alpha_object=alpha_object, alpha_format=alpha_format, preview=preview)
    for path, dest in zip(paths, dests):
        n, seconds = _segment_video(run, path, dest, job_masks.get(path, mask))
        reports.append({"input": str(path), "frames": n, "seconds": seconds})
    gathered = gather_to_rank0(worker, reports)
    finish_distributed(dist_created)
    if gathered is not None and not quiet and (worker.count > 1 or plan.total > 1 or plan.skipped):
        where = f" ({worker.describe()})" if worker.count > worker.world_size else ""
        console.print(summary_line(gathered, plan.total, worker.world_size) + where, highlight=False,
                      soft_wrap=True)
