"""The training loop: two stages, BPTT, mixed precision, checkpoints, resume, validation, DDP.

Stages (as the papers train):

- ``pretrain``: synthetic clips from still images with masks (``--images``, RGMP 3.2);
- ``video``: clips of real videos (``--data`` DAVIS-layout roots), usually started from
  the pre-trained weights (``--init runs/<pretrain>/last.pt``).

Each step runs ``model.forward_clip`` over a clip, the model fed its own soft predictions
(back-propagation through time), and the model's own loss: ``model.training_loss(frames,
masks)`` (declared on :class:`VOSModel`; multi-part losses override it).

A run lives in its ``out`` folder: ``last.pt`` (everything to resume: model, optimiser,
scaler, iteration, RNG states, config, wall time, the commands that made it; a
:class:`~vostool.train.checkpoint.RunCheckpoint`), ``best.pt`` (best validation J&F),
``log.txt`` (one line every ``log_every`` iterations) and ``val.jsonl`` (every validation).
Checkpoints are written atomically every ``ckpt_every_min`` minutes, at the end and on
Ctrl-C / SIGTERM.

Clips are a pure function of (seed, stage, index) so a resumed run sees exactly the clips
an uninterrupted run would have seen. Learning rate schedules: :mod:`vostool.train.schedule`.

This module holds :class:`Trainer` (one run: set-up, a step, validation, checkpoints, the
loop) and :func:`train`; the parts live beside it (``config``, ``checkpoint``, ``freeze``,
``schedule``, ``ema``, ``distributed``, ``report``, ``factory``, ``loss``, ``validation``)
and are re-exported here under their old names.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from vostool.engine.device import autocast, resolve_device, resolve_precision
from vostool.errors import VostoolError
from vostool.models import load_weights_strict
from vostool.models.base import VOSModel
from vostool.train.checkpoint import RunCheckpoint, load_run, rng_state, set_rng_state
from vostool.train.config import (RUNTIME_FIELDS, SCHEDULES, STAGES, TrainConfig, _jsonable, check_config,
                                  check_data, config_from_dict, merge_resumed, resume_config)
from vostool.train.data import MixedClips
from vostool.train.distributed import BatchSampler, Dist, init_distributed
from vostool.train.ema import WeightAverage
from vostool.train.factory import (
    build_dataset, build_train_model, load_init_weights, objects_per_sample, read_init_weights)
from vostool.train.freeze import freeze_backbones, param_groups, set_train_mode, train_only
from vostool.train.loss import ClipLoss, clip_loss, to_channels_last_clip
from vostool.train.report import Reporter, data_summary, hardware_name
from vostool.train.schedule import lr_at
from vostool.train.validation import validate

__all__ = [  # re-exported: the names this module held before it was split
    "RUNTIME_FIELDS", "SCHEDULES", "STAGES", "ClipLoss", "Dist", "RunCheckpoint", "TrainConfig", "Trainer",
    "WeightAverage", "build_dataset", "clip_loss", "config_from_dict", "freeze_backbones", "init_distributed",
    "load_init_weights", "load_run", "lr_at", "objects_per_sample", "resume_config", "set_train_mode",
    "to_channels_last_clip", "train", "train_only", "validate", "_jsonable",
]


def train(cfg: TrainConfig, model_factory: Callable[[TrainConfig], VOSModel] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns a summary dict.

    ``model_factory`` builds the model instead of ``build_model`` (tests use tiny models).
    """
    return Trainer(cfg, model_factory).run()


