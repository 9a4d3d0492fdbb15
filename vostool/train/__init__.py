"""Training: data (DAVIS-layout clips, synthetic clips from still images), the BPTT training
loop with checkpoints/resume/validation/DDP, and export of shipped weights.

The loop is made of parts: ``config`` (:class:`TrainConfig`, the resume merge),
``checkpoint`` (:class:`RunCheckpoint`, the typed ``last.pt``/``best.pt``), ``freeze``,
``schedule``, ``ema``, ``distributed``, ``report``, ``factory`` (model and clips), ``loss``,
``validation``; ``loop`` (:class:`Trainer`, :func:`train`) puts them together.

``python -m vostool.train ...`` runs the same command as ``vostool train ...`` (the
``__main__`` shim calls :mod:`vostool.cli.train`; the CLI imports this package, lazily).
"""

from vostool.train.checkpoint import RunCheckpoint, load_run
from vostool.train.config import TrainConfig, resume_config
from vostool.train.data import Augment, DavisClips, SyntheticClips
from vostool.train.export import export_run
from vostool.train.loop import Trainer, clip_loss, train, validate

__all__ = [
    "Augment", "DavisClips", "RunCheckpoint", "SyntheticClips", "TrainConfig", "Trainer", "clip_loss", "export_run",
    "load_run", "resume_config", "train", "validate",
]
