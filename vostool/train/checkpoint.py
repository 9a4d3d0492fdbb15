"""A run checkpoint (``last.pt``, ``best.pt``) as a typed record: :class:`RunCheckpoint`.

On disk it stays the plain dict that ``torch.save`` writes (the same keys as ever, so runs
written by earlier versions load and runs written now load in them); the record converts
to and from it (:meth:`RunCheckpoint.to_dict`, :meth:`RunCheckpoint.from_dict`). The
training loop writes it, resumes from it and starts later stages from it; ``--export``
reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vostool.errors import VostoolError
from vostool.train.config import TrainConfig, _jsonable, config_from_dict

StateDict = dict[str, torch.Tensor]


@dataclass
class RunCheckpoint:
    """Everything a run saves: enough to resume it exactly and to write its card.

    ``model`` holds the shipped weights: the averaged ones with ``--ema`` (then
    ``train_model`` holds the raw weights the optimiser trains and ``ema_updates`` the
    average's update count), else the raw ones.
    """

    config: TrainConfig | None
    model: StateDict
    iteration: int = 0
    train_model: StateDict | None = None
    ema_updates: int = 0
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None          # fp16 on CUDA only
    rng: dict[str, Any] | None = None             # torch / numpy / cuda generator states
    elapsed: float = 0.0                          # seconds of training over every resume
    commands: list[str] = field(default_factory=list)        # of every stage, oldest first
    stages: list[dict[str, Any]] = field(default_factory=list)  # one record per stage
    best: dict[str, Any] | None = None            # best validation: JF, J, F, iteration
    val_history: list[dict[str, Any]] = field(default_factory=list)
    loss_ema: float | None = None
    precision: str | None = None
    hardware: str | None = None
    model_config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] | None = None

    @property
    def raw_weights(self) -> StateDict:
        """The weights the optimiser trains (``train_model`` with ``--ema``, else ``model``)."""
        return self.train_model if self.train_model is not None else self.model

    def to_dict(self) -> dict[str, Any]:
        """The on-disk dict (keys in the order earlier versions wrote them)."""
        ema = {"train_model": self.train_model, "ema_updates": self.ema_updates} if self.train_model is not None else {}
        return {
            "stages": self.stages, "model": self.model, **ema,
            "optimizer": self.optimizer, "scaler": self.scaler, "iteration": self.iteration, "rng": self.rng,
            "config": _jsonable(self.config) if self.config is not None else None,
            "elapsed": self.elapsed, "commands": self.commands, "best": self.best,
            "val_history": self.val_history, "loss_ema": self.loss_ema, "precision": self.precision,
            "hardware": self.hardware, "model_config": self.model_config, "data": self.data,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "checkpoint") -> RunCheckpoint:
        """Read the on-disk dict; keys missing from older runs take their defaults."""
        if not isinstance(d, dict) or "model" not in d:
            raise VostoolError(f"{source} is not a vostool training checkpoint")
        return cls(
            config=config_from_dict(d["config"]) if d.get("config") else None,
            model=d["model"], iteration=int(d.get("iteration", 0)), train_model=d.get("train_model"),
            ema_updates=int(d.get("ema_updates", 0)),
            optimizer=d.get("optimizer"), scaler=d.get("scaler"), rng=d.get("rng"),
            elapsed=float(d.get("elapsed", 0.0)), commands=list(d.get("commands", [])),
            stages=list(d.get("stages", [])), best=d.get("best"), val_history=list(d.get("val_history", [])),
            loss_ema=d.get("loss_ema"), precision=d.get("precision"), hardware=d.get("hardware"),
            model_config=dict(d.get("model_config") or {}), data=d.get("data"),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunCheckpoint:
        """Read ``path`` (a ``last.pt`` / ``best.pt``)."""
        return cls.from_dict(load_run(path), source=str(path))

    def save(self, path: str | Path) -> None:
        """Write ``path`` atomically (a crash mid-write leaves the previous file)."""
        _atomic_save(self.to_dict(), Path(path))


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a run checkpoint (``last.pt`` / ``best.pt``) as its raw dict
    (:meth:`RunCheckpoint.load` gives the typed record)."""
    path = Path(path)
    if not path.is_file():
        raise VostoolError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise VostoolError(f"cannot read checkpoint {path}: {exc}") from None


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The global torch / numpy (/ CUDA) generator states, for an exact resume."""
    st: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