def _resumed(cfg: TrainConfig) -> tuple[TrainConfig, RunCheckpoint | None]:
    """``cfg`` as given, or for ``cfg.resume`` the stored run's configuration with the
    runtime fields of ``cfg``, and the checkpoint it resumes from."""
    if not cfg.resume:
        return cfg, None
    ck_path = Path(cfg.out) / "last.pt"
    if not ck_path.is_file():
        raise VostoolError(f"nothing to resume: {ck_path} not found")
    ck = RunCheckpoint.load(ck_path)
    if ck.config is None or ck.optimizer is None:
        raise VostoolError(f"{ck_path} is not a vostool training checkpoint")
    return merge_resumed(ck.config, **{k: getattr(cfg, k) for k in RUNTIME_FIELDS}), ck


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Trainer:
    """One training run: ``Trainer(cfg).run()``.

    The constructor sets everything up in the order that fixes the random streams (seeds,
    model initialisation, a resumed run's RNG state, then the data loader), so a run and
    its resumption draw exactly the same numbers.
    """

    def __init__(self, cfg: TrainConfig, model_factory: Callable[[TrainConfig], VOSModel] | None = None) -> None:
        cfg, resumed = _resumed(cfg)
        check_config(cfg)
        self.cfg = cfg
        self._setup_process()
        check_data(cfg)
        self.out = self._prepare_out()
        self.model = self._build_model(model_factory, resumed)
        self._build_optimizer()
        self._restore(resumed)
        self.wrapped = self._wrap()
        self._build_data()
        self.rep = Reporter(cfg, self.dist.main, self.start_it, self.out / "log.txt")
        self._announce()

    # -- set-up ------------------------------------------------------------------------------
    def _setup_process(self) -> None:
        """Device, DDP rank, precision, threads and the seeds."""
        cfg = self.cfg
        device = resolve_device(cfg.device)
        self.dist: Dist = init_distributed(device)
        if device.type == "cuda" and self.dist.world > 1:
            device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.precision = resolve_precision(cfg.precision, device)
        self.hardware = hardware_name(device, self.dist.world)
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        elif self.dist.world > 1 and device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.dist.world))
        torch.manual_seed(cfg.seed + self.dist.rank)
        np.random.seed((cfg.seed + self.dist.rank) % 2**32)

    def _prepare_out(self) -> Path:
        out = Path(self.cfg.out)
        if self.dist.main:
            out.mkdir(parents=True, exist_ok=True)
            if not self.cfg.resume and (out / "last.pt").exists():
                raise VostoolError(f"{out} already holds a run (last.pt); use --resume to continue it or another --out")
        return out

    def _build_model(self, model_factory: Callable[[TrainConfig], VOSModel] | None,
                     resumed: RunCheckpoint | None) -> VOSModel:
        """The model on its device, started from ``init`` if given, with what learns set."""
        cfg = self.cfg
        init = read_init_weights(cfg.init) if cfg.init and not cfg.resume else None
        if model_factory is not None:
            model = model_factory(cfg)
        else:  # the architecture of the weights it starts from, each file read once
            based_on = resumed.model_config if resumed is not None else init.config if init is not None else {}
            model = build_train_model(cfg, based_on)
        self.commands: list[str] = []
        self.prior_stages: list[dict[str, Any]] = []
        if init is not None:
            self.commands, self.prior_stages = load_init_weights(model, init)
        model = model.to(self.device)
        if cfg.channels_last and self.device.type != "mps":
            model = model.to(memory_format=torch.channels_last)
        set_train_mode(model, cfg.freeze_bn, cfg.train_only)
        if cfg.freeze_backbone:
            freeze_backbones(model, keep=cfg.train_stages)
        if cfg.train_only:
            train_only(model, cfg.train_only)
        return model

    def _build_optimizer(self) -> None:
        cfg = self.cfg
        groups = param_groups(self.model)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=(self.precision == "fp16" and self.device.type == "cuda"))
        self.ema = WeightAverage(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def _restore(self, ck: RunCheckpoint | None) -> None:
        """Progress from the checkpoint being resumed (or a fresh start's)."""
        self.start_it, self.elapsed_before, self.best = 0, 0.0, None
        self.history: list[dict[str, Any]] = []
        self.loss_ema: float | None = None
        if ck is not None:
            load_weights_strict(self.model, ck.raw_weights, source=str(self.out / "last.pt"))
            if self.ema is not None:
                self.ema.load(ck.model if ck.train_model is not None else self.model.state_dict(), ck.ema_updates)
            saved_groups = len(ck.optimizer.get("param_groups", []))
            if saved_groups != len(self.opt.param_groups):
                raise VostoolError(
                    f"{self.out / 'last.pt'}: its optimiser has {saved_groups} parameter "
                    f"group(s), this version of {self.cfg.model} trains with {len(self.opt.param_groups)} (the model's "
                    "lr_scales changed since the run started); start a new run with --init from it instead of --resume")
            self.opt.load_state_dict(ck.optimizer)
            if ck.scaler:
                self.scaler.load_state_dict(ck.scaler)
            self.start_it, self.elapsed_before, self.best = ck.iteration, ck.elapsed, ck.best
            self.history, self.loss_ema = list(ck.val_history), ck.loss_ema
            self.commands, self.prior_stages = list(ck.commands), list(ck.stages)[:-1]
            if ck.rng and self.dist.world == 1:  # under DDP each rank reseeded itself; the saved state is rank 0's
                set_rng_state(ck.rng)
        command = self.cfg.command
        if command and (not self.commands or self.commands[-1] != command):
            self.commands = self.commands + [command]

    def _wrap(self) -> nn.Module:
        """The loss module a step calls (DDP-wrapped under torchrun)."""
        wrapped: nn.Module = ClipLoss(self.model, self.cfg.zero_shot, self.cfg.slots)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                          find_unused_parameters=True)
        return wrapped

    def _build_data(self) -> None:
        cfg = self.cfg
        self.dataset = build_dataset(cfg, self.dist.rank)
        if cfg.num_workers > 0 and hasattr(self.dataset, "preload"):
            self.dataset.preload()  # decode once in the parent, not once per worker
        sampler = BatchSampler(self.start_it, cfg.iters, cfg.batch, self.dist.rank, self.dist.world)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=2 if cfg.num_workers > 0 else None)

    def _announce(self) -> None:
        cfg, dataset = self.cfg, self.dataset
        if self.start_it and cfg.resume:
            self.rep.line(f"resuming {self.out} at iteration {self.start_it}/{cfg.iters}")
            return
        n_data = len(getattr(dataset, "sequences", [])) or getattr(dataset, "count", 0)
        mixed = (f" + {round(cfg.image_ratio * 100)}% synthetic clips from {dataset.count} images"
                 if isinstance(dataset, MixedClips) else "")
        self.rep.line(f"training {cfg.model} ({self.model.config.get('backbone')}) stage {cfg.stage} on {n_data} "
                      f"{'sequences' if cfg.stage == 'video' else 'images'}{mixed}: {cfg.iters} iterations of "
                      f"{cfg.batch} x {cfg.resolved_clip_len()} frames at {cfg.size[0]}x{cfg.size[1]}, "
                      f"{self.hardware}, precision {self.precision}")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``cfg.iters`` (or the time limit, or Ctrl-C / SIGTERM: then save and
        stop); returns the summary :func:`train` returns."""
        self.t0 = self.last_ckpt = time.time()
        self.it = self.start_it
        self.interrupted = self.timed_out = False
        self.last_loss = float("nan")
        prev_handler = self._catch_sigterm()
        self.speed_t, self.speed_n = time.time(), 0
        try:
            self._loop()
        except KeyboardInterrupt:
            self.interrupted = True
            self._save(self.it)
            self.rep.line(f"interrupted at iteration {self.it}; saved {self.out / 'last.pt'} (continue with --resume)")
        finally:
            self.rep.close()
            if prev_handler is not None:
                signal.signal(signal.SIGTERM, prev_handler)
        self.dist.close()
        return self._finish()

    def _loop(self) -> None:
        for frames, masks in self.loader:
            lr = self._step(frames, masks)
            if self._after_step(lr, frames.shape[0]):
                break
        if self.it > self.start_it and (self.it >= self.cfg.iters or self.timed_out):
            self._validate(self.it)
        self._save(self.it)

    def _step(self, frames: torch.Tensor, masks: torch.Tensor) -> float:
        """One optimiser step on a batch (frames ``B x T x 3 x H x W``, masks ``B x T x H x
        W``); returns its learning rate."""
        cfg = self.cfg
        frames = frames.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        if cfg.channels_last:
            frames = to_channels_last_clip(frames)
        lr = lr_at(cfg, self.it)
        for g in self.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        with autocast(self.device, self.precision):
            loss = self.wrapped(frames, masks)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()
        self.it += 1
        self.last_loss = float(loss.detach())
        return lr

    def _after_step(self, lr: float, clips: int) -> bool:
        """Log, validate, checkpoint on time; True when the time limit stops the run."""
        cfg, it = self.cfg, self.it
        if not math.isfinite(self.last_loss):
            self.rep.line(f"warning: loss {self.last_loss} at iteration {it}")
        self.loss_ema = self.last_loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * self.last_loss
        now = self._log(lr, clips)
        if cfg.val_every and it % cfg.val_every == 0 and it < cfg.iters:
            self._validate(it)
        if now - self.last_ckpt >= cfg.ckpt_every_min * 60:
            self._save(it)
            self.last_ckpt = time.time()
        if cfg.max_minutes and self._elapsed(now) / 60 >= cfg.max_minutes and it < cfg.iters:
            self.rep.line(f"time limit of {cfg.max_minutes} min reached at iteration {it}")
            self.timed_out = True
        return self.timed_out

    def _log(self, lr: float, clips: int) -> float:
        """Progress bar and (every ``log_every``) a log line; returns the time it read."""
        cfg, world = self.cfg, self.dist.world
        self.speed_n += clips * world
        now = time.time()
        clips_s = self.speed_n / max(1e-9, now - self.speed_t)
        self.rep.update(self.it, self.loss_ema, clips_s, lr)
        if self.it % cfg.log_every == 0 or self.it == cfg.iters:
            s_it = (now - self.speed_t) / max(1, self.speed_n / (clips * world))
            self.rep.line(f"it {self.it}/{cfg.iters} loss {self.last_loss:.4f} ema {self.loss_ema:.4f} lr {lr:.2e} "
                          f"{clips_s:.2f} clips/s {s_it:.2f} s/it elapsed {self._elapsed(now):.0f}s",
                          echo=self.rep.progress is None)
            self.speed_t, self.speed_n = now, 0
        return now

    def _elapsed(self, now: float | None = None) -> float:
        """Seconds of training, the resumed runs' included."""
        return self.elapsed_before + (time.time() if now is None else now) - self.t0

    def _catch_sigterm(self) -> Any:
        """SIGTERM stops the run like Ctrl-C (saved, resumable); returns the handler it replaced."""
        if not (self.dist.main and hasattr(signal, "SIGTERM")):
            return None
        try:
            return signal.signal(signal.SIGTERM, _raise_interrupt)
        except ValueError:  # not the main thread
            return None

    # -- validation and checkpoints ----------------------------------------------------------
    def _validate(self, iteration: int) -> None:
        """Score the held-out sequences (rank 0; the others wait); a new best is saved."""
        cfg = self.cfg
        if not cfg.val_sequences or not cfg.data:
            return
        if self.dist.main:
            res = self._score(iteration)
            if self.best is None or res["JF"] > self.best["JF"]:
                self.best = {"JF": res["JF"], "J": res["J"], "F": res["F"], "iteration": iteration}
                self._save(iteration, "best.pt")
        self.dist.barrier()

    def _score(self, iteration: int) -> dict[str, Any]:
        """Validate the shipped weights (the average with ``--ema``), record and log it."""
        cfg = self.cfg
        tv = time.time()
        with self.ema.swapped_in() if self.ema is not None else contextlib.nullcontext():
            res = validate(self.model, cfg, self.device, self.precision)
        set_train_mode(self.model, cfg.freeze_bn, cfg.train_only)
        res.update(iteration=iteration, seconds=round(time.time() - tv, 1))
        self.history.append(res)
        with open(self.out / "val.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        fpart = f" F {res['F']:.4f}" if res["F"] is not None else ""
        self.rep.line(f"val it {iteration}: J&F {res['JF']:.4f} (J {res['J']:.4f}{fpart}) on "
                      f"{len(res['sequences'])} sequences in {res['seconds']}s")
        return res

    def _save(self, iteration: int, name: str = "last.pt") -> None:
        if self.dist.main:
            self.snapshot(iteration).save(self.out / name)

    def snapshot(self, iteration: int) -> RunCheckpoint:
        """The run as it stands after ``iteration`` steps."""
        cfg, wall = self.cfg, self._elapsed()
        stage = {"stage": cfg.stage, "command": cfg.command, "iterations": iteration, "wall_s": round(wall, 1),
                 "hardware": self.hardware, "precision": self.precision, "data": data_summary(cfg, self.dataset)}
        raw = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        ema = self.ema
        return RunCheckpoint(
            config=cfg, model=ema.state_dict() if ema is not None else raw, iteration=iteration,
            train_model=raw if ema is not None else None, ema_updates=ema.updates if ema is not None else 0,
            optimizer=self.opt.state_dict(), scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            rng=rng_state(), elapsed=wall, commands=self.commands, stages=self.prior_stages + [stage],
            best=self.best, val_history=self.history, loss_ema=self.loss_ema, precision=self.precision,
            hardware=self.hardware, model_config=self.model.config, data=data_summary(cfg, self.dataset))

    def _finish(self) -> dict[str, Any]:
        """The run's summary; a finished (not interrupted) run's last log line."""
        cfg, it, best = self.cfg, self.it, self.best
        wall = self._elapsed()
        done = it - self.start_it
        summary = {
            "out": str(self.out), "iteration": it, "iters": cfg.iters, "interrupted": self.interrupted,
            "loss": self.last_loss, "loss_ema": self.loss_ema, "wall_s": wall,
            "s_per_it": (time.time() - self.t0) / done if done else None, "best": best,
            "precision": self.precision, "device": str(self.device), "world": self.dist.world,
        }
        if self.dist.main and not self.interrupted:
            loss = self.loss_ema if self.loss_ema is not None else float("nan")
            line = (f"done: {it}/{cfg.iters} iterations, loss {loss:.4f}, {wall / 60:.1f} min"
                    + (f", best J&F {best['JF']:.4f} at {best['iteration']}" if best else ""))
            with open(self.out / "log.txt", "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
        return summary
