"""Inference backends for the models' frame encoders (backbones) and decoders: torch or ONNX Runtime.

The frame encoder is most of a frame's time on a CPU. With ``torch`` it runs as the
engine's folded inference copy (oneDNN; bf16 autocast where the CPU computes bf16
natively). With ``onnxruntime`` (optional: ``pip install vostool[onnx]``) the same folded
fp32 copy is exported to ONNX once per model and run by ONNX Runtime's CPU kernels
(MLAS), which are about 2x faster than oneDNN fp32 on MobileNetV2-style depthwise
networks. A model whose ``predict`` is a pure tensor function of its features and some
state tensors (:attr:`VOSModel.graph_state_keys`: crvos) has its decoder exported too
(:class:`OrtPredict`, one graph per input shape, its convolutions padded to ONNX
Runtime's channel block); merging, the search window and resizing stay in torch.

``auto`` picks ``onnxruntime`` on CPUs without native bf16 when it is installed, and
``torch`` everywhere else (bf16 on CPUs with AVX-512 BF16 / AMX, CUDA, MPS).
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch
import torch.nn as nn

from vostool.errors import VostoolError
from vostool.models.backbones import Backbone

BACKENDS = ("auto", "torch", "onnxruntime")
# no square brackets: the CLI prints messages through rich, whose markup would eat "[onnx]"
ONNX_HINT = "pip install onnxruntime onnx, the vostool onnx extra"


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version, or None when it is not installed."""
    try:
        import onnxruntime
    except Exception:
        return None
    return str(getattr(onnxruntime, "__version__", "?"))


