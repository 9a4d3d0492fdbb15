"""Every shipped checkpoint keeps both objects of a trivially simple two-object clip (issue 12).

A red disc and a blue square move apart over a smooth textured gradient
(:func:`synthetic.disc_and_square_clip`); each shipped model, at its own inference size and
with every engine default but the precision (fp32, so that every CPU gives the same figures),
must follow both: mean IoU over the clip >= 0.7 for each object and >= 0.5 on the last frame.

Measured with the files shipped on 2026-12-06 (16 frames, fp32, one thread): crvos 0.99 / 0.99
(disc / square, mean IoU); gam and dtn lose the square within 1-3 frames (mean IoU 0.03 and
0.00), rgmp and rvos lose both (0.16 / 0.00 and 0.06 / 0.00 over 23 frames). The rgmp retrained
on 2026-12-07 with still-image clips mixed in keeps both (0.97 / 0.92), and so does the dtn
retrained the same way (0.92 / 0.97; the previous file 0.95 / 0.00). The gam retrained with
any-hue clips (``--hue 0.5``) still loses the square (0.97 / 0.27): it loses a *blue* square and
keeps it once the clip's colour channels are swapped (square 0.87 with the 2026-12-06 file,
0.60 with the new one); a gam fine-tuned at several scales (2026-12-07, eighth session, not shipped:
below on the dev split) keeps it at 480 (0.976 / 0.775), and the shipped file keeps it at 360 and 400,
so the square is lost to scale, not colour alone (``references/README.md``). The models that still
lose one are marked as expected failures (strict: the mark must be removed when retrained
weights pass), the open work of issue 12.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import disc_and_square_clip

from vostool.engine import Propagator, load_model
from vostool.models import list_models, recommended_size

LOSES_OBJECTS = {"gam", "rvos"}  # shipped weights of 2026-12-07, see above


def _params():
    for spec in list_models():
        marks = [pytest.mark.xfail(strict=True, reason="shipped weights lose an object (issue 12)")] \
            if spec.name in LOSES_OBJECTS else []
        yield pytest.param(spec.name, marks=marks, id=spec.name)


@pytest.mark.parametrize("name", list(_params()))
def test_shipped_model_keeps_both_objects_of_a_simple_clip(name, one_thread):
    frames, masks = disc_and_square_clip()
    model = load_model(name)
    prop = Propagator(model, device="cpu", precision="fp32", backend="torch", threads=1,
                      size=recommended_size(model))
    prop.start(frames[0], masks[0])
    ious = []
    for frame, truth in zip(frames[1:], masks[1:]):
        got = prop.step(frame).index
        ious.append([((got == k) & (truth == k)).sum() / ((got == k) | (truth == k)).sum() for k in (1, 2)])
    ious = np.array(ious)
    assert (ious.mean(0) >= 0.7).all(), (name, ious.mean(0).round(3))
    assert (ious[-1] >= 0.5).all(), (name, ious[-1].round(3))
