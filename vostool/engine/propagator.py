"""The propagation engine that ``segment``, ``eval`` and ``bench`` all drive.

:class:`Propagator` takes frames at the source resolution (``H x W x 3`` uint8 RGB) and
returns :class:`~vostool.types.FrameResult` at the source resolution. Inside it:

- resizes each frame so that its shorter side is ``size`` (aspect ratio kept) and pads
  it to a multiple of the model's stride; predictions are cropped and resized back;
- runs all objects as one batch through the model, the frame encoded once;
- merges the per-object probabilities with RGMP's soft aggregation and feeds the merged
  (soft) probabilities back to the model for the next frame; the background term is
  ``1 - max_k p_k``, or, for models that declare ``background_from_union`` (RGMP), one
  minus the network's output on the merged foreground: with two or more objects the
  model runs one extra row (the union of the objects, started from their merged mask
  and fed back the merged foreground, the last row of every lane's state);
- owns device, precision (autocast) and memory format (channels_last);
- optionally averages several input scales (``scales``), each with its own state: the
  per-scale probabilities are upsampled to the base resolution (scale 1.0, whatever the
  order or presence of 1.0 in ``scales``), averaged and merged there, the result comes
  from there and each scale's state is fed back the merged probabilities resized to it.

Its memory is constant in video length: it holds one frame and the model's state.

Speed (measured with ``vostool bench``; see :mod:`vostool.bench`):

- the model's backbones run as inference copies with every BatchNorm folded into the
  convolution before it, their convolution weights pre-cast to the autocast dtype; the
  copies are swapped in only while the engine runs the model, so the model object (its
  weights, its state dict, its attributes) is never changed and can go on training
  (:mod:`vostool.engine.fastpath`, behind :func:`~vostool.engine.fastpath.inference_copies`);
- on the CPU a resize of the input frame runs on uint8 (8x faster than on floats);
- the object index is found by K comparisons (``argmax(0)`` over the object dimension
  is 10-100x slower on CPUs), kept in uint8 and mapped to ids by a cached table;
- on CUDA: cuDNN autotuning, frames staged in pinned memory and copied asynchronously.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from vostool.engine.device import (
    ThreadGovernor, autocast, configure_torch, device_name, resolve_device, resolve_precision,
)
from vostool.engine.adapt import Adaptation
from vostool.engine.backends import OrtPredict
from vostool.engine.fastpath import FastBackbones, fingerprint, fold_batchnorm, inference_copies
from vostool.engine.window import apply_window, keep_connected
from vostool.errors import VostoolError
from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from vostool.models.base import Features, State, VOSModel
from vostool.models.blocks import soft_aggregate
from vostool.types import Frame, FrameResult


__all__ = ["Geometry", "Propagator", "ScaleGeometry", "propagate", "fold_batchnorm"]  # fold_batchnorm: moved to fastpath, kept here

_F = TypeVar("_F", bound=Callable[..., Any])

#: ONNX Runtime decoders by (id, fingerprint) of the model (the last few)
_ORT_PREDICTS: dict[tuple[int, int], OrtPredict] = {}


def _fast(method: _F) -> _F:
    """Run a method with the backbones swapped for their inference copies."""

    @functools.wraps(method)
    def wrapper(self: Propagator, *args: Any, **kwargs: Any) -> Any:
        if self._fast is None:
            return method(self, *args, **kwargs)
        with self._fast.swapped():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


@dataclass
class _Lane:
    """One input scale: its geometry and the model state at that scale."""

    h: int
    w: int
    ph: int
    pw: int
    state: State | None = None
    image: torch.Tensor | None = None
    feats: Features | None = None


@dataclass(frozen=True)
class ScaleGeometry:
    """One input scale of the running video: the frame resized to ``h x w`` (shorter side
    ``size * scale``), padded to ``ph x pw`` (multiples of the model's stride)."""

    scale: float
    h: int
    w: int
    ph: int
    pw: int


@dataclass(frozen=True)
class Geometry:
    """A read-only view of the running video's geometry (:attr:`Propagator.geometry`).

    source: ``(H, W)`` of the frames. base: scale 1.0, where the scales' probabilities are
    averaged and merged and the result comes from (whether or not 1.0 is in ``scales``).
    scales: one per input scale, in the order of ``Propagator.scales``. object_ids: the
    objects now tracked (rows of the states, in order). union_row: the states hold one
    more last row, the objects' union (models with ``background_from_union``).
    """

    source: tuple[int, int]
    base: ScaleGeometry
    scales: tuple[ScaleGeometry, ...]
    object_ids: tuple[int, ...]
    union_row: bool

    @property
    def internal(self) -> tuple[int, int]:
        """``(h, w)`` the first scale runs at (before padding)."""
        return self.scales[0].h, self.scales[0].w

    @property
    def padded(self) -> tuple[int, int]:
        """``(ph, pw)`` the first scale's input to the model has (after padding)."""
        return self.scales[0].ph, self.scales[0].pw


class Propagator:
    """Stateful video object segmentation of one video, frame by frame.

    Args:
        model: a :class:`VOSModel` (weights loaded).
        device: ``auto|cpu|cuda|mps`` or a ``torch.device``.
        precision: ``auto|fp32|fp16|bf16`` (see :func:`resolve_precision`).
        size: internal size of the shorter side; ``None`` or 0 keeps the source size.
        scales: input scales averaged at every frame (RGMP's multi-scale inference).
        channels_last: run convolutions in NHWC (faster with oneDNN and cuDNN).
        max_objects: objects to discover in zero-shot mode (models that support it);
            None: the model's ``zero_shot_slots`` (the number of slots it was trained with).
        fold_batchnorm: run the backbones as inference copies with BatchNorm folded into
            the convolutions (and weights pre-cast to the autocast dtype); the model
            itself is left untouched.
        threads: CPU intra-op threads. None: adaptive (:class:`ThreadGovernor`: the
            fastest of all cores / fewer on a CPU shared with other work, applied during
            each ``step`` only), unless ``$VOSTOOL_THREADS`` fixes the count. A number
            sets torch's thread count to it (process-wide settings: all made by
            :func:`~vostool.engine.device.configure_torch`).
        backend: what runs the backbones: ``auto|torch|onnxruntime`` (see
            :func:`vostool.engine.backends.resolve_backend`; auto: ONNX Runtime for fp32
            on the CPU when it is installed).
        adapt: ``--adapt``: learn each video's objects from their given masks (a target
            model held by the :class:`~vostool.engine.adapt.Adaptation`, the model's
            weights untouched); None: the engine runs exactly as without it.
        window: search window margin (:mod:`vostool.engine.window`): each object's
            foreground is kept within its previous box grown by this multiple of the box's
            longer side; ``"model"`` (default): the model's ``search_window``; None or 0: off.
            With the window on, a model that declares ``window_connected`` (crvos, gam, rgmp, rvos) also keeps
            only the parts of each object's new mask that touch its previous mask
            (:func:`~vostool.engine.window.keep_connected`).
    """

    def __init__(
        self, model: VOSModel, device: str | torch.device = "auto", precision: str = "auto",
        size: int | None = 480, scales: Iterable[float] = (1.0,), channels_last: bool = True,
        max_objects: int | None = None, fold_batchnorm: bool = True, threads: int | None = None,
        backend: str = "auto", adapt: Adaptation | None = None, window: float | str | None = "model",
    ) -> None:
        from vostool.engine.backends import resolve_backend

        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        #: what runs the backbones ("torch" or "onnxruntime") and why
        self.backend, self.backend_reason = resolve_backend(backend, self.device, self.precision)
        if not fold_batchnorm and self.backend == "onnxruntime" and (backend or "auto").lower() == "auto":
            self.backend, self.backend_reason = "torch", "fold_batchnorm=False: the model runs as it is"
        self.device_name = device_name(self.device)
        self.size = size or None
        self.scales = [float(s) for s in scales] or [1.0]
        if any(s <= 0 for s in self.scales):
            raise VostoolError("scales must be positive")
        self.channels_last = channels_last and self.device.type != "mps"
        self.max_objects = max_objects
        self.adaptation = adapt
        #: search window margin (None: off)
        self.window: float | None = (model.search_window if window == "model" else float(window or 0)) or None
        #: the previous frame's merged object probabilities ``K x h x w`` at the base size
        self._prev: torch.Tensor | None = None
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: adapts the CPU thread count frame by frame (None: fixed or not on the CPU)
        self.governor: ThreadGovernor | None = configure_torch(self.device, threads)
        info = model.weights_info  # the checkpoint's normalisation; ImageNet's without one
        mean, std = (info.mean, info.std) if info is not None else (IMAGENET_MEAN, IMAGENET_STD)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1) * 255
        self.object_ids: list[int] = []
        self._lanes: list[_Lane] = []
        #: the base geometry (scale 1.0): scales are averaged, merged and fed back from here
        self._base = _Lane(0, 0, 0, 0)
        #: the lanes' states hold one extra last row, the objects' union (background_from_union)
        self._union = False
        self._src: tuple[int, int] | None = None
        self._lut: tuple[tuple[int, ...], np.ndarray] = ((), np.zeros(1, np.uint8))
        self._pinned: torch.Tensor | None = None
        self._h2d_done: Any = None
        self._fast: FastBackbones | None = None
        if fold_batchnorm or self.backend == "onnxruntime":
            self._fast = inference_copies(self.model, self.device, self.precision, self.channels_last, self.backend)
        #: the decoder run by ONNX Runtime (backend onnxruntime, models that declare
        #: graph_state_keys), rebuilt when the model's weights change; None: torch
        self._graph: OrtPredict | None = None

    @property
    def geometry(self) -> Geometry | None:
        """The running video's sizes, scales and objects (None before :meth:`start`)."""
        if self._src is None:
            return None

        def view(lane: _Lane, scale: float) -> ScaleGeometry:
            return ScaleGeometry(scale, lane.h, lane.w, lane.ph, lane.pw)

        return Geometry(self._src, view(self._base, 1.0),
                        tuple(view(lane, s) for lane, s in zip(self._lanes, self.scales)),
                        tuple(self.object_ids), self._union)

    @property
    def states(self) -> tuple[Mapping[str, torch.Tensor], ...]:
        """The model's state at each input scale (order of ``scales``), read-only: each
        tensor has the objects (and the union row, :attr:`Geometry.union_row`) first and
        is the engine's own, not a copy. Empty before :meth:`start`."""
        return tuple(MappingProxyType(lane.state if lane.state is not None else {}) for lane in self._lanes)

    @property
    def inference_path(self) -> str:
        """Which inference path runs and why, in words (e.g. ``fp32 channels_last,
        backbones on onnxruntime 1.32 (folded fp32): no native bf16 ...``); the
        backbones' fallbacks are known after :meth:`start`."""
        kind = {"fp32": "fp32 eager", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.precision]
        layout = "channels_last" if self.channels_last else "NCHW"
        enc = self._fast.describe() if self._fast is not None else "backbones on torch"
        if self._graph is not None:
            enc += f", decoder on torch ({self._graph.fallback})" if self._graph.fallback else ", decoder on onnxruntime"
        return f"{kind} {layout}, {enc}: {self.backend_reason}"

    # -- public API -------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, image: np.ndarray, masks: np.ndarray | None = None) -> FrameResult:
        """Begin a video. image: ``H x W x 3`` uint8; masks: ``H x W`` int object ids
        (0 = background), or None for zero-shot models. Returns frame 0's result (the
        given mask itself in semi-supervised mode)."""
        if self._fast is not None:
            self._fast.refresh()  # the model's weights may have changed since the last video
        self._refresh_graph()
        if self.adaptation is not None:
            self.adaptation.reset()
        return self._start(image, masks)

    @_fast
    def _start(self, image: np.ndarray, masks: np.ndarray | None) -> FrameResult:
        h, w = image.shape[:2]
        self._src = (h, w)
        self._lanes = [self._make_lane(h, w, s) for s in self.scales]
        self._base = self._make_lane(h, w, 1.0)
        self.object_ids = []
        self._union = False
        self._prev = None
        if masks is None:
            return self._start_zero_shot(image)
        return self.add_objects(image, masks, _first=True)

    @torch.inference_mode()
    @_fast
    def step(self, image: np.ndarray) -> FrameResult:
        """Segment the next frame. image: ``H x W x 3`` uint8 at the source size."""
        gov = self.governor
        if gov is None:
            return self._step(image)
        caller = torch.get_num_threads()
        gov.begin()
        t0 = time.perf_counter()
        try:
            return self._step(image)
        finally:
            gov.end(time.perf_counter() - t0)
            if torch.get_num_threads() != caller:  # the caller's count for whatever runs next
                torch.set_num_threads(caller)

    def _step(self, image: np.ndarray) -> FrameResult:
        self._check_frame(image)
        if not self.object_ids:
            return self._empty_result()
        fg = self._predict(image)
        if self.window and self._prev is not None and len(self._prev) == len(self.object_ids):
            fg = apply_window(fg, self._prev, self.window, self._union)
            if self.model.window_connected:
                fg = keep_connected(fg, self._prev)
        merged, feedback = self._merge(fg)
        for lane in self._lanes:
            self._feed_back(lane, feedback)
        return self._result(merged)

    @torch.inference_mode()
    @_fast
    def add_objects(self, image: np.ndarray, masks: np.ndarray, _first: bool = False) -> FrameResult:
        """Add or correct objects at this frame. ``masks``: ``H x W`` ids; every id in it
        is (re)started from its mask here, other objects go on being propagated."""
        self._check_frame(image)
        masks = np.asarray(masks)
        if masks.shape != self._src:
            raise VostoolError(f"mask size {masks.shape[1]}x{masks.shape[0]} differs from the frame size "
                               f"{self._src[1]}x{self._src[0]}")
        given = [int(i) for i in np.unique(masks) if i != 0]
        if not given:
            raise VostoolError("the mask has no object (all pixels are background)")
        if self.adaptation is not None:
            self.adaptation.fit(self, image, masks, given)
        keep = [i for i, oid in enumerate(self.object_ids) if oid not in given]
        given_t = torch.from_numpy(np.stack([masks == g for g in given]).astype(np.float32)).to(self.device)
        claimed = given_t.amax(0, keepdim=True)

        kept_fg = None
        if keep and not _first:
            fg = self._predict(image)  # at the base size
            kept_fg = fg[keep] * (1 - self._to_lane(claimed[None], self._base)[0])
        new_ids = [self.object_ids[i] for i in keep] + given

        base = self._base
        given_fg = self._to_lane(given_t[:, None], base)  # G x 1 x h x w
        fg_all = given_fg if kept_fg is None else torch.cat([kept_fg, given_fg])
        merged, feedback = self._merge(fg_all, union=False)  # no union prediction for the new set
        union = (self.model.uses_soft_aggregation and self.model.background_from_union
                 and len(new_ids) >= 2)

        for lane in self._lanes:
            if kept_fg is None:  # nothing predicted on this frame yet: encode it here
                lane.image, lane.feats = self._encode(image, lane)
            fb = self._pad(self._resize(feedback, lane), lane)
            g = self._pad(self._to_lane(given_t[:, None], lane), lane)
            with autocast(self.device, self.precision):
                parts: State = {}
                if keep and lane.state is not None:
                    old = self.model.keep_objects(lane.state, keep)
                    k = len(keep)
                    parts = self.model.update(
                        self._expand_img(lane.image, k), self.model.expand_features(lane.feats, k),
                        old, fb[: len(keep)])
                new = self.model.init_state(
                    self._expand_img(lane.image, len(given)),
                    self.model.expand_features(lane.feats, len(given)), g)
                lane.state = VOSModel.cat_states(parts, new)
                if union:  # the union restarts here from the merged foreground
                    u = self._pad(self._resize(1 - merged[None, :1], lane), lane)
                    lane.state = VOSModel.cat_states(lane.state, self.model.init_state(
                        lane.image, self.model.expand_features(lane.feats, 1), u))
        self.object_ids = new_ids
        self._union = union
        result = self._result(merged)
        # The given masks are exact at the source resolution.
        idx = result.index
        idx[np.isin(idx, given)] = 0
        idx[masks != 0] = masks[masks != 0]
        for j, oid in enumerate(self.object_ids):
            if oid in given:
                result.probs[j] = (masks == oid).astype(np.uint8) * 255
            else:
                result.probs[j][masks != 0] = 0
        return result

    # -- internals --------------------------------------------------------------------
    def _make_lane(self, h: int, w: int, scale: float) -> _Lane:
        size = (self.size or min(h, w)) * scale
        r = size / min(h, w)
        lh, lw = max(1, round(h * r)), max(1, round(w * r))
        s = self.model.stride
        return _Lane(lh, lw, math.ceil(lh / s) * s, math.ceil(lw / s) * s)

    def _check_frame(self, image: np.ndarray) -> None:
        if self._src is None:
            raise VostoolError("Propagator.start() must be called first")
        if image.shape[:2] != self._src:
            raise VostoolError(f"frame size {image.shape[1]}x{image.shape[0]} changed mid-video "
                               f"(started at {self._src[1]}x{self._src[0]})")

    def _upload(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` image -> ``1 x 3 x H x W`` on the device (NHWC strides, same dtype)."""
        x = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cuda":
            if self._pinned is None or self._pinned.shape != x.shape or self._pinned.dtype != x.dtype:
                self._pinned = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
            elif self._h2d_done is not None:
                self._h2d_done.synchronize()  # the previous copy has left the staging buffer
            self._pinned.copy_(x)
            x = self._pinned.to(self.device, non_blocking=True)
            self._h2d_done = torch.cuda.Event()
            self._h2d_done.record()
        elif self.device.type != "cpu":
            x = x.to(self.device)
        return x.permute(2, 0, 1)[None]

    def _encode(self, image: np.ndarray, lane: _Lane) -> tuple[torch.Tensor, Features]:
        x = self._upload(image)
        if (lane.h, lane.w) != tuple(x.shape[-2:]):
            if x.device.type == "cpu" and x.dtype == torch.uint8:  # uint8 kernel: ~8x faster
                x = F.interpolate(x, (lane.h, lane.w), mode="bilinear", antialias=True, align_corners=False)
            else:
                x = F.interpolate(x.float(), (lane.h, lane.w), mode="bilinear", antialias=True,
                                  align_corners=False)
        # A fresh NCHW copy, normalised in place (per-channel broadcasting on NHWC strides
        # is ~10x slower); exactly (x - mean) / std.
        x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
        x = x.sub_(self._mean).div_(self._std)
        if (lane.ph, lane.pw) != (lane.h, lane.w):
            x = F.pad(x, (0, lane.pw - lane.w, 0, lane.ph - lane.h), mode="replicate")
        # ONNX Runtime end to end (encoder and decoder graphs) takes the NCHW frame as it is
        if self.channels_last and (self._graph is None or self._graph.fallback):
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            feats = self.model.encode(x)
        return x, feats

    def _refresh_graph(self) -> None:
        """(Re)build the ONNX Runtime decoder when it applies and the weights changed."""
        keys = self.model.graph_state_keys
        if self.backend != "onnxruntime" or keys is None:
            return
        key = (id(self.model), fingerprint(self.model))
        graph = _ORT_PREDICTS.get(key)
        if graph is None:  # the same weights in another Propagator (segment: one per video) reuse it
            while len(_ORT_PREDICTS) >= 4:
                _ORT_PREDICTS.pop(next(iter(_ORT_PREDICTS)))
            graph = _ORT_PREDICTS[key] = OrtPredict(self.model, keys)
        self._graph = graph

    def _run_predict(self, lane: _Lane, k: int) -> torch.Tensor:
        """The model's logits ``K x 2 x h x w`` for ``lane``'s current frame (ONNX Runtime
        decoder where it runs, else torch)."""
        feats = self.model.expand_features(lane.feats, k)
        if self._graph is not None:
            logits = self._graph(feats, lane.state)
            if logits is not None:
                return logits
        with autocast(self.device, self.precision):
            return self.model.predict(self._expand_img(lane.image, k), feats, lane.state)

    @staticmethod
    def _expand_img(x: torch.Tensor, k: int) -> torch.Tensor:
        return x.expand(k, *x.shape[1:])

    def _predict(self, image: np.ndarray) -> torch.Tensor:
        """Per-object foreground ``K x 1 x h x w`` at the base (scale 1.0) size, scales
        upsampled to it and averaged."""
        base = self._base
        k = self._rows()
        out = []
        for lane in self._lanes:
            lane.image, lane.feats = self._encode(image, lane)
            logits = self._run_predict(lane, k)
            if self.adaptation is not None:
                logits = self.adaptation.correct(logits, lane.feats, self.object_ids,
                                                 self.model.appearance_features)
            x = logits[:, :, : lane.h, : lane.w].float()
            # the 2-way softmax's foreground: sigmoid(l1 - l0), ~10x faster on CPUs than a
            # softmax over the channel dimension (4.8 -> 0.5 ms at 480x854, one thread)
            p = torch.sigmoid(x[:, 1:2] - x[:, 0:1])
            out.append(self._resize(p, base))
        return out[0] if len(out) == 1 else torch.stack(out).mean(0)

    def _rows(self) -> int:
        """Rows of the lanes' states: the objects, plus their union (background_from_union)."""
        return len(self.object_ids) + int(self._union)

    def _merge(self, fg: torch.Tensor, union: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fg ``R x 1 x h x w`` -> (all ``(K+1) x h x w`` with background first, feedback
        ``R x 1 x h x w``). With ``union`` (default: the lanes hold a union row) the last
        row of ``fg`` is the network's output on the merged foreground: the background is
        one minus it (RGMP), and the union is fed back the merged foreground."""
        union = self._union if union is None else union
        p = fg[:, 0]
        if self.model.uses_soft_aggregation:
            if union:
                merged = soft_aggregate(p[:-1], background=1 - p[-1:])
                return merged, torch.cat([merged[1:], 1 - merged[:1]])[:, None]
            merged = soft_aggregate(p)
            return merged, merged[1:, None]
        bg = 1 - p.amax(0, keepdim=True) if len(p) else torch.ones_like(p[:1])
        return torch.cat([bg, p]), fg

    def _resize(self, x: torch.Tensor, lane: _Lane) -> torch.Tensor:
        """Probabilities ``N x 1 x h x w`` -> ``lane``'s size (bilinear; area-averaged when shrinking)."""
        if tuple(x.shape[-2:]) == (lane.h, lane.w):
            return x
        down = x.shape[-2] > lane.h or x.shape[-1] > lane.w
        return F.interpolate(x, (lane.h, lane.w), mode="bilinear", antialias=down, align_corners=False)

    def _to_lane(self, x: torch.Tensor, lane: _Lane) -> torch.Tensor:
        """Source-resolution masks ``N x 1 x H x W`` -> lane resolution (area-averaged)."""
        if tuple(x.shape[-2:]) == (lane.h, lane.w):
            return x
        return F.interpolate(x, (lane.h, lane.w), mode="bilinear", antialias=True, align_corners=False)

    @staticmethod
    def _pad(x: torch.Tensor, lane: _Lane) -> torch.Tensor:
        if (lane.ph, lane.pw) == (lane.h, lane.w):
            return x
        return F.pad(x, (0, lane.pw - lane.w, 0, lane.ph - lane.h))

    def _feed_back(self, lane: _Lane, feedback: torch.Tensor) -> None:
        k = self._rows()
        fb = self._pad(self._resize(feedback, lane), lane)
        with autocast(self.device, self.precision):
            lane.state = self.model.update(
                self._expand_img(lane.image, k), self.model.expand_features(lane.feats, k), lane.state, fb)
        lane.image = lane.feats = None

    def _result(self, merged: torch.Tensor) -> FrameResult:
        """merged ``(K+1) x h x w`` at the base size -> FrameResult at the source size."""
        self._prev = merged[1:] if self.window else None
        h, w = self._src
        if tuple(merged.shape[-2:]) != (h, w):
            down = merged.shape[-2] > h
            merged = F.interpolate(merged[None], (h, w), mode="bilinear", antialias=down, align_corners=False)[0]
        winner = self._winner(merged).cpu().numpy()
        index = self._id_table()[winner]  # channel -> object id
        probs = (merged[1:] * 255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
        return FrameResult(index=index, probs=probs, object_ids=list(self.object_ids))

    @staticmethod
    def _winner(merged: torch.Tensor) -> torch.Tensor:
        """``merged.argmax(0)`` (the first maximum wins ties) as uint8 (int32 past 255
        objects), by K comparisons: 10-20x faster on CPUs than ``argmax(0)``/``max(0)``,
        whose reduction over the outer dimension is slow."""
        k = merged.shape[0]
        dtype = torch.uint8 if k <= 256 else torch.int32
        if k == 1:
            return torch.zeros(merged.shape[1:], dtype=dtype, device=merged.device)
        best, index = merged[0], None
        for c in range(1, k):
            gt = torch.gt(merged[c], best)
            if index is None:
                index = gt.to(dtype)
            else:
                index.mul_(gt.logical_not()).add_(gt.to(dtype), alpha=c)
            if c < k - 1:
                best = torch.maximum(best, merged[c])
        return index

    def _id_table(self) -> np.ndarray:
        """Channel -> object id lookup table (cached while the objects do not change)."""
        ids = tuple(self.object_ids)
        if self._lut[0] != ids or len(self._lut[1]) != len(ids) + 1:
            dtype = np.uint16 if max(ids, default=0) > 255 else np.uint8
            self._lut = (ids, np.array([0, *ids], dtype=dtype))
        return self._lut[1]

    def _empty_result(self) -> FrameResult:
        h, w = self._src
        return FrameResult(np.zeros((h, w), np.uint8), np.zeros((0, h, w), np.uint8), [])

    def _start_zero_shot(self, image: np.ndarray) -> FrameResult:
        if not self.model.supports_zero_shot:
            raise VostoolError(
                f"model '{self.model.name}' needs a first-frame mask (--mask); only rvos segments without one")
        k = self.max_objects or self.model.zero_shot_slots
        if k < 1:
            raise VostoolError(f"model '{self.model.name}' declares no zero-shot slots; give max_objects")
        for lane in self._lanes:
            lane.image, lane.feats = self._encode(image, lane)
            with autocast(self.device, self.precision):
                lane.state = self.model.init_state_zero_shot(lane.image, lane.feats, k)
        self.object_ids = list(range(1, k + 1))
        return self.step(image)


def propagate(
    prop: Propagator, frames: Iterable[Frame], first_mask: np.ndarray | None,
    mask_at: dict[int, np.ndarray] | None = None,
) -> Iterator[tuple[Frame, FrameResult]]:
    """The propagation loop: start on the first frame, step through the rest.

    mask_at: frame index -> ``H x W`` id mask of objects added or corrected at that frame.
    Yields ``(frame, result)`` as soon as each frame is segmented (nothing is held).
    """
    mask_at = mask_at or {}
    started = False
    for frame in frames:
        if not started:
            result = prop.start(frame.image, first_mask)
            started = True
            if frame.index in mask_at and first_mask is not None:
                result = prop.add_objects(frame.image, mask_at[frame.index])
        elif frame.index in mask_at:
            result = prop.add_objects(frame.image, mask_at[frame.index])
        else:
            result = prop.step(frame.image)
        yield frame, result
