"""Timing a model the way the papers count speed, and stating the conditions.

:func:`benchmark` times one model twice:

- **model alone**: frames pre-decoded to memory, ``Propagator.step`` per frame (resize,
  normalise, network, merge, result back at the source size), timed with
  ``time.perf_counter`` on the CPU and CUDA events (plus a synchronize) on a GPU. All
  objects of a frame count as one frame, as in the papers.
- **end to end**: the same frames encoded to an H.264 file, then decoded
  (``open_source``, background thread), segmented (``propagate``) and written
  (``AsyncWriter(OutputWriter(..., {"masks", "overlay"}))``, background thread); wall
  time from opening the file to the last output closed.

:func:`baseline_resnet50` times a plain torchvision ResNet-50 trunk the way an author's
eager code runs it (fp32, NCHW, ``no_grad``), the reference for the ratio targets; with
``baseline=True`` :func:`benchmark` interleaves it with the model's timed frames, so that
both see the same machine load (on a CPU shared with other work, timings taken minutes
apart are not comparable), and keeps the faster of all-threads and one thread for it.

Peak memory is the process's peak RSS on the CPU (reset through ``/proc/self/clear_refs``
before each model where Linux allows it; ``mem_delta_mb`` is the growth over the RSS
before the model was built) and ``torch.cuda.max_memory_allocated`` on CUDA. ``long=N``
runs N more frames and reports the memory in use at their start and at their end.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vostool.bench import memory
from vostool.bench.synthetic import SyntheticClip, clip_size, write_video
from vostool.errors import VostoolError

if TYPE_CHECKING:
    from vostool.engine.adapt import AdaptConfig
    from vostool.models.base import VOSModel


@dataclass
class BenchResult:
    """One model's benchmark. ``to_dict()`` gives the JSON object of ``bench --json``."""

    model: str
    backbone: str
    weights: str                    # "shipped", "random" or the checkpoint path
    device: str                     # human-readable device name
    device_type: str                # cpu | cuda | mps
    torch: str
    precision: str                  # resolved: fp32 | bf16 | fp16
    channels_last: bool
    compile: bool                   # torch.compile actually used
    size: int | None                # internal size of the shorter side (None: source size)
    internal_hw: tuple[int, int]    # internal frame size (before padding to the stride)
    padded_hw: tuple[int, int]      # what the network sees
    source_hw: tuple[int, int]
    objects: int
    frames: int                     # timed frames (model alone)
    warmup: int
    threads: int                    # CPU intra-op threads (the count used most, if adaptive)
    threads_mode: str               # "auto" (ThreadGovernor), "fixed", or "n/a" off the CPU
    threads_used: dict[str, int]    # auto: timed frames per thread count
    interop_threads: int
    input: str                      # "synthetic" or the --input path
    ms_median: float
    ms_p90: float
    ms_mean: float
    fps_model: float
    fps_end_to_end: float | None
    ms_end_to_end: float | None     # wall ms per frame end to end
    frames_end_to_end: int
    peak_mem_mb: float              # model alone (warm-up + timed frames, --long; never the baseline)
    peak_mem_e2e_mb: float | None   # the end-to-end run: decoding, model and writing
    peak_mem_kind: str              # cuda_max_allocated | process_peak_rss
    peak_mem_reset: bool            # False: the peak may come from earlier in the process
    mem_delta_mb: float | None      # CPU: peak RSS minus the RSS before the model was built
    mem_start_mb: float | None = None   # --long: memory in use at its first and last frame
    mem_end_mb: float | None = None
    long_frames: int | None = None
    long_ms_median: float | None = None
    propagation_share: float | None = None  # DTN: share of frames through box propagation
    baseline_ms: float | None = None        # ResNet-50 trunk (fp32, NCHW), interleaved
    baseline_threads: int | None = None     # the faster of torch's default count and 1
    baseline_ratio: float | None = None     # ms_median / baseline_ms
    compile_s: float | None = None          # first-call time with --compile (compilation)
    notes: list[str] = field(default_factory=list)
    backend: str = "torch"                  # what ran the backbones: torch | onnxruntime
    inference_path: str = ""                # which path ran and why, in words
    cpu_isa: str | None = None              # CPU vector ISA in use (caps honoured); None off the CPU
    adapt_s: float | None = None            # --adapt: seconds to learn the first frame's objects (not in fps)
    adapt_steps: int | None = None          # --adapt: optimisation steps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["internal_hw"] = list(self.internal_hw)
        d["padded_hw"] = list(self.padded_hw)
        d["source_hw"] = list(self.source_hw)
        return d


