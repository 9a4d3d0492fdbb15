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
  weights, its state dict, its attributes) is never changed and can go on training;
- on the CPU a resize of the input frame runs on uint8 (8x faster than on floats);
- the object index is found by K comparisons (``argmax(0)`` over the object dimension
  is 10-100x slower on CPUs), kept in uint8 and mapped to ids by a cached table;
- on CUDA: cuDNN autotuning, frames staged in pinned memory and copied asynchronously.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vostool.engine.device import (
    ThreadGovernor, autocast, configure_cpu, device_name, resolve_device, resolve_precision, threads_fixed,
)
from vostool.engine.adapt import Adaptation
from vostool.errors import VostoolError
from vostool.models.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from vostool.models.base import Features, State, VOSModel
from vostool.models.blocks import soft_aggregate
from vostool.types import Frame, FrameResult


_F = TypeVar("_F", bound=Callable[..., Any])


# -- inference copies of the backbones ------------------------------------------------------
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """Fold eval-mode ``bn`` (applied right after ``conv``) into ``conv``. False if it can't."""
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        return False
    if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
        return False
    with torch.no_grad():
        w = conv.weight.detach()
        scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        shift = -bn.running_mean.detach().double() * scale
        if bn.affine:
            gamma = bn.weight.detach().double()
            scale, shift = scale * gamma, shift * gamma + bn.bias.detach().double()
        bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
        new_w = (w.double() * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        conv.weight = nn.Parameter(new_w.contiguous(memory_format=_memory_format(w)), requires_grad=False)
        conv.bias = nn.Parameter((bias * scale + shift).to(w.dtype), requires_grad=False)
    return True


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _conv_bn_pairs(module: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent, conv name, bn name) of each BatchNorm2d that directly follows a Conv2d:
    consecutive entries of a Sequential, and torchvision ResNet's ``convN``/``bnN``."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    from vostool.models.backbones import ResNetBackbone

    for sub in module.modules():
        if isinstance(sub, nn.Sequential) and type(sub).forward is nn.Sequential.forward:
            names = list(sub._modules)
            for a, b in zip(names, names[1:]):
                yield sub, a, b
        if type(sub) in (BasicBlock, Bottleneck, ResNetBackbone):
            for i in (1, 2, 3):
                if f"conv{i}" in sub._modules and f"bn{i}" in sub._modules:
                    yield sub, f"conv{i}", f"bn{i}"


def fold_batchnorm(
    module: nn.Module, dtype: torch.dtype | None = None, fuse_activations: bool = False,
) -> nn.Module:
    """An inference copy of eval-mode ``module``: each BatchNorm2d right after a Conv2d is
    folded into it (replaced by ``nn.Identity``); with ``dtype`` the Conv2d/Linear weights
    are cast to it (what autocast would do on every call); with ``fuse_activations``
    (CPU) a Conv2d followed by ReLU/ReLU6 in a Sequential runs as one oneDNN call, kept
    only if it gives the same features as the unfused copy. ``module`` is not changed."""
    fused = copy.deepcopy(module).eval()
    for parent, conv_name, bn_name in list(_conv_bn_pairs(fused)):
        conv, bn = parent._modules[conv_name], parent._modules[bn_name]
        if conv is not None and bn is not None and _fold_into(conv, bn):
            parent._modules[bn_name] = nn.Identity()
    if dtype is not None:
        for sub in fused.modules():
            if type(sub) in (nn.Conv2d, nn.Linear):
                sub.weight.data = sub.weight.data.to(dtype)
                if sub.bias is not None:
                    sub.bias.data = sub.bias.data.to(dtype)
    for p in fused.parameters():
        p.requires_grad_(False)
    if fuse_activations and _ConvAct.available():
        candidate = _fuse_conv_act(copy.deepcopy(fused))
        if candidate is not None and _same_features(fused, candidate, dtype):
            fused = candidate
    return fused


class _ConvAct(nn.Module):
    """``act(conv(x))`` for ReLU/ReLU6 as one oneDNN convolution with a post-op (CPU
    only; elsewhere, or with autograd, the two modules run as before). The input is cast
    to the weights' dtype, as autocast would."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, attr: str, scalars: list[float]) -> None:
        super().__init__()
        self.conv, self.act, self.attr, self.scalars = conv, act, attr, scalars
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)

    @staticmethod
    def available() -> bool:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")

    @staticmethod
    def kind(conv: nn.Module, act: nn.Module) -> tuple[str, list[float]] | None:
        if type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            return None
        if type(act) is nn.ReLU:
            return "relu", []
        if type(act) is nn.ReLU6:
            return "hardtanh", [0.0, 6.0]
        if type(act) is nn.Hardtanh:
            return "hardtanh", [float(act.min_val), float(act.max_val)]
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        if x.device.type != "cpu" or w.device.type != "cpu" or torch.is_grad_enabled() or x.dim() != 4:
            return self.act(self.conv(x))
        if x.dtype != w.dtype:
            x = x.to(w.dtype)
        return torch.ops.mkldnn._convolution_pointwise(x, w, self.conv.bias, *self.args, self.attr,
                                                       self.scalars, "")


def _fuse_conv_act(module: nn.Module) -> nn.Module | None:
    """Replace [Conv2d, Identity*, ReLU/ReLU6] runs of plain Sequentials by :class:`_ConvAct`."""
    count = 0
    for sub in list(module.modules()):
        if not (isinstance(sub, nn.Sequential) and type(sub).forward is nn.Sequential.forward):
            continue
        names = list(sub._modules)
        for i, name in enumerate(names):
            conv = sub._modules[name]
            j = i + 1
            while j < len(names) and type(sub._modules[names[j]]) is nn.Identity:
                j += 1
            if j >= len(names):
                continue
            act = sub._modules[names[j]]
            kind = _ConvAct.kind(conv, act) if conv is not None and act is not None else None
            if kind is not None:
                sub._modules[name] = _ConvAct(conv, act, *kind)
                sub._modules[names[j]] = nn.Identity()
                count += 1
    return module if count else None


def _run_both(
    a: nn.Module, b: nn.Module, dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
    """Both inference copies' outputs on one small random input (``1 x C x 64 x 96``, in
    ``a``'s memory format, under autocast to ``dtype`` if given), as dicts of the same keys
    and shapes; None when ``b`` fails or its outputs do not match ``a``'s in keys or shapes."""
    try:
        first = next(m for m in a.modules() if isinstance(m, nn.Conv2d))
        p = next(a.parameters())
        x = torch.randn(1, first.in_channels, 64, 96, generator=torch.Generator().manual_seed(0)).to(p.device)
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast(device_type=p.device.type, dtype=dtype) if dtype is not None
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            ya, yb = a(x), b(x)
    except Exception:
        return None
    ya = ya if isinstance(ya, dict) else {"out": ya}
    yb = yb if isinstance(yb, dict) else {"out": yb}
    if ya.keys() != yb.keys() or any(ya[k].shape != yb[k].shape for k in ya):
        return None
    return ya, yb


def _same_features(a: nn.Module, b: nn.Module, dtype: torch.dtype | None) -> bool:
    """Whether two inference copies give the same outputs on a small random input."""
    both = _run_both(a, b, dtype)
    if both is None:
        return False
    ya, yb = both
    tol = 1e-4 if dtype is None else 3e-2
    return all(torch.allclose(ya[k].float(), yb[k].float(), rtol=tol, atol=tol) for k in ya)


def _relative_error(a: nn.Module, b: nn.Module) -> float:
    """Largest ``|a(x) - b(x)| / max|a(x)|`` over the outputs, on a small random input
    (fp32); NaN if the outputs do not match in keys or shapes or b fails."""
    both = _run_both(a, b)
    if both is None:
        return float("nan")
    ya, yb = both
    return max(float((ya[k].float() - yb[k].float()).abs().max() / ya[k].float().abs().max().clamp_min(1e-12))
               for k in ya)


def _fingerprint(module: nn.Module) -> int:
    """Changes when any weight or buffer is replaced or updated in place."""
    return hash(tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in
                      [*module.parameters(), *module.buffers()]))


