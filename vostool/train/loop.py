"""The training loop: two stages, BPTT, mixed precision, checkpoints, resume, validation, DDP.

Stages (as the papers train):

- ``pretrain``: synthetic clips from still images with masks (``--images``, RGMP 3.2);
- ``video``: clips of real videos (``--data`` DAVIS-layout roots), usually started from
  the pre-trained weights (``--init runs/<pretrain>/last.pt``).

Each step runs ``model.forward_clip`` over a clip, the model fed its own soft predictions
(back-propagation through time), and the model's own loss: ``model.training_loss(frames,
masks)`` (declared on :class:`VOSModel`; multi-part losses override it).

A run lives in its ``out`` folder: ``last.pt`` (everything to resume: model, optimiser,
scaler, iteration, RNG states, config, wall time, the commands that made it),
``best.pt`` (best validation J&F), ``log.txt`` (one line every ``log_every`` iterations)
and ``val.jsonl`` (every validation). Checkpoints are written atomically every
``ckpt_every_min`` minutes, at the end and on Ctrl-C / SIGTERM.

Clips are a pure function of (seed, stage, index) so a resumed run sees exactly the clips
an uninterrupted run would have seen.

Learning rate schedules (``lr_schedule``): ``constant``; ``exp``: ``lr * lr_gamma **
(iteration / lr_step)`` (CRVOS: 0.995 per epoch); ``cosine``: from ``lr`` to ``lr / 100``
over ``iters``. A linear warm-up over ``warmup`` iterations applies to all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from vostool.engine.device import autocast, device_name, resolve_device, resolve_precision
from vostool.errors import VostoolError
from vostool.models import build_model, get_spec, load_weights_strict, read_checkpoint
from vostool.models.base import VOSModel
from vostool.train.data import Augment, DavisClips, MixedClips, SyntheticClips

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
    d = asdict(cfg)
    d["size"] = list(cfg.size)
    d["multi_scale"] = list(cfg.multi_scale) if cfg.multi_scale else None
    return d


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    d = {k: v for k, v in d.items() if k in names}
    if "size" in d:
        d["size"] = tuple(int(v) for v in d["size"])
    if d.get("multi_scale"):
        d["multi_scale"] = tuple(int(v) for v in d["multi_scale"])
    return TrainConfig(**d)


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a run checkpoint (``last.pt`` / ``best.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise VostoolError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise VostoolError(f"cannot read checkpoint {path}: {exc}") from None


def resume_config(out: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``out`` (its ``last.pt``), with runtime fields overridden
    by the non-None ``overrides``; other fields given are an error if they differ."""
    ck = load_run(Path(out) / "last.pt")
    cfg = config_from_dict(ck["config"])
    changes = {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k in RUNTIME_FIELDS:
            changes[k] = v
        elif getattr(cfg, k) != (tuple(v) if k == "size" else v):
            raise VostoolError(f"--{k.replace('_', '-')} differs from the run being resumed "
                               f"({getattr(cfg, k)!r}); a resumed run keeps its configuration")
    changes["resume"] = True
    changes["out"] = str(out)
    return dataclasses.replace(cfg, **changes)


# -- distributed ---------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this module initialised the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Set up DDP when launched by torchrun (``WORLD_SIZE`` > 1): gloo on CPU, nccl on CUDA."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    owned = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
        owned = True
    return Dist(rank, world, local, owned)


# -- the loss wrapper (what DDP wraps) ---------------------------------------------------------
class ClipLoss(nn.Module):
    """``forward(frames, masks) -> loss``: the model's own training loss over a clip."""

    def __init__(self, model: VOSModel, zero_shot: bool = False, slots: int = 3) -> None:
        super().__init__()
        self.model = model
        self.zero_shot, self.slots = zero_shot, slots

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return clip_loss(self.model, frames, masks, self.zero_shot, self.slots)


def clip_loss(
    model: VOSModel, frames: torch.Tensor, masks: torch.Tensor, zero_shot: bool = False, slots: int = 3,
) -> torch.Tensor:
    """frames ``B x T x 3 x H x W``, masks ``B x T x H x W`` long {0, 1, 255} (zero-shot:
    instance ids, matched to the model's slots)."""
    if zero_shot:
        if not model.supports_zero_shot:
            raise VostoolError(f"model '{model.name}' has no zero-shot mode (only rvos)")
        return model.training_loss_zero_shot(frames, masks, slots)
    return model.training_loss(frames, masks)


def to_channels_last_clip(frames: torch.Tensor) -> torch.Tensor:
    """``B x T x C x H x W`` laid out so that ``flatten(0, 1)`` is channels_last."""
    return frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def set_train_mode(model: nn.Module, freeze_bn: bool = True, train_only: Sequence[str] = ()) -> None:
    """``model.train()``, with the backbone's BatchNorm layers kept in eval mode (their
    ImageNet statistics frozen; their affine parameters still learn) when ``freeze_bn``.
    With ``train_only``, every BatchNorm outside those modules is kept in eval mode too."""
    from vostool.models.backbones import Backbone

    model.train()
    if freeze_bn:
        for mod in model.modules():
            if isinstance(mod, Backbone):
                for bn in mod.modules():
                    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                        bn.eval()
    if train_only:
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and not _under(name, train_only):
                mod.eval()


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def train_only(model: nn.Module, modules: Sequence[str]) -> int:
    """Freeze every parameter outside the named submodules (``decoder_zero``,
    ``decoder.cells``...): only those learn, so a stage can fit one head to a fixed
    network. Returns the number of parameters left learning."""
    names = {n for n, _ in model.named_modules()}
    unknown = [m for m in modules if m not in names]
    if unknown:
        tops = ", ".join(n for n, _ in model.named_children())
        raise VostoolError(f"--train-only: no module {', '.join(map(repr, unknown))} in {model.__class__.__name__}; "
                           f"its top-level modules: {tops}")
    learning = 0
    for name, p in model.named_parameters():
        if _under(name, modules):
            learning += p.numel() if p.requires_grad else 0
        else:
            p.requires_grad_(False)
    if learning == 0:
        raise VostoolError(f"--train-only {','.join(modules)}: no parameter left to learn")
    return learning


def freeze_backbones(model: nn.Module, keep: Sequence[str] = ()) -> int:
    """Stop gradients at every ImageNet backbone whose input needs none (the frame
    encoders); a backbone that also takes a mask channel keeps learning. ``keep`` names
    stages that still learn (``"s16"``: the low-resolution blocks, cheap to back-propagate
    through). Returns the number of parameters frozen. Without gradients through the
    encoder, a CPU training step costs about the forward pass alone."""
    from vostool.models.backbones import Backbone

    frozen = 0
    for mod in model.modules():
        if isinstance(mod, Backbone):
            first = next(m for m in mod.modules() if isinstance(m, nn.Conv2d))
            if first.in_channels != 3:
                continue
            kept = {id(p) for name in keep for m in mod.stages()[name] for p in m.parameters()}
            for p in mod.parameters():
                if p.requires_grad and id(p) not in kept:
                    p.requires_grad_(False)
                    frozen += p.numel()
    return frozen


def lr_at(cfg: TrainConfig, it: int) -> float:
    if cfg.lr_schedule == "constant":
        f = 1.0
    elif cfg.lr_schedule == "exp":
        f = cfg.lr_gamma ** (it / max(1, cfg.lr_step))
    elif cfg.lr_schedule == "cosine":
        f = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, it / max(1, cfg.iters))))
    else:
        raise VostoolError(f"unknown lr schedule '{cfg.lr_schedule}'; choose one of: {', '.join(SCHEDULES)}")
    if cfg.warmup and it < cfg.warmup:
        f *= (it + 1) / cfg.warmup
    return cfg.lr * f