@dataclass
class BaselineResult:
    """A plain ResNet-50 trunk forward (conv1..layer4), fp32 eager, as authors run it."""

    name: str
    input_hw: tuple[int, int]
    ms_median: float
    ms_p90: float
    fps: float
    frames: int
    threads: int
    memory_format: str = "nchw"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d


# -- helpers ----------------------------------------------------------------------------
def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class _Timer:
    """Per-call milliseconds: CUDA events + synchronize on a GPU, perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    @contextlib.contextmanager
    def __call__(self, out: list[float]) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(self.device)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize(self.device)
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            yield
            out.append((time.perf_counter() - t0) * 1000)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _baseline_hw(size: int, stride: int = 32) -> tuple[int, int]:
    h, w = clip_size(size)
    return math.ceil(h / stride) * stride, math.ceil(w / stride) * stride


class _ResNetTrunk:
    """torchvision ``resnet50()`` conv1..layer4, random weights, eval, fp32, NCHW.

    On the CPU it is timed with torch's default thread count (as an author's script
    runs) and with 1 thread, alternately, and the faster is kept: on a CPU shared with
    other work all-cores can be many times slower, and the reference must not be
    handicapped by it."""

    def __init__(self, size: int, device: torch.device, output_stride: int = 32) -> None:
        import torchvision

        from vostool.engine.device import configure_cpu

        dil = [False, False, output_stride == 16]
        net = torchvision.models.resnet50(replace_stride_with_dilation=dil)
        self.trunk = torch.nn.Sequential(*list(net.children())[:-2]).eval().to(device)
        self.hw = _baseline_hw(size)
        self.x = torch.randn(1, 3, *self.hw, device=device)
        most = configure_cpu() if device.type == "cpu" else torch.get_num_threads()
        self.options = [most, 1] if device.type == "cpu" and most > 1 else [most]
        self.times: dict[int, list[float]] = {n: [] for n in self.options}
        self._turn = 0

    def __call__(self, threads: int | None = None) -> None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads or self.options[0])
        try:
            with torch.no_grad():
                self.trunk(self.x)
        finally:
            torch.set_num_threads(before)

    def sample(self, timer: _Timer) -> None:
        """One timed forward, alternating the thread counts."""
        n = self.options[self._turn % len(self.options)]
        self._turn += 1
        with timer(self.times[n]):
            self(n)

    def warm(self) -> None:
        for n in self.options:
            self(n)

    @property
    def samples(self) -> int:
        return sum(len(v) for v in self.times.values())

    def best(self) -> tuple[float, float, int, list[float]] | None:
        """(median ms, p90 ms, threads, times) of the faster thread count."""
        timed = {n: v for n, v in self.times.items() if v}
        if not timed:
            return None
        n = min(timed, key=lambda k: statistics.median(timed[k]))
        return statistics.median(timed[n]), _percentile(timed[n], 90), n, timed[n]


def baseline_resnet50(
    size: int = 480, frames: int = 10, warmup: int = 2, device: str | torch.device = "cpu",
    output_stride: int = 32,
) -> BaselineResult:
    """Time a plain torchvision ResNet-50 trunk (conv1..layer4, no fc, random weights,
    eval, ``no_grad``, fp32, default NCHW) on a 16:9 input whose shorter side is ``size``,
    padded to a multiple of 32 (480 -> 480x864). ``output_stride=16`` dilates layer4, as
    the CRVOS authors' encoder does."""
    from vostool.engine.device import resolve_device

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    trunk = _ResNetTrunk(size, dev, output_stride)
    timer = _Timer(dev)
    for _ in range(warmup):
        trunk.warm()
    for _ in range(frames * len(trunk.options)):
        trunk.sample(timer)
    med, p90, threads, times = trunk.best()  # type: ignore[misc]
    name = "ResNet-50 trunk" + (" (OS16)" if output_stride == 16 else "")
    return BaselineResult(name, trunk.hw, med, p90, 1000 / statistics.fmean(times), len(times), threads)


