"""A training run's configuration: :class:`TrainConfig`, its JSON form (stored in every run
checkpoint), the one rule that merges a resumed run's stored configuration with the runtime
fields given now, and the checks made before a run starts."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vostool.errors import VostoolError

STAGES = ("pretrain", "video")
SCHEDULES = ("constant", "exp", "cosine")
#: fields that may change when a run is resumed (they do not change what is computed)
RUNTIME_FIELDS = ("iters", "ckpt_every_min", "val_every", "log_every", "max_minutes", "threads",
                  "num_workers", "device", "out", "resume", "command", "progress")


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in its checkpoints)."""

    model: str = "crvos"
    backbone: str | None = None
    pretrained: bool = True            # ImageNet weights for the backbone (ignored with init)
    stage: str = "video"               # pretrain (synthetic clips) | video (DAVIS-layout clips)
    data: list[str] = field(default_factory=list)      # DAVIS-layout roots
    images: list[str] = field(default_factory=list)    # still-image sets (images/, masks/)
    size: tuple[int, int] = (240, 432)  # training crop H, W
    multi_scale: tuple[int, int] | None = None  # video: each clip's frame short side drawn in lo..hi (crop stays size)
    clip_len: int | None = None        # frames per clip (default: 4 pretrain, 8 video)
    max_skip: int = 3                  # video: frame step 1..max_skip (fast motion)
    max_objects: int = 2               # pretrain: objects pasted per clip
    image_ratio: float = 0.3           # video stage with --images: fraction of synthetic clips
    batch: int = 4
    iters: int = 1000
    lr: float = 1e-4
    lr_schedule: str = "exp"
    lr_gamma: float = 0.995
    lr_step: int = 10
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    ema_decay: float = 0.0             # >0: validate, keep and ship an exponential moving average of the weights
    freeze_bn: bool = True             # keep the backbone's BatchNorm statistics (small batches)
    freeze_backbone: bool = False      # train only the rest: no gradient through the image encoder
    train_stages: list[str] = field(default_factory=list)  # with freeze_backbone: stages still trained (e.g. s16)
    train_only: list[str] = field(default_factory=list)  # only these modules learn (e.g. decoder_zero); the rest is fixed
    zero_shot: bool = False            # RVOS: train the zero-shot (unsupervised) decoder
    objects: int = 0                   # objects per sample, decoded jointly (0: 2 for models that
                                       # handle objects jointly (rvos one-shot), else 1)
    slots: int = 3                     # zero-shot: instance slots per clip
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = True
    seed: int = 0
    out: str = "runs/crvos-video"
    ckpt_every_min: float = 5.0
    val_sequences: list[str] = field(default_factory=list)
    val_every: int = 500
    val_size: int | None = None        # inference short side for validation (default: size[0])
    val_max_frames: int | None = None  # validate on at most this many frames per sequence
    num_workers: int = 0
    threads: int | None = None
    init: str | None = None            # weights to start from (a previous stage's .pt/.safetensors)
    resume: bool = False
    log_every: int = 10
    max_minutes: float | None = None   # stop (and save) after this much wall time
    augment: dict[str, Any] = field(default_factory=dict)  # overrides of data.Augment fields
    command: str = ""
    progress: bool | None = None       # rich progress bar (default: when stdout is a TTY)

    def resolved_clip_len(self) -> int:
        return int(self.clip_len or (4 if self.stage == "pretrain" else 8))


def _jsonable(cfg: TrainConfig) -> dict[str, Any]:
    """The configuration as stored in a run checkpoint (lists, not tuples)."""
    d = asdict(cfg)
    d["size"] = list(cfg.size)
    d["multi_scale"] = list(cfg.multi_scale) if cfg.multi_scale else None
    return d


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`_jsonable`; keys this version does not know are dropped."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    d = {k: v for k, v in d.items() if k in names}
    if "size" in d:
        d["size"] = tuple(int(v) for v in d["size"])
    if d.get("multi_scale"):
        d["multi_scale"] = tuple(int(v) for v in d["multi_scale"])
    return TrainConfig(**d)


def merge_resumed(stored: TrainConfig, **given: Any) -> TrainConfig:
    """The configuration of a resumed run: ``stored`` (its ``last.pt``'s) with the runtime
    fields in ``given`` replaced. Any other field in ``given`` must equal the stored one: a
    resumed run keeps what it computes."""
    changes = {}
    for k, v in given.items():
        if k in RUNTIME_FIELDS:
            changes[k] = v
        elif getattr(stored, k) != (tuple(v) if k == "size" else v):
            raise VostoolError(f"--{k.replace('_', '-')} differs from the run being resumed "
                               f"({getattr(stored, k)!r}); a resumed run keeps its configuration")
    return dataclasses.replace(stored, **changes)


def check_config(cfg: TrainConfig) -> None:
    """Fail before any work on a configuration that cannot train (unknown stage, schedule or
    model; a crop that is not a multiple of 16)."""
    from vostool.models import get_spec

    if cfg.stage not in STAGES:
        raise VostoolError(f"unknown stage '{cfg.stage}'; choose one of: {', '.join(STAGES)}")
    if cfg.lr_schedule not in SCHEDULES:
        raise VostoolError(f"unknown lr schedule '{cfg.lr_schedule}'; choose one of: {', '.join(SCHEDULES)}")
    get_spec(cfg.model)
    if cfg.size[0] % 16 or cfg.size[1] % 16:
        raise VostoolError(f"training size {cfg.size[0]}x{cfg.size[1]} must be multiples of 16")


def check_data(cfg: TrainConfig) -> None:
    """Fail now, not at the first validation, on a bad image ratio or a validation sequence
    missing from the ``data`` roots."""
    if cfg.stage == "video" and cfg.images and not 0.0 <= cfg.image_ratio <= 1.0:
        raise VostoolError(f"--image-ratio must be in [0, 1], got {cfg.image_ratio}")
    if cfg.val_sequences:
        if not cfg.data:
            raise VostoolError("--val-sequences are sequences of the --data roots: give --data")
        from vostool.data.davis import annotated_sequences

        annotated_sequences(cfg.data, names=cfg.val_sequences)


def resume_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``out`` (its ``last.pt``), with runtime fields overridden
    by the non-None ``overrides``; other fields given are an error if they differ."""
    from vostool.train.checkpoint import load_run

    stored = config_from_dict(load_run(Path(out) / "last.pt")["config"])
    given = {k: v for k, v in overrides.items() if v is not None}
    return merge_resumed(stored, **given, resume=True, out=str(out))