# -- building blocks ----------------------------------------------------------------------------
def objects_per_sample(cfg: TrainConfig) -> int:
    """Objects per training sample: ``cfg.objects``, or by default 2 for one-shot models
    that decode the objects of a frame jointly (``uses_soft_aggregation = False``: RVOS's
    spatial recurrence, object i reads object i-1's state, which one object per sample
    never trains) and 1 for the others (independent objects, merged by soft aggregation)."""
    joint = not get_spec(cfg.model).cls.uses_soft_aggregation
    if cfg.objects < 0:
        raise VostoolError(f"--objects must be at least 1, got {cfg.objects}")
    if cfg.objects > 1 and (not joint or cfg.zero_shot):
        raise VostoolError(f"--objects {cfg.objects}: only one-shot models that decode objects jointly (rvos) "
                           f"train on several objects per sample; '{cfg.model}' takes one")
    if cfg.objects:
        return int(cfg.objects)
    return 2 if joint and not cfg.zero_shot else 1


def build_dataset(cfg: TrainConfig, rank: int = 0) -> torch.utils.data.Dataset:
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


class _BatchSampler(torch.utils.data.Sampler):
    """Indices ``(it * world + rank) * batch + b`` for it in [start, end)."""

    def __init__(self, start: int, end: int, batch: int, rank: int, world: int) -> None:
        self.start, self.end, self.batch, self.rank, self.world = start, end, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self):
        for it in range(self.start, self.end):
            base = (it * self.world + self.rank) * self.batch
            yield list(range(base, base + self.batch))


