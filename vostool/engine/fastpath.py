"""The engine's fast path: inference copies of a model's backbones.

What :class:`~vostool.engine.propagator.Propagator` runs instead of the model's own
backbones, behind one seam, :func:`inference_copies`, whose :class:`FastBackbones` swaps
the copies in while the engine runs (:meth:`FastBackbones.swapped`) and rebuilds them when
the originals' weights change:

- :func:`fold_batchnorm`: each BatchNorm2d right after a Conv2d folded into it, the
  convolution weights pre-cast to the autocast dtype, and on the CPU a convolution and
  the ReLU/ReLU6 after it run as one oneDNN call (kept only if the features match);
- with the ``onnxruntime`` backend, the folded fp32 copy exported to ONNX Runtime
  (:mod:`vostool.engine.backends`), kept only if its features match torch's.

The model object itself (weights, state dict, attributes) is never changed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn as nn

from vostool.models.backbones import Backbone


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


def fingerprint(module: nn.Module) -> int:
    """A hash of ``module``'s tensors that changes when any weight or buffer is replaced
    or updated in place."""
    return hash(tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in
                      [*module.parameters(), *module.buffers()]))


#: ONNX Runtime copies by (id, fingerprint) of the original backbone (the last few)
_ORT_CACHE: dict[tuple[int, int], nn.Module] = {}


class FastBackbones:
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
                fp = fingerprint(original)
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

        key = (id(original), fingerprint(original))
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

    def describe(self) -> str:
        """What runs the backbones, in words (the backend's fallbacks are known after
        :meth:`refresh`)."""
        if self.backend == "onnxruntime":
            if self.fallbacks:
                return f"backbones on torch (onnxruntime fallback: {'; '.join(self.fallbacks)})"
            from vostool.engine.backends import onnxruntime_version

            return f"backbones on onnxruntime {onnxruntime_version()} (BatchNorm folded, fp32)"
        return "backbones on torch (BatchNorm folded" + (", conv+ReLU fused" if self.fuse_activations else "") + ")"

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The model's backbones replaced by their copies inside the block (re-entrant),
        the originals put back on exit."""
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


def inference_copies(
    model: nn.Module, device: torch.device, precision: str, channels_last: bool, backend: str = "torch",
) -> FastBackbones | None:
    """The engine's fast path for ``model`` run on ``device``: its backbones' inference
    copies, built at the first :meth:`FastBackbones.refresh`.

    precision: the resolved ``fp32|fp16|bf16`` (autocast's dtype: the copies' weights are
    pre-cast to it on the CPU and CUDA). channels_last: the copies in NHWC. backend:
    ``torch`` or ``onnxruntime``. Returns None when the model has no :class:`Backbone`.
    """
    cast = None
    if precision != "fp32" and device.type in ("cpu", "cuda"):
        cast = torch.float16 if precision == "fp16" else torch.bfloat16
    fast = FastBackbones(model, cast, torch.channels_last if channels_last else None,
                         fuse_activations=device.type == "cpu", backend=backend)
    return fast if fast.slots else None
