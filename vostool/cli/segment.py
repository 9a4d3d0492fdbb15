"""``vostool segment``: the main job, thin over io + engine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from vostool.cli.common import console, make_progress, parse_floats, warn
from vostool.errors import VostoolError


def _parse_mask_at(items: list[str]) -> dict[int, Path]:
    out: dict[int, Path] = {}
    for item in items:
        frame, sep, png = item.partition(":")
        if not sep or not frame.strip().isdigit() or not png:
            raise VostoolError(f"--mask-at takes FRAME:PNG (e.g. 120:fix.png), got '{item}'")
        out[int(frame)] = Path(png)
    return out


def _out_dir(out: Optional[Path], src: Path, stem: str, several: bool) -> Path:
    if out is None:
        return src.parent / f"{stem}_vos"
    return out / stem if several else out


def segment(
    inputs: list[Path] = typer.Argument(..., help="Video files, folders of frames, or folders of videos.",
                                        show_default=False),
    mask: Optional[Path] = typer.Option(None, "--mask", "-m", help="First-frame mask PNG (palette, binary or RGB). "
                                        "Omit only with --model rvos (zero-shot)."),
    mask_at: list[str] = typer.Option([], "--mask-at", help="FRAME:PNG, add or correct objects at a later frame "
                                      "(repeatable)."),
    model_name: str = typer.Option("crvos", "--model", help="Model name (see `vostool models`)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint (default: the shipped one)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps"),
    precision: str = typer.Option("auto", "--precision", help="auto|fp32|fp16|bf16 (auto: fp16 on CUDA, "
                                  "bf16 on CPUs with native bf16, else fp32)."),
    size: Optional[int] = typer.Option(None, "--size", help="Internal size of the shorter side "
                                       "(default: the checkpoint's training size). Outputs are always at "
                                       "the source resolution."),
    scales: str = typer.Option("1.0", "--scales", help="Comma list of input scales averaged per frame, "
                               "e.g. 0.5,0.75,1.0 (slower)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: <input stem>_vos/ "
                                       "beside the input; with several inputs, one sub-folder each)."),
    outputs: str = typer.Option("masks,overlay", "--outputs", help="Comma list of: masks, objects, probs, "
                                "alpha, matte, overlay, alpha-video."),
    alpha_object: Optional[int] = typer.Option(None, "--alpha-object", help="Object id for alpha outputs "
                                               "(default: union of all objects)."),
    alpha_format: str = typer.Option("mov", "--alpha-format", help="mov (ProRes 4444) or webm (VP9 alpha)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate of a folder of frames (default 24)."),
    max_objects: Optional[int] = typer.Option(None, "--max-objects", min=1, help="Zero-shot (rvos, no --mask): "
                                              "objects to find (default: the slots the checkpoint was trained with)."),
    theta_c: Optional[float] = typer.Option(None, "--theta-c", help="DTN decision threshold (lower: faster, "
                                            "more box propagation)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs in an existing folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Segment the objects of the first-frame mask through every frame of each input."""
    from vostool.engine import Propagator, load_model, propagate
    from vostool.io import AsyncWriter, OutputWriter, check_out_dir, check_output_names, expand_inputs, \
        open_source, output_stem, output_targets, parse_outputs, prepare_out_dir, read_mask
    from vostool.models import recommended_size

    wanted = parse_outputs(outputs)
    if alpha_format not in ("mov", "webm"):
        raise VostoolError(f"--alpha-format must be mov or webm, got '{alpha_format}'")
    scale_list = parse_floats(scales, "--scales")
    corrections = _parse_mask_at(mask_at)
    paths = expand_inputs(list(inputs))
    several = len(paths) > 1
    dests = [_out_dir(out, path, output_stem(path), several) for path in paths]
    check_output_names(paths, dests)  # no two inputs (or frames) writing the same outputs
    targets = output_targets(wanted, alpha_format)
    for dest in dests:  # before any work: never a user's file replaced, --overwrite where needed
        check_out_dir(dest, targets, overwrite)
    if mask is None and corrections:
        raise VostoolError("--mask-at needs --mask for the first frame")
    if mask is not None and not mask.is_file():
        raise VostoolError(f"mask not found: {mask}")
    given_ids: set[int] = set()  # every mask read once before anything is created or loaded
    for png in ([mask] if mask is not None else []) + list(corrections.values()):
        early = read_mask(png)
        for note in early.warnings:
            warn(note)
        given_ids.update(early.object_ids)

    model = load_model(model_name, weights=weights)
    if mask is None and not model.supports_zero_shot:
        raise VostoolError(f"--mask is required: model '{model_name}' needs a first-frame mask; "
                           "only rvos segments without one (zero-shot)")
    if theta_c is not None:
        if not hasattr(model, "theta_c"):
            raise VostoolError(f"--theta-c applies to dtn only, not '{model_name}'")
        model.theta_c = theta_c  # type: ignore[assignment]
    internal = size if size is not None else recommended_size(model)

    for path, dest in zip(paths, dests):
        with open_source(path, fps=fps) as source:
            first = None
            if mask is not None:
                info = read_mask(mask, size=(source.width, source.height))
                if info.resized:
                    warn(f"mask is {info.original_size[0]}x{info.original_size[1]} but the video is "
                         f"{source.width}x{source.height}; resized with nearest neighbour")
                first = info.ids
            extra: dict[int, np.ndarray] = {}
            for idx, png in corrections.items():
                info = read_mask(png, size=(source.width, source.height))
                if info.resized:
                    warn(f"{png} resized to {source.width}x{source.height} with nearest neighbour")
                extra[idx] = info.ids
            prepare_out_dir(dest, overwrite, targets)
            prop = Propagator(model, device=device, precision=precision, size=internal,
                              scales=scale_list, max_objects=max_objects)
            n = 0
            t0 = time.perf_counter()
            with make_progress(quiet) as progress:
                task = progress.add_task(path.name, total=source.num_frames, fps=0.0)
                with AsyncWriter(OutputWriter(dest, wanted, source, alpha_object=alpha_object,
                                              alpha_format=alpha_format, warn=warn)) as writer:
                    for frame, result in propagate(prop, source, first, extra):
                        writer.write(frame, result)
                        n += 1
                        progress.update(task, advance=1, fps=n / max(time.perf_counter() - t0, 1e-9))
            missing = sorted(i for i in extra if i >= n)
            if missing:
                warn(f"--mask-at frame(s) {missing} are past the last frame ({n - 1}) and were not used")
            if not quiet:
                dt = time.perf_counter() - t0
                console.print(f"{path.name}: {n} frames in {dt:.1f} s ({n / max(dt, 1e-9):.1f} fps) "
                              f"on {prop.device_name}, {prop.precision} -> {dest}", highlight=False, soft_wrap=True)
