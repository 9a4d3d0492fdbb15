"""``vostool train``: train a model (pre-training on synthetic clips, then video BPTT), resume
a run, or export a run's checkpoint as shipped weights. A thin layer over
:mod:`vostool.train`; register it with ``app.command("train")(train_command)``."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from vostool.cli.common import float_option, int_option
from vostool.errors import VostoolError

_DEFAULT_OUT = "runs/{model}-{stage}"


def parse_size(text: str) -> tuple[int, int]:
    """``"240x432"`` -> (240, 432) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise VostoolError(f"--size wants HEIGHTxWIDTH like 240x432, not '{text}'") from None
    if h <= 0 or w <= 0 or h % 16 or w % 16:
        raise VostoolError(f"--size {text}: both sides must be positive multiples of 16")
    if not (32 <= h <= 4096 and 32 <= w <= 4096):
        raise VostoolError(f"--size {text}: both sides must be in 32..4096")
    return h, w


def parse_short_sides(text: str) -> tuple[int, int]:
    """``"240-480"`` -> (240, 480): the range of frame short sides of multi-scale training."""
    try:
        lo, hi = (int(v) for v in text.split("-"))
    except ValueError:
        raise VostoolError(f"--multi-scale wants LO-HI short sides in pixels like 240-480, not '{text}'") from None
    if not (32 <= lo <= hi <= 4096):
        raise VostoolError(f"--multi-scale {text}: want 32 <= LO <= HI <= 4096")
    return lo, hi