#: ONNX Runtime copies by (id, fingerprint) of the original backbone (the last few)
_ORT_CACHE: dict[tuple[int, int], nn.Module] = {}


class _FastBackbones:
    """Swaps the model's backbones for folded inference copies while the engine runs.

    The copies are (re)built when the originals' weights change, so a model that goes on
    training between videos is always served its current weights.
    """

    def __init__(
        self, model: nn.Module, dtype: torch.dtype | None, memory_format: torch.memory_format | None,
        fuse_activations: bool = False, backend: str = "torch",
    ) -> None:
        self.model = model
        self.dtype, self.memory_format, self.fuse_activations = dtype, memory_format, fuse_activations
        #: "torch" or "onnxruntime" (the copies run by ONNX Runtime, fp32)
        self.backend = backend
        #: why a copy fell back from the asked backend to torch (empty: none did)
        self.fallbacks: list[str] = []
        self.copies: dict[int, tuple[int, nn.Module]] = {}
        self.depth = 0
        self.slots = self._scan()

    def _scan(self) -> list[tuple[nn.Module, str, nn.Module]]:
        """(parent, attribute, backbone) of every outermost Backbone of the model."""
        tops = [m for m in self.model.modules() if isinstance(m, Backbone)]
        inner = {id(c) for m in tops for c in m.modules() if c is not m}
        top_ids = {id(m) for m in tops if id(m) not in inner}
        return [(parent, name, child) for parent in self.model.modules()
                for name, child in parent._modules.items() if id(child) in top_ids]

    def refresh(self) -> None:
        """Build (or rebuild, if the weights changed) the inference copies."""
        if any(parent._modules.get(name) is not original for parent, name, original in self.slots):
            self.slots = self._scan()  # a backbone was replaced since
            self.copies.clear()
        with torch.inference_mode(False), torch.no_grad():
            for _, _, original in self.slots:
                fp = _fingerprint(original)
                cached = self.copies.get(id(original))
                if cached is None or cached[0] != fp:
                    fused = self._ort_copy(original) if self.backend == "onnxruntime" else None
                    if fused is None:
                        fused = fold_batchnorm(original, self.dtype, fuse_activations=self.fuse_activations)
                        if self.memory_format is not None:
                            fused = fused.to(memory_format=self.memory_format)
                    self.copies[id(original)] = (fp, fused)

    def _ort_copy(self, original: nn.Module) -> nn.Module | None:
        """The backbone's folded fp32 copy exported to ONNX Runtime, if it gives the same
        features as the torch copy (else None and a note in ``fallbacks``)."""
        from vostool.engine.backends import OrtBackbone, first_conv_in_channels

        key = (id(original), _fingerprint(original))
        if key in _ORT_CACHE:  # the same weights in another Propagator (segment: one per video)
            return _ORT_CACHE[key]
        folded = fold_batchnorm(original, None)
        try:
            ort_copy = OrtBackbone(folded, first_conv_in_channels(folded))
        except Exception as exc:  # an op the exporter or ONNX Runtime does not take
            self.fallbacks.append(f"{type(original).__name__}: export failed ({type(exc).__name__})")
            return None
        err = _relative_error(folded, ort_copy)
        if not err < 1e-3:  # other kernels and summation orders: ~1e-6 seen
            self.fallbacks.append(f"{type(original).__name__}: onnxruntime features differ from torch "
                                  f"(relative error {err:.1e})")
            return None
        while len(_ORT_CACHE) >= 4:
            _ORT_CACHE.pop(next(iter(_ORT_CACHE)))
        _ORT_CACHE[key] = ort_copy
        return ort_copy

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        if self.depth:  # nested call: already swapped
            self.depth += 1
            try:
                yield
            finally:
                self.depth -= 1
            return
        if any(id(c) not in self.copies or p._modules.get(n) is not c for p, n, c in self.slots):
            self.refresh()
        for parent, name, original in self.slots:
            parent._modules[name] = self.copies[id(original)][1]
        self.depth = 1
        try:
            yield
        finally:
            self.depth = 0
            for parent, name, original in self.slots:
                parent._modules[name] = original


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
            sets torch's thread count to it.
        backend: what runs the backbones: ``auto|torch|onnxruntime`` (see
            :func:`vostool.engine.backends.resolve_backend`; auto: ONNX Runtime for fp32
            on the CPU when it is installed).
        adapt: ``--adapt``: learn each video's objects from their given masks (a target
            model held by the :class:`~vostool.engine.adapt.Adaptation`, the model's
            weights untouched); None: the engine runs exactly as without it.
    """

    def __init__(
        self, model: VOSModel, device: str | torch.device = "auto", precision: str = "auto",
        size: int | None = 480, scales: Iterable[float] = (1.0,), channels_last: bool = True,
        max_objects: int | None = None, fold_batchnorm: bool = True, threads: int | None = None,
        backend: str = "auto", adapt: Adaptation | None = None,
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
        self.model = model.eval().to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        #: adapts the CPU thread count frame by frame (None: fixed or not on the CPU)
        self.governor: ThreadGovernor | None = None
        if self.device.type == "cpu":
            most = configure_cpu()
            if threads is not None:
                if threads < 1:
                    raise VostoolError("threads must be at least 1")
                torch.set_num_threads(int(threads))
            elif not threads_fixed() and most > 1:
                self.governor = ThreadGovernor(most)
            else:
                torch.set_num_threads(most)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed frame size: autotune once
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
        self._fast: _FastBackbones | None = None
        if fold_batchnorm or self.backend == "onnxruntime":
            cast = None
            if self.precision != "fp32" and self.device.type in ("cpu", "cuda"):
                cast = torch.float16 if self.precision == "fp16" else torch.bfloat16
            fast = _FastBackbones(self.model, cast, torch.channels_last if self.channels_last else None,
                                  fuse_activations=self.device.type == "cpu", backend=self.backend)
            self._fast = fast if fast.slots else None

    @property
    def inference_path(self) -> str:
        """Which inference path runs and why, in words (e.g. ``fp32 channels_last,
        backbones on onnxruntime 1.32 (folded fp32): no native bf16 ...``); the
        backbones' fallbacks are known after :meth:`start`."""
        from vostool.engine.backends import onnxruntime_version

        kind = {"fp32": "fp32 eager", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}[self.precision]
        layout = "channels_last" if self.channels_last else "NCHW"
        fast = self._fast
        if fast is not None and fast.backend == "onnxruntime":
            if fast.fallbacks:
                enc = f"backbones on torch (onnxruntime fallback: {'; '.join(fast.fallbacks)})"
            else:
                enc = f"backbones on onnxruntime {onnxruntime_version()} (BatchNorm folded, fp32)"
        elif fast is not None:
            enc = "backbones on torch (BatchNorm folded" + (
                ", conv+ReLU fused" if fast.fuse_activations else "") + ")"
        else:
            enc = "backbones on torch"
        return f"{kind} {layout}, {enc}: {self.backend_reason}"

    # -- public API -------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, image: np.ndarray, masks: np.ndarray | None = None) -> FrameResult:
        """Begin a video. image: ``H x W x 3`` uint8; masks: ``H x W`` int object ids
        (0 = background), or None for zero-shot models. Returns frame 0's result (the
        given mask itself in semi-supervised mode)."""
        if self._fast is not None:
            self._fast.refresh()  # the model's weights may have changed since the last video
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            feats = self.model.encode(x)
        return x, feats

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
            with autocast(self.device, self.precision):
                logits = self.model.predict(
                    self._expand_img(lane.image, k), self.model.expand_features(lane.feats, k), lane.state)
            if self.adaptation is not None:
                logits = self.adaptation.correct(logits, lane.feats, self.object_ids,
                                                 self.model.appearance_features)
            p = torch.softmax(logits[:, :, : lane.h, : lane.w].float(), dim=1)[:, 1:2]
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
