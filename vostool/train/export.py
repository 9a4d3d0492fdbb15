"""Export a training run's checkpoint as the shipped weights and their card.

``export_run("runs/crvos-video/best.pt", "weights/crvos.safetensors")`` writes the
safetensors checkpoint (fp16 when it is over 20 MiB or ``fp16=True``) that
:func:`vostool.models.load_model` loads strictly, and ``weights/crvos.json``: model,
backbone, data, the commands of every stage, iterations, wall time, hardware, the
dev-split J&F of exactly the exported weights at their inference size (``size``, default
the validation size; re-measured when it differs), date and vostool version.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import vostool
from vostool.errors import VostoolError
from vostool.models import build_model, load_weights_strict, save_checkpoint
from vostool.models.base import VOSModel
from vostool.train.checkpoint import RunCheckpoint
from vostool.train.config import TrainConfig

HALF_ABOVE_BYTES = 20 * 2**20


def export_run(src: str | Path, dst: str | Path, fp16: bool | None = None, size: int | None = None) -> dict[str, Any]:
    """Write ``dst`` (.safetensors) and its card ``dst`` with ``.json``; returns the card."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise VostoolError(f"export to a .safetensors file, not {dst}")
    ck = RunCheckpoint.load(src)
    if ck.config is None:
        raise VostoolError(f"{src} is not a vostool training checkpoint")
    cfg = ck.config
    model = _shipped_model(ck, cfg, str(src))
    n_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    half = bool(fp16) if fp16 is not None else n_bytes > HALF_ABOVE_BYTES
    infer_size = int(size or cfg.val_size or cfg.size[0])
    commands = [c for c in ck.commands if c]
    save_checkpoint(model, dst, half=half, extra={"size": infer_size, "commands": json.dumps(commands)})
    card = _card(ck, cfg, model, dst, half, infer_size, commands, _dev_score(ck, cfg, model, infer_size))
    card["source"] = str(src)
    card["date"] = time.strftime("%Y-%m-%d")
    card["vostool_version"] = vostool.__version__
    card_path = dst.with_suffix(".json")
    tmp = card_path.with_name(card_path.name + ".tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.replace(card_path)
    return card


def _shipped_model(ck: RunCheckpoint, cfg: TrainConfig, source: str) -> VOSModel:
    """The model the run trained, holding its shipped weights (loaded strictly)."""
    mcfg = dict(ck.model_config)
    backbone = mcfg.pop("backbone", cfg.backbone)
    model = build_model(cfg.model, backbone, pretrained=False, **mcfg)
    load_weights_strict(model, ck.model, source=source)
    return model


def _dev_score(ck: RunCheckpoint, cfg: TrainConfig, model: VOSModel, infer_size: int) -> dict[str, Any] | None:
    """The run's last validation, or a fresh one when it does not score exactly what ships."""
    last_val = ck.val_history[-1] if ck.val_history else None
    stale = last_val is None or last_val.get("iteration") != ck.iteration
    resized = infer_size != int(cfg.val_size or cfg.size[0])
    if cfg.val_sequences and cfg.data and (stale or resized):
        # The run stopped between validations, or the weights ship with another inference
        # size than validation used: score exactly what is shipped, at its size.
        from vostool.engine.device import resolve_device, resolve_precision
        from vostool.train.validation import validate

        device = resolve_device("cpu")
        vcfg = dataclasses.replace(cfg, val_size=infer_size)
        last_val = dict(validate(model, vcfg, device, resolve_precision("auto", device)), iteration=ck.iteration)
    return last_val


def _card(ck: RunCheckpoint, cfg: TrainConfig, model: VOSModel, dst: Path, half: bool, infer_size: int,
          commands: list[str], last_val: dict[str, Any] | None) -> dict[str, Any]:
    """The card's fields that come from the run (``export_run`` adds source, date, version)."""
    return {
        "model": cfg.model,
        "backbone": model.config.get("backbone"),
        "config": model.config,
        "weights": dst.name,
        "dtype": "float16" if half else "float32",
        "bytes": dst.stat().st_size,
        "inference_size": infer_size,
        "stage": cfg.stage,
        "data": ck.data,
        "commands": commands,
        "stages": ck.stages,
        "iterations": ck.iteration,
        "total_iterations": sum(int(s.get("iterations", 0)) for s in ck.stages) or None,
        "wall_time_s": round(ck.elapsed, 1),
        "total_wall_time_s": round(sum(float(s.get("wall_s", 0.0)) for s in ck.stages), 1) or None,
        "hardware": ck.hardware,
        "precision": ck.precision,
        "dev_split": {
            "sequences": cfg.val_sequences,
            "size": infer_size,
            "JF": None if last_val is None else last_val["JF"],
            "J": None if last_val is None else last_val["J"],
            "F": None if last_val is None else last_val["F"],
            "iteration": None if last_val is None else last_val.get("iteration"),
            "best": ck.best,
        },
    }
