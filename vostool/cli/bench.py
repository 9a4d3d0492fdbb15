"""``vostool bench``: frames per second, latency and memory of the models, thin over
:mod:`vostool.bench`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from vostool.cli.common import check_device_precision, console, err_console, int_option, warn
from vostool.errors import VostoolError


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def bench(
    model_name: Optional[str] = typer.Option(None, "--model", help="Model to time (see `vostool models`); "
                                             "default crvos."),
    all_models: bool = typer.Option(False, "--all", help="Time every registered model and print one table."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Time the model with another registered "
                                           "backbone (e.g. the paper's resnet50)."),
    random_weights: bool = typer.Option(False, "--random-weights", help="Time without a checkpoint (random "
                                        "weights; speed does not depend on the values)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Checkpoint to time (default: the shipped "
                                           "one, else random weights with a note)."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps"),
    precision: str = typer.Option("auto", "--precision", help="auto|fp32|fp16|bf16 (auto: fp16 on CUDA, bf16 "
                                  "on CPUs with native bf16, else fp32)."),
    size: int = int_option(480, "--size", lo=32, hi=4096, help="Internal size of the shorter side (the "
                           "synthetic clip is this size, 16:9)."),
    objects: int = int_option(1, "--objects", lo=1, hi=255, help="Objects in the first mask (all count as one "
                              "frame)."),
    frames: int = int_option(60, "--frames", lo=1, hi=100_000, help="Timed frames after the warm-up."),
    warmup: int = int_option(5, "--warmup", lo=0, hi=10_000, help="Untimed warm-up frames."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model's per-frame methods "
                                  "(reported; falls back to eager if compilation fails)."),
    input_: Optional[Path] = typer.Option(None, "--input", help="Time on this video instead of the synthetic "
                                          "clip (a synthetic first mask is drawn on it)."),
    long: Optional[int] = int_option(None, "--long", lo=1, hi=1_000_000, help="Also run N more frames and "
                                     "report memory at their start and end (constant memory in video length)."),
    channels_last: bool = typer.Option(True, "--channels-last/--no-channels-last",
                                       help="Convolutions in NHWC memory format."),
    baseline: bool = typer.Option(False, "--baseline", help="Interleave a plain ResNet-50 trunk (fp32, NCHW, "
                                  "torchvision, at SIZE x 16:9) and report each model's time as a "
                                  "fraction of it."),
    no_e2e: bool = typer.Option(False, "--no-e2e", help="Skip the end-to-end (decode + write) run."),
    threads: Optional[int] = int_option(None, "--threads", lo=1, hi=1024, help="Intra-op CPU threads (default: "
                                        "torch's)."),
    backend: str = typer.Option("auto", "--backend", help="What runs the frame encoders: auto|torch|onnxruntime "
                                "(auto: onnxruntime for fp32 on CPUs without native bf16 when installed, "
                                "`pip install onnxruntime onnx`; torch elsewhere)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per model per line on stdout, "
                                 "nothing else."),
    adapt: bool = typer.Option(False, "--adapt", help="Also time --adapt: learning the first frame's objects "
                               "(reported as adapt_s, apart from the fps, which then include its correction)."),
    adapt_steps: Optional[int] = int_option(None, "--adapt-steps", lo=0, hi=100_000, help="Optimisation "
                                            "steps of --adapt (default 100)."),
) -> None:
    """Time models the way the papers do (all objects of a frame count as one frame) and
    state the conditions: device, torch, precision, memory format, compile, size, threads."""
    from vostool.bench import benchmark, conditions_lines, results_table
    from vostool.models import list_models

    if all_models and model_name is not None:
        raise VostoolError("--model and --all exclude each other")
    if input_ is not None and not input_.exists():
        raise VostoolError(f"{input_}: no such file")
    if long is not None and long < 1:
        raise VostoolError("--long must be at least 1")
    names = [s.name for s in list_models()] if all_models else [model_name or "crvos"]
    if all_models and weights is not None:
        raise VostoolError("--weights applies to one --model, not --all")
    check_device_precision(device, precision)  # one line for every model, before any is built
    from vostool.cli.segment import _adapt_config

    adapt_config = _adapt_config(adapt, adapt_steps)

    results = []
    status = None if as_json else err_console.status("benchmarking...")
    if status is not None:
        status.start()
    try:
        for name in names:
            def say(message: str) -> None:
                if status is not None:
                    status.update(message)

            try:
                r = benchmark(
                    name, backbone=backbone, random_weights=random_weights, weights=weights, device=device,
                    precision=precision, size=size, objects=objects, frames=frames, warmup=warmup,
                    compile=compile_, input=input_, long=long, channels_last=channels_last,
                    end_to_end=not no_e2e, baseline=baseline, threads=threads, progress=say, backend=backend,
                    adapt=adapt_config,
                )
            except VostoolError as exc:
                if not all_models:
                    raise
                warn(f"{name}: not timed ({exc})")
                continue
            results.append(r)
            if as_json:
                typer.echo(json.dumps(_clean(r.to_dict())))
    finally:
        if status is not None:
            status.stop()
    if as_json:
        return
    if not results:
        raise VostoolError("no model could be timed")
    out = console if console.is_terminal else Console(width=max(console.width, 200))
    out.print(results_table(results))
    for line in conditions_lines(results):
        out.print(line, highlight=False, soft_wrap=True)
