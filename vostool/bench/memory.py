"""Memory figures for benchmarks: process RSS on the CPU, allocator statistics on CUDA.

On Linux the peak RSS (``VmHWM``) can be reset by writing ``5`` to
``/proc/self/clear_refs``; where that is not allowed, the peak is the process's peak so
far and benchmarks report the growth over the RSS measured before the model was built.
"""

from __future__ import annotations

import resource
import sys

import torch

MB = 1024 * 1024


def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process, in MiB."""
    kb = _status_kb("VmRSS")
    if kb is not None:
        return kb / 1024
    try:  # pragma: no cover - not Linux
        import psutil  # type: ignore[import-not-found]

        return psutil.Process().memory_info().rss / MB
    except Exception:  # pragma: no cover
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (since the last reset), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover
    return peak / MB if sys.platform == "darwin" else peak / 1024  # pragma: no cover


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs``). True if it worked."""
    before = _status_kb("VmHWM")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    after = _status_kb("VmHWM")
    return before is not None and after is not None and after <= before


def release_free_memory() -> None:
    """Give memory freed by Python and torch back to the OS (glibc ``malloc_trim``), so
    that the RSS measured next is not inflated by what an earlier model left behind."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def reset_peak(device: torch.device) -> bool:
    """Reset the peak statistic of ``device``; True if the next peak is this run's alone."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def current_mb(device: torch.device) -> float:
    """Memory in use now: CUDA allocated memory, or process RSS on other devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device) / MB
    return rss_mb()


def peak_mb(device: torch.device) -> float:
    """Peak memory: CUDA max allocated, or process peak RSS on other devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MB
    return peak_rss_mb()


def peak_kind(device: torch.device) -> str:
    return "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"