def resolve_backend(name: str, device: torch.device, precision: str) -> tuple[str, str]:
    """``(backend, why)`` for ``--backend NAME`` on a resolved device and precision.

    ``auto``: ``onnxruntime`` for fp32 on the CPU when it is installed, else ``torch``.
    An explicit ``onnxruntime`` needs the CPU, fp32 and the package (else a one-line
    error naming what to change). ``$VOSTOOL_BACKEND`` replaces ``auto`` (for commands
    without ``--backend``: eval, train's validation).
    """
    name = (name or "auto").lower()
    if name == "auto" and os.environ.get("VOSTOOL_BACKEND", "").strip():
        name = os.environ["VOSTOOL_BACKEND"].strip().lower()
    if name not in BACKENDS:
        raise VostoolError(f"unknown backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    ort = onnxruntime_version()
    if name == "torch":
        return "torch", "--backend torch"
    if name == "onnxruntime":
        if ort is None:
            raise VostoolError(f"--backend onnxruntime needs ONNX Runtime: {ONNX_HINT}")
        if device.type != "cpu":
            raise VostoolError(f"--backend onnxruntime runs on the CPU only (device is {device.type}); "
                               "use --device cpu or --backend torch")
        if precision != "fp32":
            raise VostoolError(f"--backend onnxruntime runs fp32 (precision is {precision}); "
                               "use --precision fp32 or auto")
        return "onnxruntime", "--backend onnxruntime"
    if device.type != "cpu":
        return "torch", f"{device.type}"
    if precision != "fp32":
        return "torch", f"{precision} autocast on a CPU with native bf16"
    if ort is None:
        return "torch", f"no native bf16; onnxruntime not installed ({ONNX_HINT} for ~2x faster encoders)"
    return "onnxruntime", "no native bf16 and onnxruntime is installed (its fp32 kernels beat oneDNN's)"


def ort_session(model_bytes: bytes, threads: int, profile_prefix: str | None = None) -> Any:
    """An ONNX Runtime CPU session of an exported graph with ``threads`` intra-op threads
    (with ``profile_prefix``, ONNX Runtime's profiler writes its JSON there: for
    ``scripts/profile_ort_graphs.py``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no busy-waiting between ops: on a CPU shared with decoding/writing threads
    # (or other programs) spinning threads steal the cores the work needs
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


class _Outputs(nn.Module):
    """A backbone with a tuple output in a fixed key order (what ONNX export takes)."""

    def __init__(self, backbone: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.backbone, self.keys = backbone, keys

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.backbone(x)
        return tuple(out[k] for k in self.keys)


class OrtBackbone(nn.Module):
    """A backbone run by ONNX Runtime on the CPU: ``B x C x H x W`` float32 ->
    ``{"s4", "s8", "s16"}`` float32 (any batch and size; NHWC output strides when the
    input had them). One session per thread count, so that the engine's
    :class:`~vostool.engine.device.ThreadGovernor` keeps working."""

    def __init__(self, backbone: nn.Module, in_channels: int) -> None:
        super().__init__()
        import onnxruntime  # noqa: F401  (fails here, before any export, where it is not installed)

        self.channels = dict(backbone.channels) if isinstance(backbone, Backbone) else {}
        probe = torch.zeros(1, in_channels, 64, 96)
        with torch.inference_mode(False), torch.no_grad():
            self.keys = sorted(backbone(probe).keys())
            buf = io.BytesIO()
            with _quiet():
                torch.onnx.export(
                    _Outputs(backbone, self.keys).eval(), (probe,), buf, input_names=["x"],
                    output_names=self.keys, opset_version=17, dynamo=False,
                    dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}, **{k: {0: "b", 2: f"h_{k}", 3: f"w_{k}"}
                                                                     for k in self.keys}},
                )
        self.model_bytes = buf.getvalue()
        self._sessions: dict[int, Any] = {}

    def session(self, threads: int) -> Any:
        """The session that runs with ``threads`` intra-op threads (built on first use)."""
        sess = self._sessions.get(threads)
        if sess is None:
            sess = self._sessions[threads] = ort_session(self.model_bytes, threads)
        return sess

    @torch.compiler.disable  # ONNX Runtime is opaque to torch.compile (bench --compile): run it as is
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last)
        arr = x.detach().to(torch.float32).contiguous().numpy()
        outs = self.session(torch.get_num_threads()).run(None, {"x": arr})
        feats = {}
        for k, a in zip(self.keys, outs):
            t = torch.from_numpy(a)
            feats[k] = t.contiguous(memory_format=torch.channels_last) if channels_last else t
        return feats


class _PredictGraph(nn.Module):
    """``model.predict`` with positional tensor inputs (features, then state tensors),
    what ONNX export takes; the image is not an input (the model declares it unused)."""

    def __init__(self, model: nn.Module, feat_keys: list[str], state_keys: list[str]) -> None:
        super().__init__()
        self.model, self.feat_keys, self.state_keys = model, feat_keys, state_keys

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        n = len(self.feat_keys)
        feats = dict(zip(self.feat_keys, tensors[:n]))
        state = dict(zip(self.state_keys, tensors[n:]))
        return self.model.predict(torch.empty(0), feats, state)  # type: ignore[operator]


def nchwc_block() -> int:
    """The channel block of ONNX Runtime's blocked (NCHWc) CPU convolutions: 16 floats on
    CPUs with AVX-512, else 8 (AVX2). Convolutions whose input channels are not a multiple
    of it run on its slower im2col path. (Padding to it was measured on AVX2 only: see the
    README; on AVX-512 crvos's refine convolutions grow by 8-41% instead of 2-18%.)"""
    from vostool.engine.device import cpu_flags

    return 16 if "avx512f" in cpu_flags() else 8


class _ChannelPaddedConv(nn.Module):
    """``conv`` with its input padded by zero channels to a multiple of ``multiple`` and
    zero weights for them: the same output (the extra products are exact zeros), in a shape
    that ONNX Runtime runs on its blocked NCHWc kernels. x: ``N x C x H x W`` -> ``conv(x)``."""

    def __init__(self, conv: nn.Conv2d, multiple: int) -> None:
        super().__init__()
        cin = conv.in_channels
        self.pad = (-cin) % multiple
        self.conv = nn.Conv2d(cin + self.pad, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :cin] = conv.weight.detach().float()
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = x.new_zeros(x.shape[0], self.pad, x.shape[2], x.shape[3])
        return self.conv(torch.cat([x, zeros], 1))


class _channels_padded:
    """Inside the block, every dense ``Conv2d`` of ``model`` with more than ``multiple``
    input channels that are not a multiple of it is replaced by a
    :class:`_ChannelPaddedConv`; the originals are put back on exit (the model's weights
    are never changed). For exporting graphs only."""

    def __init__(self, model: nn.Module, multiple: int) -> None:
        self.swaps = [(parent, name, child) for parent in model.modules()
                      for name, child in parent._modules.items()
                      if type(child) is nn.Conv2d and child.groups == 1
                      and child.in_channels > multiple and child.in_channels % multiple]
        self.multiple = multiple

    def __enter__(self) -> None:
        for parent, name, conv in self.swaps:
            parent._modules[name] = _ChannelPaddedConv(conv, self.multiple)

    def __exit__(self, *exc: object) -> None:
        for parent, name, conv in self.swaps:
            parent._modules[name] = conv


class OrtPredict:
    """A model's ``predict`` run by ONNX Runtime on the CPU, fp32.

    ``model.predict`` must ignore its image and be a pure tensor function of the features
    and the state tensors ``state_keys`` (:attr:`VOSModel.graph_state_keys`). The graph is
    exported once per set of input shapes (a video's frames all have one) from the model's
    current weights, and kept only if its logits match torch's on that first input
    (relative error < 1e-3); otherwise :meth:`__call__` returns None from then on and
    :attr:`fallback` says why. One session per thread count (the thread governor).
    Convolutions whose input channels miss ONNX Runtime's channel block (:func:`nchwc_block`)
    are exported with zero channels added (:class:`_ChannelPaddedConv`: the same logits).
    """

    def __init__(self, model: nn.Module, state_keys: tuple[str, ...]) -> None:
        import onnxruntime  # noqa: F401  (fails here where it is not installed)

        self.model = model
        self.state_keys = list(state_keys)
        #: why the graph fell back to torch ("" while it has not)
        self.fallback = ""
        self._graphs: dict[tuple[Any, ...], bytes] = {}
        self._sessions: dict[tuple[tuple[Any, ...], int], Any] = {}

    def __call__(self, feats: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """feats: ``K x C x h x w`` maps (any layout); state: the model's state. Returns
        ``K x 2 x H x W`` float32 logits, or None when the graph is not usable."""
        if self.fallback:
            return None
        keys = sorted(feats)
        inputs = [feats[k] for k in keys] + [state[k] for k in self.state_keys]
        arrays = [t.detach().to(torch.float32).contiguous().numpy() for t in inputs]
        shape = (tuple(keys), *(a.shape for a in arrays))
        if shape not in self._graphs and not self._export(shape, keys, inputs):
            return None
        threads = torch.get_num_threads()
        sess = self._sessions.get((shape, threads))
        if sess is None:
            sess = self._sessions[(shape, threads)] = ort_session(self._graphs[shape], threads)
        return torch.from_numpy(sess.run(None, {f"in{i}": a for i, a in enumerate(arrays)})[0])

    def _export(self, shape: tuple[Any, ...], keys: list[str], inputs: list[torch.Tensor]) -> bool:
        graph = _PredictGraph(self.model, keys, self.state_keys).eval()
        try:
            with torch.inference_mode(False), torch.no_grad():
                args = tuple(t.detach().to(torch.float32).contiguous().clone() for t in inputs)
                buf = io.BytesIO()
                # decoder convolutions over concatenated features (e.g. crvos's 128 + 5
                # channels) padded to ONNX Runtime's channel block: its NCHWc kernels then
                # run them (crvos at 480x864: see scripts/profile_ort_graphs.py)
                with _quiet(), _channels_padded(self.model, nchwc_block()):
                    torch.onnx.export(graph, args, buf, input_names=[f"in{i}" for i in range(len(args))],
                                      output_names=["logits"], opset_version=17, dynamo=False)
                ref = graph(*args).float()
            sess = ort_session(buf.getvalue(), torch.get_num_threads())
            got = torch.from_numpy(sess.run(None, {f"in{i}": a.numpy() for i, a in enumerate(args)})[0])
        except Exception as exc:  # an op the exporter or ONNX Runtime does not take
            self.fallback = f"decoder export failed ({type(exc).__name__})"
            return False
        err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
        if not err < 1e-3:
            self.fallback = f"decoder logits differ from torch (relative error {err:.1e})"
            return False
        while len(self._graphs) >= 4:  # a few sizes (multi-scale lanes, eval's sequences)
            old = next(iter(self._graphs))
            del self._graphs[old]
            self._sessions = {k: v for k, v in self._sessions.items() if k[0] != old}
        self._graphs[shape] = buf.getvalue()
        self._sessions[(shape, torch.get_num_threads())] = sess
        return True


class _quiet:
    """Silence the exporter's deprecation warnings (the TorchScript exporter is the one
    that needs no extra packages)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def first_conv_in_channels(module: nn.Module) -> int:
    """Input channels of a backbone (its first Conv2d)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    raise VostoolError("backbone has no convolution")  # pragma: no cover


def check_backend(name: str, device: str | torch.device, precision: str) -> str:
    """Resolve ``--backend`` with ``--device`` and ``--precision`` before any work starts
    (a one-line :class:`VostoolError` for a bad combination); returns the backend."""
    from vostool.engine.device import resolve_device, resolve_precision

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return resolve_backend(name, dev, resolve_precision(precision, dev))[0]
