"""How well DTN's box re-identification picks its box, for several ways of ranking the 81
CRPN candidates (issue 12, defect 5). Every frame is forced through re-identification
(``theta_c`` above 1); the track itself follows the distance-only choice (Eq. 2 alone, the
ranking before the fix), and for each frame the IoU of each ranking's pick with the
ground-truth box is recorded. Prints the mean IoU per ranking as JSON.

    python scripts/dtn_reid_probe.py DAVIS_ROOT SEQ1,SEQ2,... [--weights FILE] [--size 240] [--frames 40]
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np
import torch
from PIL import Image

from vostool.engine import Propagator, load_model
from vostool.models.dtn import box_iou, mask_boxes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("sequences")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--frames", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = load_model("dtn", weights=args.weights)
    m.theta_c = 1.01  # every frame through re-identification
    rec: dict[str, torch.Tensor] = {}
    crpn = m._crpn

    def crpn_spy(*a, **k):
        out = crpn(*a, **k)
        rec["obj"] = out[1].detach()
        return out

    def reid_distance_only(s16, cand, obj, first, prev):
        k, a = cand.shape[:2]
        owner = torch.arange(k).repeat_interleave(a)
        f = m._pool(s16, cand.reshape(-1, 4), owner).view(k, a, -1)
        dist = (f - first[:, None]).norm(dim=-1) + (f - prev[:, None]).norm(dim=-1)
        rec["dist"], rec["cand"] = dist.detach(), cand.detach()
        return cand[torch.arange(k), dist.argmin(1)]

    m._crpn, m._reidentify = crpn_spy, reid_distance_only
    res: dict[str, list[float]] = {}
    for seq in args.sequences.split(","):
        fr = sorted(glob.glob(f"{args.root}/JPEGImages/480p/{seq}/*.jpg"))[: args.frames]
        an = sorted(glob.glob(f"{args.root}/Annotations/480p/{seq}/*.png"))[: args.frames]
        imgs = [np.array(Image.open(p).convert("RGB")) for p in fr]
        gts = [(np.array(Image.open(p).convert("L")) > 127).astype(np.uint8) for p in an]
        prop = Propagator(m, device="cpu", precision="bf16", size=args.size, threads=1)
        prop.start(imgs[0], gts[0])
        lane = prop._lanes[0]
        for t in range(1, len(imgs)):
            rec.clear()
            prop.step(imgs[t])
            if "dist" not in rec:
                continue
            gt = torch.nn.functional.interpolate(torch.from_numpy(gts[t]).float()[None, None],
                                                 (lane.h, lane.w), mode="nearest")
            gb, gv = mask_boxes(gt)
            if not bool(gv[0]):
                continue
            d, o, c = rec["dist"][0], torch.sigmoid(rec["obj"][0]), rec["cand"][0]
            ious = box_iou(c, gb[0][None]).flatten()
            picks = {"dist": int(d.argmin()), "oracle": int(ious.argmax()), "obj": int(o.argmax())}
            for kk in (9, 27, 40):
                top = o.topk(kk).indices
                picks[f"top{kk}"] = int(top[d[top].argmin()])
            for lam in (0.25, 0.5, 1.0):
                picks[f"lin{lam}"] = int((d / d.min() - lam * o).argmin())
            picks["prod"] = int((d * (1.5 - o)).argmin())
            for name, i in picks.items():
                res.setdefault(name, []).append(float(ious[i]))
    print(json.dumps({k: [round(float(np.mean(v)), 4), len(v)] for k, v in res.items()}))


if __name__ == "__main__":
    main()
