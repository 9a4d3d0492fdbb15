"""Training: data (DAVIS-layout clips, synthetic clips from still images), the BPTT training
loop with checkpoints/resume/validation/DDP, and export of shipped weights.

``python -m vostool.train ...`` runs the same command as ``vostool train ...``.
"""

from vostool.train.data import Augment, DavisClips, SyntheticClips
from vostool.train.export import export_run
from vostool.train.loop import TrainConfig, clip_loss, load_run, resume_config, train, validate

__all__ = [
    "Augment", "DavisClips", "SyntheticClips", "TrainConfig", "clip_loss", "export_run", "load_run",
    "resume_config", "train", "validate",
]