def load_init_weights(model: VOSModel, path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Load a previous stage's weights strictly; returns the commands and stage records
    that made them."""
    path = Path(path)
    if path.suffix == ".safetensors":
        state, meta = read_checkpoint(path)
        if meta.get("model", model.name) != model.name:
            raise VostoolError(f"{path} holds weights for model '{meta['model']}', not '{model.name}'")
        load_weights_strict(model, state, source=str(path))
        return json.loads(meta.get("commands", "[]")), []
    ck = load_run(path)
    if ck.get("config", {}).get("model", model.name) != model.name:
        raise VostoolError(f"{path} holds weights for model '{ck['config']['model']}', not '{model.name}'")
    load_weights_strict(model, ck["model"], source=str(path))
    return list(ck.get("commands", [])), list(ck.get("stages", []))


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _hardware(device: torch.device, world: int) -> str:
    name = device_name(device)
    return name if world == 1 else f"{world} x {name}"


# -- validation ----------------------------------------------------------------------------------
def validate(model: VOSModel, cfg: TrainConfig, device: torch.device, precision: str) -> dict[str, Any]:
    """J&F on the held-out ``val_sequences`` (full sequences of the DAVIS roots), computed by
    ``vostool eval``'s own runner and scorer (:func:`vostool.eval.runner.run_sequences`,
    :func:`vostool.eval.scoring.score_results`), so that a card's dev J&F is exactly what
    ``vostool eval davis16 --davis-root ROOT --split train --sequences ... --weights FILE
    --size S`` prints for the exported file. Sequences whose annotations hold one object
    (DAVIS-2016's 0/255) are scored as ``davis16`` (binary), others as ``davis17``."""
    import tempfile

    from vostool.engine.propagator import Propagator
    from vostool.eval.datasets import SequenceSpec, read_index_png
    from vostool.eval.runner import run_sequences
    from vostool.eval.scoring import score_results
    from vostool.train.data import find_sequences

    seqs = find_sequences(cfg.data, names=cfg.val_sequences)
    n_max = cfg.val_max_frames
    specs = [SequenceSpec(s.name, s.masks[0].parent, tuple(p.stem for p in s.masks)[:n_max], s.frames[0].parent)
             for s in seqs]
    firsts = [set(np.unique(read_index_png(sp.gt_dir / f"{sp.frames[0]}.png")).tolist()) for sp in specs]
    binary = all(ids <= {0, 1} or ids <= {0, 255} for ids in firsts)
    was_training = model.training
    prop = Propagator(model, device=device, precision=precision, size=cfg.val_size or cfg.size[0],
                      channels_last=cfg.channels_last)
    try:
        with tempfile.TemporaryDirectory(prefix="vostool-val-") as tmp:
            run_sequences(specs, tmp, prop, binary=binary, max_frames=n_max)
            result = score_results(specs, tmp, binary=binary, workers=1)
    finally:
        model.train(was_training)
    g = result.global_figures
    per_seq: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.sequence for r in result.rows):
        rows = [r for r in result.rows if r.sequence == name]
        per_seq[name] = {"J": float(np.mean([r.j_mean for r in rows])), "F": float(np.mean([r.f_mean for r in rows]))}
    return {"J": float(g["J-Mean"]), "F": float(g["F-Mean"]), "JF": float(g["J&F-Mean"]), "sequences": per_seq}


