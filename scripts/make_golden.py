"""Regenerate ``tests/data/golden.npz``: every shipped checkpoint's masks on a tiny synthetic clip.

``tests/test_shipped_golden.py`` loads each file in ``weights/`` strictly and checks that it
still gives these masks, so a change to a model, the engine or a checkpoint that alters what
users get shows up as a failing test. Run this after retraining or deliberately changing a
model's output, and say why in the commit:

    python scripts/make_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vostool.bench.synthetic import SyntheticClip
from vostool.engine import Propagator, load_model
from vostool.models import list_models

#: the clip and the engine settings of the golden run (fp32 eager torch, one thread: the same
#: arithmetic on every CPU up to rounding)
HEIGHT, WIDTH, OBJECTS, FRAMES, SIZE = 240, 432, 2, 6, 240
OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden.npz"


def golden_masks(name: str) -> np.ndarray:
    """Index masks ``FRAMES x HEIGHT x WIDTH`` uint8 of the shipped ``name`` on the golden clip."""
    clip = SyntheticClip(HEIGHT, WIDTH, objects=OBJECTS, seed=3)
    model = load_model(name)
    prop = Propagator(model, device="cpu", precision="fp32", size=SIZE, backend="torch", threads=1)
    out = [prop.start(clip.frame(0), clip.first_mask()).index]
    out += [prop.step(clip.frame(i)).index for i in range(1, FRAMES)]
    return np.stack(out).astype(np.uint8)


def main() -> None:
    torch.manual_seed(0)
    masks = {spec.name: golden_masks(spec.name) for spec in list_models()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **masks)
    for name, m in masks.items():
        print(name, m.shape, "object pixels per frame:", [int((f > 0).sum()) for f in m])


if __name__ == "__main__":
    main()