def make_model(
    name: str, backbone: str | None = None, random_weights: bool = False, weights: str | Path | None = None,
) -> tuple[VOSModel, str, list[str]]:
    """Build ``name`` for benchmarking: (model, weights label, notes).

    Without ``weights`` the shipped checkpoint is used when it exists and fits the asked
    backbone; otherwise random weights (speed does not depend on the values) and a note.
    An explicit ``weights`` path must load.
    """
    from vostool.models import build_model, default_weights, get_spec, load_model

    spec = get_spec(name)
    notes: list[str] = []
    if weights is not None:
        if random_weights:
            raise VostoolError("--weights and --random-weights exclude each other")
        return load_model(name, weights=weights, backbone=backbone), str(weights), notes
    if not random_weights:
        path = default_weights(name)
        if path.is_file():
            try:
                return load_model(name, backbone=backbone), "shipped", notes
            except VostoolError as exc:
                notes.append(f"shipped weights not used ({exc}); timed with random weights")
        else:
            notes.append(f"no shipped weights for '{name}'; timed with random weights")
    torch.manual_seed(0)
    return build_model(name, backbone=backbone or spec.default_backbone), "random", notes


class _Compiled:
    """``torch.compile`` of the model's per-frame methods, undone on exit.

    Inductor's ``freezing`` is on while compiled (weights are constants of the graph:
    BatchNorm folded, oneDNN weights pre-packed; ~15% faster on CPUs than without)."""

    METHODS = ("encode", "predict", "update")

    def __init__(self, model: VOSModel) -> None:
        self.model = model
        self.patched: list[str] = []
        self._freezing: Any = None

    def __enter__(self) -> _Compiled:
        try:
            import torch._inductor.config as inductor_config

            self._freezing = (inductor_config, inductor_config.freezing)
            inductor_config.freezing = True
        except Exception:  # pragma: no cover - torch without inductor
            self._freezing = None
        for m in self.METHODS:  # every VOSModel has them
            setattr(self.model, m, torch.compile(getattr(self.model, m)))
            self.patched.append(m)
        return self

    def undo(self) -> None:
        for m in self.patched:
            with contextlib.suppress(AttributeError):
                delattr(self.model, m)  # the instance attribute shadowed the method
        self.patched = []
        if self._freezing is not None:
            cfg, value = self._freezing
            cfg.freezing = value
            self._freezing = None

    def __exit__(self, *exc: object) -> None:
        self.undo()


def _load_frames(path: Path, n: int) -> tuple[list[np.ndarray], float | None]:
    """The first ``n`` frames of a video (looped back and forth if it is shorter)."""
    from vostool.io import open_source

    frames: list[np.ndarray] = []
    with open_source(path) as source:
        fps = float(source.fps) if source.fps else None
        for frame in source:
            frames.append(frame.image)
            if len(frames) >= n:
                break
    if not frames:
        raise VostoolError(f"{path}: no frames")
    if len(frames) < n:
        cycle = frames + frames[-2:0:-1] if len(frames) > 2 else frames
        frames = [cycle[i % len(cycle)] for i in range(n)]
    return frames, fps


def _objects_mask(shape: tuple[int, int], objects: int) -> np.ndarray:
    """A first mask of ``objects`` ellipses for a real video (ids 1..K)."""
    return SyntheticClip(shape[0], shape[1], objects).first_mask()


