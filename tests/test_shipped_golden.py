"""Every shipped checkpoint loads strictly and still gives its stored masks on a tiny clip.

The masks in ``tests/data/golden.npz`` were made by ``scripts/make_golden.py`` (fp32 eager torch,
one thread). A change to a model, the engine or a checkpoint that changes what users get fails
here; rerun the script when that change is deliberate (retrained weights, a model fix) and say
so in the commit. Rounding differs between CPUs (AVX2, AVX-512), so a few pixels on object
borders may flip: at least 99.5% of the pixels of every frame must agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from vostool.models import list_models

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden.npz"


def _maker():
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.parametrize("name", [s.name for s in list_models()])
def test_shipped_checkpoint_reproduces_golden_masks(name, one_thread):
    stored = np.load(GOLDEN)
    assert name in stored.files, f"no golden masks for {name}: run scripts/make_golden.py"
    want = stored[name]
    got = _maker().golden_masks(name)
    assert got.shape == want.shape
    assert np.array_equal(got[0], want[0])  # frame 0 is the given mask
    for t in range(1, len(want)):
        agree = float((got[t] == want[t]).mean())
        assert agree >= 0.995, (name, t, agree)
        assert set(np.unique(got[t])) <= set(np.unique(want[0]))