def recorded_command(argv: list[str] | None = None) -> str:
    """The command line as ``vostool train ...`` (whatever launched it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "train":
        args = args[1:]
    prefix = "vostool train"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        prefix = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', world)} -m vostool.train"
    return " ".join([prefix, shlex.join(args)]).strip()


def train_command(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model to train (see `vostool models`).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone (default: the model's).")] = None,
    stage: Annotated[Optional[str], typer.Option(help="pretrain (synthetic clips from --images) or video (--data).")] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="DAVIS-layout root (repeatable).")] = None,
    images: Annotated[Optional[list[str]], typer.Option("--images", help="Still images with masks: <root>/images, <root>/masks (repeatable). Pretrain: the synthetic clips; video stage: mixed in (--image-ratio).")] = None,
    image_ratio: Annotated[Optional[float], float_option(..., "--image-ratio", lo=0, hi=1, help="Video stage with --images: fraction of clips that are synthetic (default 0.3).")] = None,
    size: Annotated[Optional[str], typer.Option(help="Training crop HEIGHTxWIDTH, multiples of 16. Range: each side 32..4096.")] = None,
    multi_scale: Annotated[Optional[str], typer.Option("--multi-scale", help="Video stage: each clip scales its frames to a random short side in LO-HI pixels (e.g. 240-480) before the --size crop, so that the model works at every inference size in that range.")] = None,
    clip_len: Annotated[Optional[int], int_option(..., "--clip-len", lo=2, hi=256, help="Frames per clip (default 4 pretrain, 8 video).")] = None,
    hue: Annotated[Optional[float], float_option(..., "--hue", lo=0, hi=0.5, help="Random hue shift of each clip, +- this fraction of the colour circle (default 0.02; 0.5: any hue, so that no object colour is a cue).")] = None,
    max_skip: Annotated[Optional[int], int_option(..., "--max-skip", lo=1, hi=100, help="Video: random frame step 1..N (fast motion).")] = None,
    batch: Annotated[Optional[int], int_option(..., "--batch", lo=1, hi=1024, help="Clips per step (per process).")] = None,
    iters: Annotated[Optional[int], int_option(..., "--iters", lo=1, hi=10**9, help="Training iterations (total, including resumed ones).")] = None,
    lr: Annotated[Optional[float], float_option(..., "--lr", lo=0, hi=1, lo_open=True, help="Adam learning rate.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option(help="constant | exp (lr * gamma^(it/step)) | cosine.")] = None,
    lr_gamma: Annotated[Optional[float], float_option(..., "--lr-gamma", lo=0, hi=1, lo_open=True, help="exp schedule: decay factor per --lr-step iterations.")] = None,
    lr_step: Annotated[Optional[int], int_option(..., "--lr-step", lo=1, hi=10**9, help="exp schedule: iterations per decay step.")] = None,
    weight_decay: Annotated[Optional[float], float_option(..., "--weight-decay", lo=0, hi=1, help="Adam weight decay.")] = None,
    ema: Annotated[Optional[float], float_option(..., "--ema", lo=0, hi=1, lo_open=True, hi_open=True, help="Keep an exponential moving average of the weights with this decay (e.g. 0.99); validation, best.pt and --export use it.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto | fp32 | bf16 | fp16 (autocast).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | mps.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/MODEL-STAGE).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Start from these weights (a previous stage's .pt or .safetensors).")] = None,
    pretrained: Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="ImageNet backbone weights.")] = True,
    freeze_bn: Annotated[Optional[bool], typer.Option("--freeze-bn/--train-bn", help="Keep the backbone's BatchNorm statistics frozen (default) or update them.")] = None,
    freeze_backbone: Annotated[Optional[bool], typer.Option("--freeze-backbone/--train-backbone", help="Train without gradients through the image encoder (much faster on CPUs) or train it too (default).")] = None,
    train_stages: Annotated[Optional[str], typer.Option(help="With --freeze-backbone: backbone stages that still learn, e.g. s16.")] = None,
    train_only: Annotated[Optional[str], typer.Option(help="Only these modules learn (comma-separated names, e.g. decoder_zero); everything else, BatchNorm statistics included, stays fixed.")] = None,
    zero_shot: Annotated[Optional[bool], typer.Option("--zero-shot/--one-shot", help="rvos: train the zero-shot decoder (instances matched to slots) instead of the one-shot one.")] = None,
    slots: Annotated[Optional[int], int_option(..., "--slots", lo=1, hi=255, help="Zero-shot: instance slots per clip.")] = None,
    objects: Annotated[Optional[int], int_option(..., "--objects", lo=1, hi=255, help="One-shot models that decode objects jointly (rvos): objects per sample, chained (default 2; 1 for the others).")] = None,
    val_sequences: Annotated[Optional[str], typer.Option(help="Held-out sequences of --data for validation, comma-separated.")] = None,
    val_every: Annotated[Optional[int], int_option(..., "--val-every", lo=1, hi=10**9, help="Validate every N iterations (and at the end).")] = None,
    val_size: Annotated[Optional[int], int_option(..., "--val-size", lo=32, hi=4096, help="Validation inference short side (default: training height). With --export: the shipped inference size; the card's dev J&F is measured at it.")] = None,
    ckpt_every_min: Annotated[Optional[float], float_option(..., "--ckpt-every-min", lo=0, hi=10**6, lo_open=True, help="Save last.pt every N minutes.")] = None,
    max_minutes: Annotated[Optional[float], float_option(..., "--max-minutes", lo=0, hi=10**7, lo_open=True, help="Stop (and save) after N minutes of training.")] = None,
    seed: Annotated[Optional[int], int_option(..., "--seed", lo=0, hi=2**31 - 1, help="Random seed.")] = None,
    threads: Annotated[Optional[int], int_option(..., "--threads", lo=1, hi=1024, help="CPU threads (default: all cores).")] = None,
    workers: Annotated[Optional[int], int_option(..., "--workers", lo=0, hi=256, help="Data-loading worker processes (0: in the main process).")] = None,
    log_every: Annotated[Optional[int], int_option(..., "--log-every", lo=1, hi=10**9, help="Log a line every N iterations.")] = None,
    export: Annotated[Optional[Path], typer.Option(help="Export a run as shipped weights: weights/NAME.safetensors (+ NAME.json).")] = None,
    from_: Annotated[Optional[Path], typer.Option("--from", help="Export: the run checkpoint (default OUT/best.pt, else OUT/last.pt).")] = None,
    fp16: Annotated[Optional[bool], typer.Option("--fp16/--fp32", help="Export: store fp16 (default: when over 20 MiB).")] = None,
) -> None:
    """Train a model, resume a run, or export a run's weights."""
    try:
        _run(**locals())
    except VostoolError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _run(**o) -> None:
    from vostool.train import TrainConfig, export_run, resume_config, train

    if o["export"] is not None:
        src = o["from_"]
        if src is None:
            if o["out"] is None:
                raise VostoolError("--export needs --from RUN/best.pt (or --out RUN)")
            run = Path(o["out"])
            src = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
        card = export_run(src, o["export"], fp16=o["fp16"], size=o["val_size"])
        jf = card["dev_split"]["JF"]
        typer.echo(f"wrote {o['export']} ({card['dtype']}, {card['bytes'] / 2**20:.1f} MiB) and "
                   f"{Path(o['export']).with_suffix('.json')}" + (f"; dev J&F {jf:.4f}" if jf is not None else ""))
        return

    fields = dict(
        model=o["model"], backbone=o["backbone"], stage=o["stage"], data=o["data"] or None,
        images=o["images"] or None, image_ratio=o["image_ratio"], size=parse_size(o["size"]) if o["size"] else None, clip_len=o["clip_len"],
        multi_scale=parse_short_sides(o["multi_scale"]) if o["multi_scale"] else None,
        max_skip=o["max_skip"], batch=o["batch"], iters=o["iters"], lr=o["lr"], lr_schedule=o["lr_schedule"],
        lr_gamma=o["lr_gamma"], lr_step=o["lr_step"], weight_decay=o["weight_decay"], ema_decay=o["ema"], precision=o["precision"],
        device=o["device"],
        val_sequences=[s for s in o["val_sequences"].split(",") if s] if o["val_sequences"] is not None else None,
        val_every=o["val_every"], val_size=o["val_size"], ckpt_every_min=o["ckpt_every_min"],
        max_minutes=o["max_minutes"], seed=o["seed"], threads=o["threads"], num_workers=o["workers"],
        log_every=o["log_every"], freeze_bn=o["freeze_bn"], freeze_backbone=o["freeze_backbone"],
        train_stages=[t for t in o["train_stages"].split(",") if t] if o["train_stages"] else None,
        train_only=[t for t in o["train_only"].split(",") if t] if o["train_only"] else None,
        zero_shot=o["zero_shot"], slots=o["slots"], objects=o["objects"], init=str(o["init"]) if o["init"] else None,
        augment={"hue": o["hue"]} if o["hue"] is not None else None,
    )
    command = recorded_command()
    if o["resume"]:
        if o["out"] is None:
            raise VostoolError("--resume needs --out RUN (the run folder to continue)")
        cfg = resume_config(o["out"], command=command, **fields)
    else:
        given = {k: v for k, v in fields.items() if v is not None}
        given.setdefault("model", "crvos")
        if "stage" not in given:
            given["stage"] = "pretrain" if (o["images"] and not o["data"]) else "video"
        out = o["out"] or Path(_DEFAULT_OUT.format(model=given["model"], stage=given["stage"]))
        cfg = TrainConfig(**given, out=str(out), pretrained=o["pretrained"], command=command)
    summary = train(cfg)
    if summary["interrupted"]:
        raise typer.Exit(130)
    s_it = summary["s_per_it"]
    typer.echo(f"{summary['out']}: {summary['iteration']}/{summary['iters']} iterations"
               + (f", {s_it:.2f} s/iteration" if s_it else "")
               + (f", best J&F {summary['best']['JF']:.4f}" if summary.get("best") else ""))


def main(argv: list[str] | None = None) -> None:
    """``python -m vostool.train``: the same command on its own."""
    from vostool.cli.common import OneLineCommand, friendly_errors

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command(cls=OneLineCommand)(friendly_errors(train_command))
    app(args=argv, prog_name="vostool train")
