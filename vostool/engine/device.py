"""Device and precision resolution: what ``--device`` and ``--precision`` turn into, and
the process-wide torch settings inference runs with (:func:`configure_torch`, the one
place the engine makes them; the thread count a frame runs with is the
:class:`ThreadGovernor`'s)."""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from vostool.errors import VostoolError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU. Asking for an absent device is an error."""
    name = (name or "auto").lower()
    if name not in DEVICES and not name.startswith("cuda:"):
        raise VostoolError(f"unknown device '{name}'; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VostoolError("CUDA was asked for (--device cuda) but no CUDA GPU is available; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise VostoolError("MPS was asked for (--device mps) but is not available on this machine")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX).

    ``VOSTOOL_NO_BF16=1`` forces False (used to exercise the fp32 fallback).
    """
    if os.environ.get("VOSTOOL_NO_BF16", "") not in ("", "0"):
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old torch
        return False


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) -> vostool's levels, lowest first
_ISA_LEVELS = ("SSE4.1", "AVX", "AVX2", "AVX-512", "AVX-512 BF16", "AMX")
_ONEDNN_CAPS = {
    "SSE41": "SSE4.1", "AVX": "AVX", "AVX2": "AVX2", "AVX2_VNNI": "AVX2", "AVX2_VNNI_2": "AVX2",
    "AVX512_CORE": "AVX-512", "AVX512_CORE_VNNI": "AVX-512", "AVX512_CORE_BF16": "AVX-512 BF16",
    "AVX512_CORE_FP16": "AVX-512 BF16", "AVX10_1_512": "AVX-512 BF16", "AVX512_CORE_AMX": "AMX",
    "AVX512_CORE_AMX_FP16": "AMX", "AVX10_1_512_AMX": "AMX", "AVX10_1_512_AMX_FP16": "AMX",
    "AVX10_2_512": "AMX", "AVX10_2_512_AMX_2": "AMX", "ALL": "AMX", "DEFAULT": "AMX",
}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _hardware_isa(flags: set[str]) -> str | None:
    if {"amx_bf16", "amx_tile"} <= flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX-512 BF16"
    if {"avx512f", "avx512bw"} <= flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    if "avx" in flags:
        return "AVX"
    if "sse4_1" in flags:
        return "SSE4.1"
    return None


