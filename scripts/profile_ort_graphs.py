"""Where crvos's time goes inside its ONNX Runtime graphs (the fp32 path on CPUs without native bf16).

Exports the shipped crvos's BatchNorm-folded frame encoder and its decoder (``predict``) the way
the engine does (:mod:`vostool.engine.backends`), runs each at one network input size with ONNX
Runtime's profiler on, and prints the median milliseconds per run and the nodes that take the
most kernel time (ms per run), operators grouped by type. Needs ``pip install 'vostool[onnx]'``.

    python scripts/profile_ort_graphs.py [--threads N] [--height 480] [--width 864] [--runs 10] [--no-pad]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch


def profile(model_bytes: bytes, inputs: dict[str, np.ndarray], threads: int, runs: int, top: int) -> None:
    from vostool.engine.backends import ort_session

    # the engine's own session options, with the profiler on
    sess = ort_session(model_bytes, threads, profile_prefix=os.path.join(tempfile.mkdtemp(), "ort"))
    for _ in range(3):
        sess.run(None, inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, inputs)
        times.append(time.perf_counter() - t0)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per_node: dict[tuple[str, str], float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node[(e["args"].get("op_name", "?"), e["name"][: -len("_kernel_time")])] += e["dur"]
    calls = runs + 3
    total = sum(per_node.values())
    by_op: dict[str, float] = collections.defaultdict(float)
    for (op, _), d in per_node.items():
        by_op[op] += d
    print(f"  median {1e3 * statistics.median(times):.1f} ms a run ({threads} thread(s), {runs} runs)")
    print("  kernel time by operator: " + ", ".join(
        f"{op} {d / total:.1%}" for op, d in sorted(by_op.items(), key=lambda kv: -kv[1])[:6]))
    for (op, name), d in sorted(per_node.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {d / calls / 1e3:7.2f} ms  {op:14s} {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=864)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--no-pad", action="store_true", help="export the decoder without padding its convolutions")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vostool.engine import backends
    from vostool.engine.backends import OrtBackbone
    from vostool.engine.fastpath import fold_batchnorm
    from vostool.models import load_model

    model = load_model("crvos").eval()
    h, w = args.height, args.width
    encoder = OrtBackbone(fold_batchnorm(model.encoder, None), 3)
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    print(f"crvos frame encoder (mobilenet_v2, BatchNorm folded), input {h}x{w}:")
    profile(encoder.model_bytes, {"x": x}, args.threads, args.runs, args.top)

    feats = {k: torch.from_numpy(a) for k, a in zip(encoder.keys, encoder.session(args.threads).run(None, {"x": x}))}
    state = {"clue_mask": torch.full((1, 2, h // 16, w // 16), 0.5)}
    if args.no_pad:  # the decoder graph as exported before its convolutions were padded
        backends.nchwc_block = lambda: 1
    graph = backends.OrtPredict(model, model.graph_state_keys)
    assert graph(feats, state) is not None, graph.fallback
    (shape, model_bytes), = graph._graphs.items()
    keys = sorted(feats)
    arrays = [feats[k].numpy() for k in keys] + [state["clue_mask"].numpy()]
    padded = "input channels as they are" if args.no_pad else f"input channels padded to {backends.nchwc_block()}"
    print(f"crvos decoder (predict: features + the Clue -> {h}x{w} logits; {padded}):")
    profile(model_bytes, {f"in{i}": a for i, a in enumerate(arrays)}, args.threads, args.runs, args.top)

if __name__ == "__main__":
    main()
