"""The ``--adapt`` "boost" variant of references/adapt.md (rows c12-c14): the shipped target model
(vostool/engine/adapt.py, its default AdaptConfig) also *pulls in* pixels that its classifier calls
object with more than POS logit confidence, optionally only within GATE cells (at 1/16) of the
object's previous mask (crvos's Clue mask), so that an object whose mask lags behind it (the demo's
kite) is pulled back onto it. POS >= 100: no boost (the shipped form, the baseline of the rows).

Usage (from the repository root, one process at a time):
    GATE=1 python references/adapt_boost.py dev POS      # the dev split, prints one JSON line
    GATE=1 python references/adapt_boost.py pairs POS    # the two-object dev pairs (data/dev2)
    GATE=1 python references/adapt_boost.py demo POS     # examples/demo.mp4, ball / kite mean IoU
This is an experiment script: it patches the engine's internals; nothing of it is shipped.
"""
import json, os, sys, time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vostool.engine import adapt as A
from vostool.engine.adapt import AdaptConfig
from vostool.eval.api import evaluate_davis
from vostool.eval.metrics import region_similarity
from vostool.eval.runner import build_propagator

ROOT = Path(__file__).resolve().parents[1]
DEV = ["bmx-bumps", "car-turn", "dance-jump", "horsejump-low", "kite-walk"]
WHAT, POS = sys.argv[1], float(sys.argv[2])
GATE = int(os.environ.get("GATE", "0"))
PROP: list = []
_shipped = A.Adaptation.correct


def correct(self, logits, feats, object_ids, appearance):
    if not self.heads or not any(o in self.heads for o in object_ids):
        return logits
    _shipped(self, logits, feats, object_ids, appearance)  # builds the classifiers' stack
    _, w, b = self._stack
    a = appearance(feats)
    score = torch.einsum("chw,kc->khw", a[0].float(), w) + b.view(-1, 1, 1)
    score = F.interpolate(score[:, None], logits.shape[-2:], mode="bilinear", align_corners=False)
    boost = (score - POS).clamp(min=0) * (b.view(-1, 1, 1, 1) < 1e3)  # rows with a classifier
    if GATE:
        prev = PROP[0]._lanes[0].state["clue_mask"][:, 1:2].float()
        near = F.max_pool2d((prev > 0.3).float(), 2 * GATE + 1, 1, GATE)
        boost = boost * F.interpolate(near, logits.shape[-2:], mode="nearest")[: boost.shape[0]]
    d = self.config.strength * (score + self.config.margin).clamp(max=0) + boost
    out = logits.float()
    return torch.cat([out[:, :1] - d / 2, out[:, 1:2] + d / 2], dim=1)


def make():
    PROP[:] = [build_propagator("crvos", adapt=AdaptConfig())]
    return PROP[0]


if POS < 100:
    A.Adaptation.correct = correct
t0 = time.time()
if WHAT == "demo":
    sys.path.insert(0, str(ROOT / "examples"))
    import make_demo

    prop = make()
    with av.open(str(ROOT / "examples" / "demo.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    bg = make_demo._background(np.random.default_rng(7))
    ious: dict[int, list[float]] = {1: [], 2: []}
    prop.start(frames[0], np.array(Image.open(ROOT / "examples" / "demo_mask.png")))
    for i, frame in enumerate(frames[1:], 1):
        got = prop.step(frame).index
        _, gt = make_demo.render(i / make_demo.FPS, bg)
        for k in ious:
            ious[k].append(region_similarity(gt == k, got == k))
    print(json.dumps({"pos": POS, "gate": GATE, "ball": round(float(np.mean(ious[1])), 3),
                      "kite": round(float(np.mean(ious[2])), 3)}))
else:
    pairs = WHAT == "pairs"
    rep = evaluate_davis("data/dev2" if pairs else "../shared/data/DAVIS2016-train", year=2017 if pairs else 2016,
                         split="dev2" if pairs else "train", sequences=None if pairs else DEV, workers=1,
                         propagator_factory=make, out_dir=f"/tmp/adapt_boost_{WHAT}_{POS}_{GATE}")
    g = rep.payload()
    print(json.dumps({"pos": POS, "gate": GATE, "set": WHAT, "J&F": round(g["J&F-Mean"], 4), "J": round(g["J-Mean"], 4),
                      "F": round(g["F-Mean"], 4), "wall": round(time.time() - t0),
                      "per_seq": {s["sequence"]: round(s["J&F-Mean"], 3) for s in g["per_sequence"]}}))
