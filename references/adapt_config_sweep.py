"""Dev-split sweep of the shipped --adapt (vostool/engine/adapt.py) over AdaptConfig fields (references/adapt.md).

Usage: DAVIS_ROOT=../shared/data/DAVIS2016-train python references/adapt_config_sweep.py NAME '{"margin": 1.0, "on_objects": true}'
"""
import json, os, sys, time
from vostool.engine.adapt import AdaptConfig
from vostool.eval.api import evaluate_davis
from vostool.eval.runner import build_propagator
DEV = ["bmx-bumps", "car-turn", "dance-jump", "horsejump-low", "kite-walk"]
if __name__ == "__main__":
    name = sys.argv[1]; P = json.loads(sys.argv[2])
    t0 = time.time()
    cfg = AdaptConfig(**P)
    holder = {}
    def factory():
        holder["p"] = build_propagator("crvos", adapt=cfg)
        return holder["p"]
    rep = evaluate_davis(os.environ.get("DAVIS_ROOT", "../shared/data/DAVIS2016-train"), year=2016, split="train", sequences=DEV,
                         propagator_factory=factory, out_dir=f"/tmp/ev_{name}")
    g = rep.payload()
    line = {"name": name, "params": P, "J&F": round(g["J&F-Mean"], 4), "J": round(g["J-Mean"], 4), "F": round(g["F-Mean"], 4),
            "per_seq": {s["sequence"]: round(s["J&F-Mean"], 3) for s in g["per_sequence"]},
            "adapt_s": round(holder["p"].adaptation.total_seconds, 1), "wall": round(time.time() - t0)}
    print(json.dumps(line))
    open(os.environ.get("ADAPT_RESULTS", "runs/adapt_variants.jsonl"), "a").write(json.dumps(line) + "\n")