def cpu_isa() -> dict[str, str | None]:
    """The vector ISA that CPU inference runs with, honouring the caps users set.

    Returns ``{"hardware": level from /proc/cpuinfo, "onednn_cap": $ONEDNN_MAX_CPU_ISA
    (or $DNNL_MAX_CPU_ISA) as a level, "aten": torch.backends.cpu.get_cpu_capability()
    (honours $ATEN_CPU_CAPABILITY), "effective": the lower of hardware and the oneDNN
    cap, "summary": one line}``. Levels: SSE4.1 < AVX < AVX2 < AVX-512 < AVX-512 BF16 <
    AMX; None where unknown (not x86 Linux).
    """
    hw = _hardware_isa(cpu_flags())
    raw = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    cap = _ONEDNN_CAPS.get(raw) if raw else None
    try:
        aten = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # pragma: no cover - very old torch
        aten = None
    effective = hw
    if hw is not None and cap is not None and _ISA_LEVELS.index(cap) < _ISA_LEVELS.index(hw):
        effective = cap
    summary = effective or "unknown"
    if effective != hw:
        summary += f" (capped by ONEDNN_MAX_CPU_ISA={raw}; the CPU has {hw})"
    if aten is not None:
        summary += f"; ATen kernels {aten}"
        if os.environ.get("ATEN_CPU_CAPABILITY"):
            summary += f" (ATEN_CPU_CAPABILITY={os.environ['ATEN_CPU_CAPABILITY']})"
    summary += "; native bf16: " + ("yes" if cpu_has_native_bf16() else "no")
    return {"hardware": hw, "onednn_cap": cap, "aten": aten, "effective": effective, "summary": summary}


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32.

    An explicit bf16 on a CPU without native support falls back to fp32 (it would be
    emulated and slower); fp16 on CPU is refused.
    """
    name = (name or "auto").lower()
    if name not in PRECISIONS:
        raise VostoolError(f"unknown precision '{name}'; choose one of: {', '.join(PRECISIONS)}")
    kind = device.type
    if name == "auto":
        if kind == "cuda":
            return "fp16"
        if kind == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if kind == "cpu":
        if name == "fp16":
            raise VostoolError("fp16 is not supported on the CPU; use --precision bf16 or fp32")
        if name == "bf16" and not cpu_has_native_bf16():
            return "fp32"
    if kind == "cuda" and name == "bf16" and not torch.cuda.is_bf16_supported():
        raise VostoolError("this GPU has no bf16 support; use --precision fp16 or fp32")
    return name


def autocast(device: torch.device, precision: str) -> ContextManager[object]:
    """The autocast context for a resolved precision (a null context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask and the cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        try:
            with open(path) as f:
                parts = f.read().split()
        except OSError:
            continue
        try:
            if path.endswith("cpu.max") and parts and parts[0] != "max":
                n = min(n, max(1, int(int(parts[0]) / int(parts[1]) + 0.5)))
            elif path.endswith("quota_us") and parts and int(parts[0]) > 0:
                with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
                    n = min(n, max(1, int(int(parts[0]) / int(f.read()) + 0.5)))
        except (ValueError, IndexError, OSError, ZeroDivisionError):
            pass
        break
    return max(1, n)


_CPU_THREADS: int | None = None


def configure_cpu() -> int:
    """Set up CPU inference once per process; returns the most intra-op threads to use.

    - threads: ``$VOSTOOL_THREADS`` if set; otherwise torch's default (one per core)
      unless that exceeds the CPUs the process may use (affinity, cgroup quota: a
      container on a large host), which oversubscribes and stalls every parallel op;
    - denormal floats flushed to zero (they can slow convolutions down 10x or more).
    """
    global _CPU_THREADS
    if _CPU_THREADS is None:
        torch.set_flush_denormal(True)
        env = os.environ.get("VOSTOOL_THREADS", "").strip()
        if env.isdigit() and int(env) > 0:
            torch.set_num_threads(int(env))
        elif torch.get_num_threads() > available_cpus():
            torch.set_num_threads(available_cpus())
        _CPU_THREADS = torch.get_num_threads()
    return _CPU_THREADS


class ThreadGovernor:
    """Keeps the intra-op thread count that gives the fastest frames on a shared CPU.

    On a CPU that other processes (or vostool's own decoding and writing threads) also
    use, every parallel op waits for its slowest thread: with as many threads as cores
    a frame can take 3-30x longer than with fewer. The governor runs at ``max_threads``,
    now and then times a few frames at the other counts (``max/2`` on 4+ cores, 1) and
    keeps the faster (medians, so the slower first frame after a switch does not
    decide); a count that lost is probed less and less often (exponential back-off), a
    probe that is clearly slower stops after one frame, and every count is probed again
    soon when the frames get much slower (the load changed). The first frame ever run at
    a count is not timed: it builds that count's ONNX Runtime sessions and warms its
    caches (timing it made ONNX Runtime's two threads look slower than one: 153 ms a
    frame at one thread where two take 87). Masks do not depend on the thread count.
    """

    PROBE_FRAMES = 3      # frames per probe (their median is compared)
    KEEP = 5              # recent frames at the chosen count (their median is compared)
    BASE_INTERVAL = 24    # frames between probes of a count, doubled each time it loses
    MAX_INTERVAL = 768

    def __init__(self, max_threads: int) -> None:
        self.max = max(1, int(max_threads))
        options = {self.max, 1}
        if self.max >= 4:
            options.add(self.max // 2)
        self.options = sorted(options, reverse=True)
        self.best = self.max
        self.recent: dict[int, list[float]] = {n: [] for n in self.options}
        self.interval = {n: self.BASE_INTERVAL for n in self.options}
        # the first probe comes early: a loaded machine shows at once
        self.since = {n: self.BASE_INTERVAL - 2 for n in self.options}
        self.probe: int | None = None
        self.probe_left = 0
        self.reference: float | None = None
        #: frames run at each thread count
        self.used: dict[int, int] = {n: 0 for n in self.options}
        #: counts that have run a frame already (their first frame is not timed)
        self.warm: set[int] = set()

    @property
    def threads(self) -> int:
        """The count the next frame runs with."""
        return self.probe if self.probe is not None else self.best

    def begin(self) -> None:
        """Before a frame: apply the count to use."""
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def end(self, seconds: float) -> None:
        """After a frame: record its wall time and decide what the next frames use."""
        n = self.threads
        self.used[n] += 1
        if n not in self.warm:  # first frame at this count: sessions built, caches cold
            self.warm.add(n)
            return
        if self.probe is not None:
            self.recent[n].append(seconds)
            best = _median(self.recent[self.best])
            self.probe_left -= 1
            if best is not None and seconds > 4 * best:  # clearly worse: stop probing now
                self.probe_left = 0
            if self.probe_left <= 0:
                self._decide()
            return
        self.recent[n] = (self.recent[n] + [seconds])[-self.KEEP:]
        now = _median(self.recent[n])
        if len(self.recent[n]) >= 3:
            if self.reference is None:
                self.reference = now
            elif now is not None and now > 1.5 * self.reference:
                for alt in self.options:  # much slower than before: look again now
                    self.interval[alt] = self.BASE_INTERVAL
                    self.since[alt] = self.BASE_INTERVAL
                self.reference = now
        for alt in self.options:
            if alt != self.best:
                self.since[alt] += 1
        due = [alt for alt in self.options if alt != self.best and self.since[alt] >= self.interval[alt]]
        if due:
            self.probe, self.probe_left = due[0], self.PROBE_FRAMES
            self.recent[self.probe] = []

    def _decide(self) -> None:
        alt, self.probe = self.probe, None
        assert alt is not None
        self.since[alt] = 0
        a, b = _median(self.recent[alt]), _median(self.recent[self.best])
        if a is not None and b is not None and a < 0.9 * b:
            self.interval[self.best] = self.BASE_INTERVAL
            self.since[self.best] = 0
            self.recent[self.best] = []
            self.best, self.reference = alt, a
        else:
            self.interval[alt] = min(self.interval[alt] * 2, self.MAX_INTERVAL)
            self.recent[alt] = []


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def threads_fixed() -> bool:
    """True when the thread count was fixed by ``$VOSTOOL_THREADS``."""
    env = os.environ.get("VOSTOOL_THREADS", "").strip()
    return env.isdigit() and int(env) > 0


def configure_torch(device: torch.device, threads: int | None = None) -> ThreadGovernor | None:
    """Make the process-wide torch settings that inference on ``device`` runs with: the
    one place vostool's engine changes them (the :class:`~vostool.engine.Propagator`
    calls it when it is built).

    - CPU: once per process, :func:`configure_cpu` (denormals flushed to zero; the thread
      cap from ``$VOSTOOL_THREADS`` or the CPUs the process may use); then ``threads``
      sets torch's intra-op thread count; None: adaptive, a :class:`ThreadGovernor` is
      returned that picks the count of each frame (applied during the frame only and put
      back after it), unless ``$VOSTOOL_THREADS`` fixes the count or one thread is all
      there is (then the count is set to the cap);
    - CUDA: cuDNN autotuning (``torch.backends.cudnn.benchmark``): a video's frames all
      have one size, so the fastest kernels are searched for once;
    - other devices: nothing.

    Returns the governor the engine's frames run with, or None. Raises VostoolError for
    ``threads`` below 1 on the CPU.
    """
    if device.type == "cpu":
        most = configure_cpu()
        if threads is not None:
            if threads < 1:
                raise VostoolError("threads must be at least 1")
            torch.set_num_threads(int(threads))
        elif not threads_fixed() and most > 1:
            return ThreadGovernor(most)
        else:
            torch.set_num_threads(most)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return None


def device_name(device: torch.device) -> str:
    """Human-readable device name for reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        import platform

        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        return f"CPU ({cpu}, {available_cpus()} CPUs)"
    return device.type