def _check_options(frames: int, objects: int, warmup: int, size: int | None, threads: int | None) -> None:
    """The benchmark's numeric options; a bad one is a VostoolError naming its flag."""
    if frames < 1:
        raise VostoolError("--frames must be at least 1")
    if objects < 1:
        raise VostoolError("--objects must be at least 1")
    if warmup < 0:
        raise VostoolError("--warmup must be >= 0")
    if size is not None and size < 8:
        raise VostoolError("--size must be at least 8")
    if threads is not None and threads < 1:
        raise VostoolError("--threads must be at least 1")


def _clip_frames(
    input: str | Path | None, need: int, size: int | None, objects: int,
) -> tuple[list[np.ndarray], np.ndarray, Path | None, SyntheticClip | None, str]:
    """The frames to time: synthetic (generated before timing, 16:9 at ``size``) or decoded
    from ``input``. Returns (``need`` frames ``H x W x 3``, first mask ``H x W`` ids 1..K,
    the input path or None, the synthetic clip or None, the source label)."""
    if input is not None:
        input_path = Path(input)
        clip_frames, _ = _load_frames(input_path, need)
        return clip_frames, _objects_mask(clip_frames[0].shape[:2], objects), input_path, None, str(input_path)
    clip = SyntheticClip(*clip_size(size or 480), objects=objects)
    return list(clip.frames(need)), clip.first_mask(), None, clip, "synthetic"


def _warm_up(
    prop: Any, compiled: _Compiled | None, clip_frames: list[np.ndarray], first_mask: np.ndarray, warmup: int,
    notes: list[str],
) -> float | None:
    """Start the video and step ``warmup`` frames; a ``torch.compile`` that fails is undone
    (noted) and the warm-up goes on eager. Returns the compile seconds (first step) or None."""
    compile_s = None
    prop.start(clip_frames[0], first_mask)
    for i in range(warmup):
        t0 = time.perf_counter()
        try:
            prop.step(clip_frames[1 + i])
        except Exception as exc:
            if compiled is None or not compiled.patched:
                raise
            compiled.undo()
            notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                         "timed eager")
            prop.start(clip_frames[0], first_mask)
            prop.step(clip_frames[1 + i])
        if i == 0 and compiled is not None and compiled.patched:
            compile_s = time.perf_counter() - t0
    return compile_s


def _long_run(
    prop: Any, timer: _Timer, dev: torch.device, long: int, clip: SyntheticClip | None,
    clip_frames: list[np.ndarray], need: int,
) -> tuple[float, float, float]:
    """``--long``: ``long`` more frames (the synthetic clip goes on, a decoded one loops).
    Returns (memory at their start, at their end, median ms)."""
    mem_start = memory.current_mb(dev)
    long_times: list[float] = []
    for j in range(long):
        img = clip.frame(need + j) if clip is not None else clip_frames[(1 + j) % len(clip_frames)]
        with timer(long_times):
            prop.step(img)
    return mem_start, memory.current_mb(dev), statistics.median(long_times)


def _time_adaptation(prop: Any, dev: torch.device, clip_frames: list[np.ndarray], first_mask: np.ndarray,
                     warmup: int) -> float:
    """``--adapt``: restart the video (the objects learnt again, now warm), then step back to
    where the warm-up left it. Returns the adaptation's seconds."""
    prop.start(clip_frames[0], first_mask)
    _sync(dev)
    adapt_s = prop.adaptation.seconds
    for i in range(warmup):
        prop.step(clip_frames[1 + i])
    return adapt_s


def _threads_used(gov: Any, used0: dict[Any, int], dev: torch.device) -> tuple[dict[str, int], int, str]:
    """(frames per thread count, the count used most, ``auto|fixed|n/a``) over the timed frames."""
    if gov is not None:
        used = {str(n): gov.used[n] - used0.get(n, 0) for n in gov.options}
        used = {k: v for k, v in used.items() if v}
        return used, int(max(used, key=lambda k: used[k])) if used else gov.threads, "auto"
    return {}, torch.get_num_threads(), "fixed" if dev.type == "cpu" else "n/a"


