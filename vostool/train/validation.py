"""Validation on held-out sequences, through ``vostool eval``'s own runner and scorer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vostool.models.base import VOSModel
from vostool.train.config import TrainConfig


def validate(model: VOSModel, cfg: TrainConfig, device: torch.device, precision: str) -> dict[str, Any]:
    """J&F on the held-out ``val_sequences`` (full sequences of the DAVIS roots), computed by
    ``vostool eval``'s own runner and scorer (:func:`vostool.eval.runner.run_sequences`,
    :func:`vostool.eval.scoring.score_results`), so that a card's dev J&F is exactly what
    ``vostool eval davis16 --davis-root ROOT --split train --sequences ... --weights FILE
    --size S`` prints for the exported file. Sequences whose annotations hold one object
    (DAVIS-2016's 0/255) are scored as ``davis16`` (binary), others as ``davis17``."""
    import tempfile

    import dataclasses

    from vostool.data.davis import annotated_sequences
    from vostool.data.masks import read_index_mask
    from vostool.engine.propagator import Propagator
    from vostool.eval.runner import run_sequences
    from vostool.eval.scoring import score_results

    n_max = cfg.val_max_frames
    specs = [dataclasses.replace(s, frames=s.frames[:n_max])
             for s in annotated_sequences(cfg.data, names=cfg.val_sequences)]
    firsts = [set(np.unique(read_index_mask(sp.mask_path(sp.frames[0]))).tolist()) for sp in specs]
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