# -- progress ------------------------------------------------------------------------------------
class _Reporter:
    """Rich progress bar on a TTY, plain lines otherwise; ``log.txt`` always (rank 0)."""

    def __init__(self, cfg: TrainConfig, main: bool, start: int, log_path: Path | None) -> None:
        self.cfg, self.main, self.start = cfg, main, start
        self.log = open(log_path, "a", buffering=1) if (main and log_path) else None
        use_bar = cfg.progress if cfg.progress is not None else sys.stdout.isatty()
        self.progress = None
        if main and use_bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]}"),
                TextColumn("lr {task.fields[lr]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(),
            )
            self.task = self.progress.add_task(f"{cfg.model} {cfg.stage}", total=cfg.iters, completed=start,
                                               loss="-", speed="-", lr="-")
            self.progress.start()

    def line(self, text: str, echo: bool = True) -> None:
        if not self.main:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        if self.log:
            self.log.write(f"{stamp} {text}\n")
        if echo:
            if self.progress is not None:
                self.progress.console.print(text)
            else:
                print(text, flush=True)

    def update(self, it: int, loss: float, clips_s: float, lr: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=it, loss=f"{loss:.4f}", speed=f"{clips_s:.2f} clips/s",
                                 lr=f"{lr:.2e}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.log:
            self.log.close()


# -- the loop ------------------------------------------------------------------------------------
def train(cfg: TrainConfig, model_factory: Callable[[TrainConfig], VOSModel] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary dict.

    ``model_factory`` builds the model instead of ``build_model`` (tests use tiny models).
    """
    if cfg.resume:
        ck_path = Path(cfg.out) / "last.pt"
        if not ck_path.is_file():
            raise VostoolError(f"nothing to resume: {ck_path} not found")
        ck = load_run(ck_path)
        stored = config_from_dict(ck["config"])
        keep = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
        cfg = dataclasses.replace(stored, **keep)
    else:
        ck = None
    if cfg.stage not in STAGES:
        raise VostoolError(f"unknown stage '{cfg.stage}'; choose one of: {', '.join(STAGES)}")
    if cfg.lr_schedule not in SCHEDULES:
        raise VostoolError(f"unknown lr schedule '{cfg.lr_schedule}'; choose one of: {', '.join(SCHEDULES)}")
    get_spec(cfg.model)
    if cfg.size[0] % 16 or cfg.size[1] % 16:
        raise VostoolError(f"training size {cfg.size[0]}x{cfg.size[1]} must be multiples of 16")

    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    if device.type == "cuda" and dist_info.world > 1:
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    elif dist_info.world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_info.world))
    torch.manual_seed(cfg.seed + dist_info.rank)
    np.random.seed((cfg.seed + dist_info.rank) % 2**32)

    if cfg.stage == "video" and cfg.images and not 0.0 <= cfg.image_ratio <= 1.0:
        raise VostoolError(f"--image-ratio must be in [0, 1], got {cfg.image_ratio}")
    if cfg.val_sequences:
        if not cfg.data:
            raise VostoolError("--val-sequences are sequences of the --data roots: give --data")
        from vostool.train.data import find_sequences

        find_sequences(cfg.data, names=cfg.val_sequences)  # fail now, not at the first validation

    out = Path(cfg.out)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (out / "last.pt").exists():
            raise VostoolError(f"{out} already holds a run (last.pt); use --resume to continue it or another --out")

    # model
    if model_factory is not None:
        model = model_factory(cfg)
    else:
        # zero-shot: the checkpoint records the slots it is trained with (the engine's default)
        extra = {"slots": cfg.slots} if cfg.zero_shot and get_spec(cfg.model).cls.supports_zero_shot else {}
        model = build_model(cfg.model, cfg.backbone, pretrained=cfg.pretrained and not cfg.init and not cfg.resume,
                            **extra)
    commands: list[str] = []
    prior_stages: list[dict[str, Any]] = []
    if cfg.init and not cfg.resume:
        commands, prior_stages = load_init_weights(model, cfg.init)
    model = model.to(device)
    if cfg.channels_last and device.type != "mps":
        model = model.to(memory_format=torch.channels_last)
    set_train_mode(model, cfg.freeze_bn, cfg.train_only)
    if cfg.freeze_backbone:
        freeze_backbones(model, keep=cfg.train_stages)
    if cfg.train_only:
        train_only(model, cfg.train_only)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=(precision == "fp16" and device.type == "cuda"))

    start_it, elapsed_before, best, history = 0, 0.0, None, []
    loss_ema = None
    ema = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ck is not None:
        # with weight averaging, "model" holds the averaged (shipped) weights and "train_model" the raw ones
        load_weights_strict(model, ck.get("train_model", ck["model"]), source=str(Path(cfg.out) / "last.pt"))
        if ema is not None:
            ema.load(ck["model"] if "train_model" in ck else model.state_dict(), int(ck.get("ema_updates", 0)))
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_it = int(ck["iteration"])
        elapsed_before = float(ck.get("elapsed", 0.0))
        best = ck.get("best")
        history = list(ck.get("val_history", []))
        commands = list(ck.get("commands", []))
        prior_stages = list(ck.get("stages", []))[:-1]
        loss_ema = ck.get("loss_ema")
        if ck.get("rng") and dist_info.world == 1:
            _set_rng_state(ck["rng"])
    commands = commands + [cfg.command] if cfg.command and (not commands or commands[-1] != cfg.command) else commands

    wrapped: nn.Module = ClipLoss(model, cfg.zero_shot, cfg.slots)
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(wrapped, device_ids=[device.index] if device.type == "cuda" else None,
                      find_unused_parameters=True)

    dataset = build_dataset(cfg, dist_info.rank)
    if cfg.num_workers > 0 and hasattr(dataset, "preload"):
        dataset.preload()
    sampler = _BatchSampler(start_it, cfg.iters, cfg.batch, dist_info.rank, dist_info.world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        persistent_workers=False, prefetch_factor=2 if cfg.num_workers > 0 else None)

    rep = _Reporter(cfg, dist_info.main, start_it, out / "log.txt")
    n_data = len(getattr(dataset, "sequences", [])) or getattr(dataset, "count", 0)
    if start_it == 0 or not cfg.resume:
        mixed = (f" + {round(cfg.image_ratio * 100)}% synthetic clips from {dataset.count} images"
                 if isinstance(dataset, MixedClips) else "")
        rep.line(f"training {cfg.model} ({model.config.get('backbone')}) stage {cfg.stage} on {n_data} "
                 f"{'sequences' if cfg.stage == 'video' else 'images'}{mixed}: {cfg.iters} iterations of "
                 f"{cfg.batch} x {cfg.resolved_clip_len()} frames at {cfg.size[0]}x{cfg.size[1]}, "
                 f"{_hardware(device, dist_info.world)}, precision {precision}")
    else:
        rep.line(f"resuming {out} at iteration {start_it}/{cfg.iters}")

    t0 = time.time()
    last_ckpt = t0
    it = start_it
    interrupted = False
    last_loss = float("nan")

    def state(iteration: int) -> dict[str, Any]:
        stage_rec = {"stage": cfg.stage, "command": cfg.command, "iterations": iteration,
                     "wall_s": round(elapsed_before + time.time() - t0, 1),
                     "hardware": _hardware(device, dist_info.world), "precision": precision,
                     "data": _data_summary(cfg, dataset)}
        return {
            "stages": prior_stages + [stage_rec],
            "model": ema.state_dict() if ema is not None else
            {k: v.detach().cpu() for k, v in model.state_dict().items()},
            **({"train_model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "ema_updates": ema.updates} if ema is not None else {}),
            "optimizer": opt.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "iteration": iteration, "rng": _rng_state(), "config": _jsonable(cfg),
            "elapsed": elapsed_before + time.time() - t0, "commands": commands, "best": best,
            "val_history": history, "loss_ema": loss_ema, "precision": precision,
            "hardware": _hardware(device, dist_info.world), "model_config": model.config,
            "data": _data_summary(cfg, dataset),
        }

    def save(iteration: int, name: str = "last.pt") -> None:
        if dist_info.main:
            _atomic_save(state(iteration), out / name)

    def run_validation(iteration: int) -> None:
        nonlocal best
        if not cfg.val_sequences or not cfg.data:
            return
        if dist_info.main:
            tv = time.time()
            if ema is not None:
                with ema.swapped_in():
                    res = validate(model, cfg, device, precision)
            else:
                res = validate(model, cfg, device, precision)
            set_train_mode(model, cfg.freeze_bn, cfg.train_only)
            res.update(iteration=iteration, seconds=round(time.time() - tv, 1))
            history.append(res)
            with open(out / "val.jsonl", "a") as f:
                f.write(json.dumps(res) + "\n")
            fpart = f" F {res['F']:.4f}" if res["F"] is not None else ""
            rep.line(f"val it {iteration}: J&F {res['JF']:.4f} (J {res['J']:.4f}{fpart}) on "
                     f"{len(res['sequences'])} sequences in {res['seconds']}s")
            if best is None or res["JF"] > best["JF"]:
                best = {"JF": res["JF"], "J": res["J"], "F": res["F"], "iteration": iteration}
                save(iteration, "best.pt")
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.barrier()

    prev_handler = None
    timed_out = False
    if dist_info.main and hasattr(signal, "SIGTERM"):
        try:
            prev_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            prev_handler = None

    speed_t, speed_n = time.time(), 0
    try:
        for frames, masks in loader:
            frames = frames.to(device, non_blocking=True)
            masks = masks.to(device, non_blocking=True)
            if cfg.channels_last:
                frames = to_channels_last_clip(frames)
            lr = lr_at(cfg, it)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast(device, precision):
                loss = wrapped(frames, masks)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update()
            it += 1
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                rep.line(f"warning: loss {last_loss} at iteration {it}")
            loss_ema = last_loss if loss_ema is None else 0.95 * loss_ema + 0.05 * last_loss
            speed_n += frames.shape[0] * dist_info.world
            now = time.time()
            clips_s = speed_n / max(1e-9, now - speed_t)
            rep.update(it, loss_ema, clips_s, lr)
            if it % cfg.log_every == 0 or it == cfg.iters:
                s_it = (now - speed_t) / max(1, speed_n / (frames.shape[0] * dist_info.world))
                rep.line(f"it {it}/{cfg.iters} loss {last_loss:.4f} ema {loss_ema:.4f} lr {lr:.2e} "
                         f"{clips_s:.2f} clips/s {s_it:.2f} s/it elapsed {elapsed_before + now - t0:.0f}s",
                         echo=rep.progress is None)
                speed_t, speed_n = now, 0
            if cfg.val_every and it % cfg.val_every == 0 and it < cfg.iters:
                run_validation(it)
            if now - last_ckpt >= cfg.ckpt_every_min * 60:
                save(it)
                last_ckpt = time.time()
            if cfg.max_minutes and (elapsed_before + now - t0) / 60 >= cfg.max_minutes and it < cfg.iters:
                rep.line(f"time limit of {cfg.max_minutes} min reached at iteration {it}")
                timed_out = True
                break
        if it > start_it and (it >= cfg.iters or timed_out):
            run_validation(it)
        save(it)
    except KeyboardInterrupt:
        interrupted = True
        save(it)
        rep.line(f"interrupted at iteration {it}; saved {out / 'last.pt'} (continue with --resume)")
    finally:
        rep.close()
        if prev_handler is not None:
            signal.signal(signal.SIGTERM, prev_handler)
    if dist_info.owned:
        import torch.distributed as dist

        dist.destroy_process_group()
    wall = elapsed_before + time.time() - t0
    done = it - start_it
    summary = {
        "out": str(out), "iteration": it, "iters": cfg.iters, "interrupted": interrupted, "loss": last_loss,
        "loss_ema": loss_ema, "wall_s": wall, "s_per_it": (time.time() - t0) / done if done else None,
        "best": best, "precision": precision, "device": str(device), "world": dist_info.world,
    }
    if dist_info.main:
        rep_line = (f"done: {it}/{cfg.iters} iterations, loss {loss_ema if loss_ema is not None else float('nan'):.4f}, "
                    f"{wall / 60:.1f} min" + (f", best J&F {best['JF']:.4f} at {best['iteration']}" if best else ""))
        if not interrupted:
            with open(out / "log.txt", "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + rep_line + "\n")
    return summary


class WeightAverage:
    """Exponential moving average of a model's weights (Polyak averaging).

    ``avg <- d * avg + (1 - d) * w`` after every optimiser step, with
    ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates so that a fresh average is
    not dominated by the starting weights. Floating-point parameters *and* buffers are
    averaged in float32 (BatchNorm statistics follow the weights that produced them);
    integer buffers are copied. Validation, ``best.pt`` and the exported checkpoint use
    the averaged weights; the optimiser keeps training the raw ones.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise VostoolError(f"--ema must be in (0, 1), got {decay}")
        self.model, self.decay, self.updates = model, float(decay), 0
        self.avg = {k: v.detach().float().clone() if v.is_floating_point() else v.detach().clone()
                    for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in self.model.state_dict().items():
            a = self.avg[k]
            if a.is_floating_point():
                a.lerp_(v.detach().float(), 1.0 - d)
            else:
                a.copy_(v)

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.avg) ^ set(weights)
        if missing:
            raise VostoolError(f"averaged weights do not match the model: {sorted(missing)[:3]}")
        for k, v in weights.items():
            self.avg[k].copy_(v)
        self.updates = updates

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights in the model's own dtypes (on the CPU)."""
        ref = self.model.state_dict()
        return {k: v.to(dtype=ref[k].dtype).cpu() for k, v in self.avg.items()}

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the model."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state_dict())
        try:
            yield
        finally:
            self.model.load_state_dict(raw)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _data_summary(cfg: TrainConfig, dataset: Any) -> dict[str, Any]:
    objects = objects_per_sample(cfg)
    extra = {"objects_per_sample": objects} if objects > 1 else {}
    if cfg.stage == "video":
        seqs = getattr(dataset, "sequences", [])
        out = {"roots": [str(r) for r in cfg.data], "sequences": len(seqs),
               "frames": sum(len(s.frames) for s in seqs), "val_sequences": list(cfg.val_sequences)}
        if isinstance(dataset, MixedClips):
            out.update(images=[str(r) for r in cfg.images], image_count=dataset.count, image_ratio=cfg.image_ratio)
        return {**out, **extra}
    return {"images": [str(r) for r in cfg.images], "count": getattr(dataset, "count", 0), **extra}
