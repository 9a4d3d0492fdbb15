"""What a run trains: its model (built, or started from a previous stage's weights) and its
clips (:func:`build_dataset`: synthetic, DAVIS-layout or both mixed)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vostool.errors import VostoolError
from vostool.models import build_model, get_spec, load_weights_strict, read_checkpoint
from vostool.models.base import VOSModel
from vostool.train.checkpoint import RunCheckpoint
from vostool.train.config import STAGES, TrainConfig
from vostool.train.data import Augment, DavisClips, MixedClips, SyntheticClips


def objects_per_sample(cfg: TrainConfig) -> int:
    """Objects per training sample: ``cfg.objects``, or by default 2 for one-shot models
    that can decode the objects of a frame jointly (``can_decode_jointly``: RVOS's
    spatial recurrence, object i reads object i-1's state, which one object per sample
    never trains) and 1 for the others (independent objects, merged by soft aggregation)."""
    joint = get_spec(cfg.model).cls.can_decode_jointly
    if cfg.objects < 0:
        raise VostoolError(f"--objects must be at least 1, got {cfg.objects}")
    if cfg.objects > 1 and (not joint or cfg.zero_shot):
        raise VostoolError(f"--objects {cfg.objects}: only one-shot models that decode objects jointly (rvos) "
                           f"train on several objects per sample; '{cfg.model}' takes one")
    if cfg.objects:
        return int(cfg.objects)
    return 2 if joint and not cfg.zero_shot else 1


def build_dataset(cfg: TrainConfig, rank: int = 0) -> torch.utils.data.Dataset:
    """The run's clips; item ``i`` is a pure function of (seed, stage, i)."""
    aug = dataclasses.replace(Augment(), **{k: (tuple(v) if k == "scale" else v) for k, v in cfg.augment.items()})
    seed = cfg.seed * 1000 + (0 if cfg.stage == "pretrain" else 1)
    objects = objects_per_sample(cfg)
    if cfg.stage == "pretrain":
        if not cfg.images:
            raise VostoolError("stage 'pretrain' trains on synthetic clips from still images: give --images")
        return SyntheticClips(cfg.images, size=cfg.size, clip_len=cfg.resolved_clip_len(), seed=seed,
                              augment=aug, max_objects=max(cfg.max_objects, objects),
                              return_ids=cfg.zero_shot or objects > 1)
    if cfg.stage == "video":
        if not cfg.data:
            raise VostoolError("stage 'video' trains on DAVIS-layout videos: give --data")
        videos = DavisClips(cfg.data, size=cfg.size, clip_len=cfg.resolved_clip_len(), max_skip=cfg.max_skip,
                            exclude=cfg.val_sequences, seed=seed, augment=aug, objects=objects,
                            short_sides=cfg.multi_scale)
        if not cfg.images or cfg.image_ratio <= 0:
            return videos
        synthetic = SyntheticClips(cfg.images, size=cfg.size, clip_len=cfg.resolved_clip_len(), seed=seed,
                                   augment=aug, max_objects=max(cfg.max_objects, objects), return_ids=objects > 1)
        return MixedClips(videos, synthetic, p_synthetic=cfg.image_ratio, seed=seed)
    raise VostoolError(f"unknown stage '{cfg.stage}'; choose one of: {', '.join(STAGES)}")


def build_train_model(cfg: TrainConfig, based_on: Mapping[str, Any] | None = None) -> VOSModel:
    """The registry's model for ``cfg`` (ImageNet backbone weights only for a fresh run).

    based_on: the architecture config of the weights the stage starts from (a resumed run's
    own, or ``--init``'s), when the caller has read them already; None reads them here."""
    cls = get_spec(cfg.model).cls
    extra: dict[str, Any] = {}
    if cfg.zero_shot and cls.supports_zero_shot:
        # zero-shot: the checkpoint records the slots it is trained with (the engine's default)
        extra["slots"] = cfg.slots
    if cls.can_decode_jointly:
        # the checkpoint records whether its objects were trained as one chain: in this
        # stage (several objects per sample) or in the stage it starts from
        if based_on is None:
            based_on = _based_on(cfg)
        extra["chain"] = (not cfg.zero_shot and objects_per_sample(cfg) > 1) or bool(based_on.get("chain", False))
    return build_model(cfg.model, cfg.backbone, pretrained=cfg.pretrained and not cfg.init and not cfg.resume,
                       **extra)


def _based_on(cfg: TrainConfig) -> dict[str, Any]:
    """The architecture config of the weights a stage starts from: a resumed run's own record
    (its ``last.pt``; the ``--init`` file may be gone by then), else ``--init``'s ({} if none)."""
    if cfg.resume:
        last = Path(cfg.out) / "last.pt"
        return dict(RunCheckpoint.load(last).model_config) if last.is_file() else {}
    return read_init_weights(cfg.init).config if cfg.init else {}


def _card_stages(path: Path) -> list[dict[str, Any]]:
    """The stage records of exported weights: from the card beside them (``NAME.json``, written
    by export with the weights), so that a stage started from shipped weights keeps their
    history (iterations, wall time); none without a card."""
    card = path.with_suffix(".json")
    if not card.is_file():
        return []
    try:
        stages = json.loads(card.read_text()).get("stages") or []
    except (OSError, ValueError):
        return []
    return [s for s in stages if isinstance(s, dict)]


@dataclasses.dataclass
class InitWeights:
    """A previous stage's weights (``--init``), read once."""

    path: Path
    model: str | None                 # the model they were trained for, where recorded
    state: dict[str, torch.Tensor]
    config: dict[str, Any]            # the architecture config they were saved with
    commands: list[str]
    stages: list[dict[str, Any]]


def read_init_weights(path: str | Path) -> InitWeights:
    """Read exported weights (``.safetensors``, with their card's stage records) or a run's
    checkpoint (``last.pt`` / ``best.pt``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, meta = read_checkpoint(path)
        return InitWeights(path, meta.get("model"), state, dict(json.loads(meta.get("config", "{}"))),
                           json.loads(meta.get("commands", "[]")), _card_stages(path))
    ck = RunCheckpoint.load(path)
    return InitWeights(path, ck.config.model if ck.config is not None else None, ck.model, dict(ck.model_config),
                       list(ck.commands), list(ck.stages))


def load_init_weights(model: VOSModel, init: str | Path | InitWeights) -> tuple[list[str], list[dict[str, Any]]]:
    """Load a previous stage's weights strictly; returns the commands and stage records
    that made them. Only the parts a backbone declares new at init (``Backbone.new_at_init``:
    they start at zero, the network's function unchanged) may be absent from the file."""
    from vostool.models.backbones import Backbone

    if not isinstance(init, InitWeights):
        init = read_init_weights(init)
    if init.model is not None and init.model != model.name:
        raise VostoolError(f"{init.path} holds weights for model '{init.model}', not '{model.name}'")
    state = dict(init.state)
    own = model.state_dict()
    for prefix, mod in model.named_modules():
        if isinstance(mod, Backbone):
            for key in (f"{prefix}.{k}" if prefix else k for k in mod.new_at_init):
                if key not in state:
                    state[key] = own[key]
    load_weights_strict(model, state, source=str(init.path))
    return init.commands, init.stages
