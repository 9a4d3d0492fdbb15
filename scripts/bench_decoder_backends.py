"""crvos per frame with its decoder in torch or in ONNX Runtime, interleaved frame by frame.

Three Propagators over one synthetic 480 x 854 clip (shipped crvos, fp32, one thread,
``--size 480``): the ONNX Runtime encoder with the torch decoder (the path before the
decoder graph), the ONNX Runtime encoder and decoder (``--backend onnxruntime`` today), and
torch for both. Each frame runs through all three in turn, so a load that changes during
the run weighs on all of them alike. Prints the median ms per frame (frames 3..N) and the
largest share of pixels whose index differs between the two ONNX Runtime paths.

    python scripts/bench_decoder_backends.py [FRAMES]
"""

from __future__ import annotations

import statistics
import sys
import time

from vostool.bench.synthetic import SyntheticClip
from vostool.engine import Propagator
from vostool.models import load_model


def main(frames: int = 12) -> None:
    clip = SyntheticClip(480, 854, objects=1)
    props: dict[str, Propagator] = {}
    for name in ("onnxruntime encoder, torch decoder", "onnxruntime encoder and decoder", "torch"):
        prop = Propagator(load_model("crvos"), device="cpu", precision="fp32", size=480, threads=1,
                          backend="torch" if name == "torch" else "onnxruntime")
        if name.endswith("torch decoder"):
            prop._refresh_graph = lambda: None  # type: ignore[method-assign]  # keep the decoder in torch
        prop.start(clip.frame(0), clip.first_mask())
        props[name] = prop
    times: dict[str, list[float]] = {n: [] for n in props}
    index: dict[str, list] = {n: [] for n in props}
    for i in range(1, frames + 1):
        frame = clip.frame(i)
        for name, prop in props.items():
            t0 = time.perf_counter()
            result = prop.step(frame)
            times[name].append(time.perf_counter() - t0)
            index[name].append(result.index)
    for name, prop in props.items():
        print(f"{name:38s} {1e3 * statistics.median(times[name][2:]):7.1f} ms   ({prop.inference_path})")
    a, b = (index[n] for n in list(props)[:2])
    print("index pixels differing between the two onnxruntime paths:", max(float((x != y).mean()) for x, y in zip(a, b)))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
