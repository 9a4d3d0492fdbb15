"""Optical flow behind one small interface (used by DTN's box propagation and mask guidance).

DTN (``papers/dtn.txt``) computes optical flow with FlowNet2-S. Its weights cannot be had
here, so vostool uses a real flow method instead:

- :class:`DISFlow` (default): OpenCV's Dense Inverse Search flow from
  ``opencv-python-headless``, a classical method that runs in a few milliseconds per
  frame on a CPU and needs no weights. Presets ``ultrafast``, ``fast`` (default),
  ``medium``.
- :class:`RAFTFlow`: torchvision's RAFT-small (``Raft_Small_Weights.C_T_V2``), built only
  when asked (``get_flow("raft")``); if its weights cannot be loaded (no network, nothing
  under ``$TORCH_HOME``) it raises :class:`~vostool.errors.VostoolError`.

Direction convention (every estimator): ``flow = estimator(prev_gray, cur_gray)`` is the
**backward** flow ``H x W x 2`` (float32, ``(dx, dy)`` in pixels) defined on the *current*
frame: the content at pixel ``(x, y)`` of the current frame was at
``(x + dx, y + dy)`` in the previous frame. That is what backward warping needs:
:func:`warp` moves a previous-frame mask onto the current frame by sampling it at
``(x + dx, y + dy)``.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from vostool.errors import VostoolError
from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD


class FlowEstimator(Protocol):
    """``__call__(prev_gray, cur_gray) -> H x W x 2`` float32 backward flow (see module doc).

    prev_gray, cur_gray: ``H x W`` uint8 grayscale frames of the same size.
    """

    name: str

    def __call__(self, prev_gray: np.ndarray, cur_gray: np.ndarray) -> np.ndarray: ...


class DISFlow:
    """OpenCV DIS optical flow (CPU). ``preset``: ``ultrafast``, ``fast`` or ``medium``."""

    PRESETS = ("ultrafast", "fast", "medium")

    def __init__(self, preset: str = "fast") -> None:
        import cv2  # imported lazily: only flow users pay for it

        codes = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }
        if preset not in codes:
            raise VostoolError(f"unknown DIS preset '{preset}'; choose one of: {', '.join(self.PRESETS)}")
        self.name = f"dis-{preset}"
        self._new = functools.partial(cv2.DISOpticalFlow_create, codes[preset])
        self._dis: Any = None  # made for the first pair, and again for each new frame size
        self._shape: tuple[int, ...] | None = None

    def __call__(self, prev_gray: np.ndarray, cur_gray: np.ndarray) -> np.ndarray:
        _check_pair(prev_gray, cur_gray)
        if cur_gray.shape != self._shape:
            # OpenCV's DIS keeps state from the frame size it last saw: after a 64x64 pair, the
            # flow of a 480x864 pair was off by up to 0.9 px from a fresh estimator's (so a
            # video's masks depended on what ran before it). A new size gets a new estimator
            # (creating one costs nothing measurable: 7.4 ms against 8.1 ms a 480x864 pair).
            self._dis, self._shape = self._new(), cur_gray.shape
        # calc(I0, I1) returns f with I0(x) ~ I1(x + f(x)): I0 = current gives backward flow.
        flow = self._dis.calc(np.ascontiguousarray(cur_gray), np.ascontiguousarray(prev_gray), None)
        return flow.astype(np.float32, copy=False)


class RAFTFlow:
    """torchvision RAFT-small. Loads ``Raft_Small_Weights.C_T_V2`` or raises VostoolError."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        from torchvision.models.optical_flow import Raft_Small_Weights, raft_small

        self.name = "raft-small"
        self.device = torch.device(device)
        try:
            net = raft_small(weights=Raft_Small_Weights.C_T_V2, progress=False)
        except Exception as exc:  # no network, no cached file
            raise VostoolError(
                f"RAFT-small weights are not available ({exc}); put raft_small_C_T_V2-01064c6d.pth under "
                f"$TORCH_HOME/hub/checkpoints or use the DIS flow"
            ) from exc
        self.net = net.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, prev_gray: np.ndarray, cur_gray: np.ndarray) -> np.ndarray:
        _check_pair(prev_gray, cur_gray)
        h, w = cur_gray.shape
        ph, pw = -h % 8, -w % 8  # RAFT needs sides divisible by 8

        def prep(g: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.ascontiguousarray(g)).to(self.device).float()
            t = (t / 127.5 - 1.0)[None, None].expand(1, 3, h, w)
            return F.pad(t, (0, pw, 0, ph), mode="replicate")

        # RAFT(img1, img2) returns f with img1(x) ~ img2(x + f(x)): img1 = current.
        flow = self.net(prep(cur_gray), prep(prev_gray))[-1][0, :, :h, :w]
        return flow.permute(1, 2, 0).float().cpu().numpy()


def _check_pair(prev_gray: np.ndarray, cur_gray: np.ndarray) -> None:
    if prev_gray.shape != cur_gray.shape or prev_gray.ndim != 2:
        raise ValueError(f"flow needs two H x W frames, got {prev_gray.shape} and {cur_gray.shape}")


FLOW_NAMES = ("dis", "dis-ultrafast", "dis-fast", "dis-medium", "raft")


def get_flow(name: str = "dis", device: str | torch.device = "cpu") -> FlowEstimator:
    """Build a flow estimator by name: ``dis`` (= ``dis-fast``), ``dis-ultrafast``,
    ``dis-fast``, ``dis-medium`` or ``raft`` (RAFT-small on ``device``)."""
    if name == "dis":
        return DISFlow("fast")
    if name.startswith("dis-"):
        return DISFlow(name[4:])
    if name == "raft":
        return RAFTFlow(device)
    raise VostoolError(f"unknown flow '{name}'; choose one of: {', '.join(FLOW_NAMES)}")


def to_gray_uint8(image: torch.Tensor) -> np.ndarray:
    """Normalised image ``3 x H x W`` (ImageNet mean/std) -> ``H x W`` uint8 grayscale (CPU)."""
    x = image.detach().float().cpu()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (x * std + mean) * 255.0
    gray = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]  # ITU-R BT.601, as cv2
    return gray.round().clamp(0, 255).to(torch.uint8).numpy()


def warp(mask: torch.Tensor, flow: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Backward-warp previous-frame maps onto the current frame (bilinear, zeros outside).

    mask: ``K x C x H x W`` (usually ``K x 1 x H x W`` probabilities) on the previous frame;
    flow: backward flow ``H x W x 2`` or ``K x H x W x 2`` (numpy or tensor, pixels).
    Returns ``K x C x H x W``: ``out[y, x] = mask[y + dy, x + dx]``. Differentiable in mask.
    """
    k, _, h, w = mask.shape
    f = torch.as_tensor(flow, device=mask.device, dtype=torch.float32)
    if f.dim() == 3:
        f = f.unsqueeze(0)
    if tuple(f.shape[1:3]) != (h, w):
        raise ValueError(f"flow is {tuple(f.shape[1:3])}, mask is {(h, w)}")
    ys = torch.arange(h, device=mask.device, dtype=torch.float32)
    xs = torch.arange(w, device=mask.device, dtype=torch.float32)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    # align_corners=False: pixel centre i sits at (2 i + 1) / n - 1.
    gx = (2.0 * (xx + f[..., 0]) + 1.0) / w - 1.0
    gy = (2.0 * (yy + f[..., 1]) + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1).expand(k, h, w, 2)
    out = F.grid_sample(mask.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(mask.dtype)
