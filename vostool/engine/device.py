"""Device and precision resolution: what ``--device`` and ``--precision`` turn into."""

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
        return f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    return device.type