def _cpu_isa_note(dev: torch.device, prop: Any, notes: list[str]) -> str | None:
    """The CPU's ISA summary (None off the CPU); notes that onnxruntime ignores an ISA cap."""
    if dev.type != "cpu":
        return None
    from vostool.engine.device import cpu_isa

    info = cpu_isa()
    if prop.backend == "onnxruntime" and info["effective"] != info["hardware"]:
        notes.append("onnxruntime's kernels use the CPU's own ISA: ONEDNN_MAX_CPU_ISA / "
                     "ATEN_CPU_CAPABILITY do not cap them")
    return str(info["summary"])


@dataclass
class _Timed:
    """What the timed frames measured (model alone)."""

    times: list[float]  # ms per frame
    share: float | None  # the model's propagation share over them
    used: dict[str, int]  # frames per thread count
    n_threads: int
    threads_mode: str
    internal: tuple[int, int]  # the base lane's size before padding
    padded: tuple[int, int]
    best: tuple[float, float, int, list[float]] | None  # the baseline trunk's best, if any
    adapt_s: float | None
    peak: float  # peak memory (MB) so far, the baseline trunk's excluded


def _time_model(
    prop: Any, model: VOSModel, timer: _Timer, dev: torch.device, clip_frames: list[np.ndarray],
    first_mask: np.ndarray, warmup: int, frames: int, peak: float, baseline_size: int | None, baseline_frames: int,
    say: Callable[[str], None],
) -> _Timed:
    """Time ``frames`` frames after the warm-up (and ``--adapt``'s adaptation, once warm),
    with ``baseline_frames`` ResNet-50 trunk forwards interleaved when ``baseline_size`` is
    given. The trunk is freed before returning."""
    trunk: _ResNetTrunk | None = None
    if baseline_size is not None:
        trunk = _ResNetTrunk(baseline_size, dev)
        trunk.warm()
    base_every = max(1, frames // max(1, baseline_frames)) if trunk is not None else 0

    # -- --adapt: learning the first frame's objects, timed once warm ----------------------
    adapt_s = None
    if prop.adaptation is not None:
        say(f"{model.name}: timing the adaptation")
        adapt_s = _time_adaptation(prop, dev, clip_frames, first_mask, warmup)

    # -- model alone ---------------------------------------------------------------------
    say(f"{model.name}: timing {frames} frames")
    model.reset_stream_counts()
    times: list[float] = []
    gov = prop.governor
    used0 = dict(gov.used) if gov is not None else {}
    for i in range(frames):
        img = clip_frames[1 + warmup + i]
        with timer(times):
            prop.step(img)
        if trunk is not None and (i % base_every == 0) and trunk.samples < baseline_frames:
            trunk.sample(timer)
    share = model.propagation_share()
    used, n_threads, threads_mode = _threads_used(gov, used0, dev)
    geometry = prop.geometry
    internal, padded = geometry.internal, geometry.padded
    best = trunk.best() if trunk is not None else None
    if trunk is None:
        peak = max(peak, memory.peak_mb(dev))
    return _Timed(times, share, used, n_threads, threads_mode, internal, padded, best, adapt_s, peak)


def _end_to_end_figures(
    prop: Any, propagate: Any, frames: list[np.ndarray], first_mask: np.ndarray, input_path: Path | None,
    dev: torch.device,
) -> tuple[int, float, float, float]:
    """Decode -> segment -> write, ``--adapt``'s adaptation left out of the time (it is
    ``adapt_s``). Returns (frames, fps, ms per frame, peak memory MB)."""
    memory.reset_peak(dev)
    n_e2e, wall = _end_to_end(prop, propagate, frames, first_mask, input_path)
    if prop.adaptation is not None:
        wall -= prop.adaptation.seconds  # reported as adapt_s, not in the fps
    return n_e2e, n_e2e / wall, wall * 1000 / n_e2e, memory.peak_mb(dev)


def _add_notes(notes: list[str], reset_ok: bool, weights_label: str, share: float | None) -> None:
    """The caveats of the memory and propagation-share figures."""
    if not reset_ok:
        notes.append("peak RSS could not be reset: it is the process peak; see mem_delta_mb")
    if weights_label == "random" and share is not None:
        notes.append("propagation share with random weights says nothing about trained behaviour")


# -- the benchmark ----------------------------------------------------------------------
def benchmark(
    model_name: str, *, backbone: str | None = None, random_weights: bool = False,
    weights: str | Path | None = None, device: str = "auto", precision: str = "auto",
    size: int | None = 480, objects: int = 1, frames: int = 60, warmup: int = 5, compile: bool = False,
    input: str | Path | None = None, long: int | None = None, channels_last: bool = True,
    end_to_end: bool = True, baseline: bool = False, baseline_frames: int = 10,
    threads: int | None = None, progress: Callable[[str], None] | None = None, backend: str = "auto",
    adapt: AdaptConfig | None = None,
) -> BenchResult:
    """Benchmark one registered model. See the module docstring for what is timed.

    size: internal shorter side (the synthetic clip is generated at this size, 16:9).
    objects: K objects in the first mask (all K count as one frame).
    long: also run this many more frames and report memory at their start and end.
    baseline: interleave ``baseline_frames`` ResNet-50 trunk forwards (fp32, NCHW, at
        ``size`` x 16:9) with the timed frames and report the ratio of the medians, so
        that both are measured under the same machine load.
    threads: CPU intra-op threads; None: the engine's adaptive choice (ThreadGovernor).
    backend: what runs the backbones, ``auto|torch|onnxruntime`` (see
        :func:`vostool.engine.backends.resolve_backend`).
    adapt: ``--adapt``: the first frame's objects are learnt (once untimed as warm-up, then
        once timed: ``adapt_s``), and the timed frames include the target model's correction.
    """
    from vostool.engine import Propagator, propagate
    from vostool.engine.adapt import Adaptation
    from vostool.engine.device import device_name, resolve_device

    _check_options(frames, objects, warmup, size, threads)
    if compile:
        warmup = max(warmup, 1)  # compilation happens on the first call, never timed
    say = progress or (lambda message: None)
    dev = resolve_device(device)

    need = 1 + warmup + frames  # synthetic (generated before timing) or decoded from --input
    clip_frames, first_mask, input_path, clip, source_label = _clip_frames(input, need, size, objects)
    src_hw = tuple(clip_frames[0].shape[:2])

    # Memory is measured from here: the clip itself is not the model's.
    memory.release_free_memory()
    mem_before = memory.current_mb(dev)
    reset_ok = memory.reset_peak(dev)
    model, weights_label, notes = make_model(model_name, backbone, random_weights, weights)
    bb = str(model.config.get("backbone", backbone or "?"))
    prop = Propagator(model, device=dev, precision=precision, size=size, channels_last=channels_last,
                      threads=threads, backend=backend, adapt=Adaptation(adapt) if adapt is not None else None)

    timer = _Timer(dev)
    compiled = _Compiled(model) if compile else None
    if compiled is not None:
        compiled.__enter__()
    try:
        say(f"{model_name}: warm-up")
        compile_s = _warm_up(prop, compiled, clip_frames, first_mask, warmup, notes)
        _sync(dev)
        # The model's memory: measured before the baseline network exists.
        peak = memory.peak_mb(dev)

        # -- --long: constant memory in video length --------------------------------------
        mem_start = mem_end = long_med = None
        if long:
            say(f"{model_name}: {long} more frames (--long)")
            mem_start, mem_end, long_med = _long_run(prop, timer, dev, long, clip, clip_frames, need)
            peak = max(peak, memory.peak_mb(dev))  # the long run's

        timed = _time_model(prop, model, timer, dev, clip_frames, first_mask, warmup, frames, peak,
                            (size or min(src_hw)) if baseline else None, baseline_frames, say)
        gc.collect()  # the baseline trunk is gone before the memory figures that follow
        peak = timed.peak

        # -- end to end ----------------------------------------------------------------
        fps_e2e = ms_e2e = peak_e2e = None
        n_e2e = 0
        if end_to_end:
            say(f"{model_name}: end to end")
            n_e2e, fps_e2e, ms_e2e, peak_e2e = _end_to_end_figures(
                prop, propagate, clip_frames[: 1 + frames], first_mask, input_path, dev)
        compile_used = bool(compiled is not None and compiled.patched)
    finally:
        if compiled is not None:
            compiled.undo()

    isa = _cpu_isa_note(dev, prop, notes)
    _add_notes(notes, reset_ok, weights_label, timed.share)
    times, best = timed.times, timed.best
    ms_med = statistics.median(times)
    base_ms = best[0] if best else None
    return BenchResult(
        model=model_name, backbone=bb, weights=weights_label, device=device_name(dev), device_type=dev.type,
        torch=torch.__version__, precision=prop.precision, channels_last=prop.channels_last,
        compile=compile_used,
        size=size, internal_hw=timed.internal, padded_hw=timed.padded, source_hw=src_hw, objects=objects,
        frames=frames, warmup=warmup, threads=timed.n_threads, threads_mode=timed.threads_mode,
        threads_used=timed.used, interop_threads=torch.get_num_interop_threads(), input=source_label,
        ms_median=ms_med, ms_p90=_percentile(times, 90), ms_mean=statistics.fmean(times),
        fps_model=1000 / statistics.fmean(times), fps_end_to_end=fps_e2e, ms_end_to_end=ms_e2e,
        frames_end_to_end=n_e2e, peak_mem_mb=peak, peak_mem_e2e_mb=peak_e2e, peak_mem_kind=memory.peak_kind(dev),
        peak_mem_reset=reset_ok, mem_delta_mb=(peak - mem_before) if dev.type != "cuda" else None,
        mem_start_mb=mem_start, mem_end_mb=mem_end, long_frames=long or None, long_ms_median=long_med,
        propagation_share=timed.share, baseline_ms=base_ms, baseline_threads=best[2] if best else None,
        baseline_ratio=(ms_med / base_ms) if base_ms else None, compile_s=compile_s, notes=notes,
        backend=prop.backend, inference_path=prop.inference_path, cpu_isa=isa,
        adapt_s=timed.adapt_s, adapt_steps=adapt.steps if adapt is not None else None,
    )


def _end_to_end(
    prop: Any, propagate: Any, frames: list[np.ndarray], first_mask: np.ndarray,
    input_path: Path | None,
) -> tuple[int, float]:
    """Decode -> segment -> write; returns (frames, wall seconds)."""
    from vostool.io import AsyncWriter, OutputWriter, open_source

    with tempfile.TemporaryDirectory(prefix="vostool-bench-") as tmp:
        tmp_path = Path(tmp)
        if input_path is None:
            video = write_video(tmp_path / "clip.mp4", frames)
            limit = None
        else:
            video, limit = input_path, len(frames)
        out = tmp_path / "out"
        out.mkdir()
        n = 0
        t0 = time.perf_counter()
        with open_source(video) as source:
            with AsyncWriter(OutputWriter(out, {"masks", "overlay"}, source)) as writer:
                for frame, result in propagate(prop, _take(source, limit), first_mask):
                    writer.write(frame, result)
                    n += 1
        wall = time.perf_counter() - t0
    return n, wall


def _take(source: Any, limit: int | None) -> Iterator[Any]:
    for i, frame in enumerate(source):
        if limit is not None and i >= limit:
            return
        yield frame


def machine_summary() -> dict[str, Any]:
    """Where the numbers come from: CPU/GPU, torch, threads, OS."""
    from vostool.engine.device import device_name

    info: dict[str, Any] = {
        "cpu": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "available_cpus": __import__("vostool.engine.device", fromlist=["x"]).available_cpus(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info
