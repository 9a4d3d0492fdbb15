"""CPU ISA reporting, backend choice and the ONNX Runtime frame encoder (issue 17).

Never asserts which path a given CPU takes: the choice is tested with the CPU's answers
monkeypatched, and ONNX Runtime's masks are compared with torch's where it is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from vostool.bench import benchmark
from vostool.bench.synthetic import SyntheticClip
from vostool.engine import Propagator
from vostool.engine import backends, device as dev_mod
from vostool.errors import VostoolError
from vostool.models import build_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("flags, level", [
    ({"sse4_1"}, "SSE4.1"),
    ({"avx", "avx2", "fma"}, "AVX2"),
    ({"avx2", "fma", "avx512f", "avx512bw"}, "AVX-512"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"}, "AVX-512 BF16"),
    ({"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_bf16", "amx_tile"}, "AMX"),
    (set(), None),
])
def test_hardware_isa_levels(flags, level):
    assert dev_mod._hardware_isa(flags) == level


def test_isa_cap_is_honoured(monkeypatch):
    monkeypatch.setattr(dev_mod, "cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512_bf16"})
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = dev_mod.cpu_isa()
    assert info["hardware"] == "AVX-512 BF16" and info["effective"] == "AVX2"
    assert info["summary"].startswith("AVX2 (capped by ONEDNN_MAX_CPU_ISA=AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")  # a cap above the CPU changes nothing
    assert dev_mod.cpu_isa()["effective"] == "AVX-512 BF16"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    info = dev_mod.cpu_isa()
    assert info["effective"] == "AVX-512 BF16" and "capped" not in info["summary"]
    assert "native bf16:" in info["summary"]


def test_backend_choice(monkeypatch):
    monkeypatch.setattr(backends, "onnxruntime_version", lambda: "1.0")
    assert backends.resolve_backend("auto", CPU, "fp32")[0] == "onnxruntime"
    assert backends.resolve_backend("auto", CPU, "bf16")[0] == "torch"  # native bf16 CPUs keep bf16
    assert backends.resolve_backend("auto", torch.device("cuda"), "fp16")[0] == "torch"
    assert backends.resolve_backend("torch", CPU, "fp32") == ("torch", "--backend torch")
    assert backends.resolve_backend("onnxruntime", CPU, "fp32")[0] == "onnxruntime"
    with pytest.raises(VostoolError, match="fp32"):
        backends.resolve_backend("onnxruntime", CPU, "bf16")
    with pytest.raises(VostoolError, match="CPU only"):
        backends.resolve_backend("onnxruntime", torch.device("cuda"), "fp32")
    with pytest.raises(VostoolError, match="unknown backend"):
        backends.resolve_backend("tensorrt", CPU, "fp32")
    monkeypatch.setattr(backends, "onnxruntime_version", lambda: None)
    backend, why = backends.resolve_backend("auto", CPU, "fp32")
    assert backend == "torch" and "pip install onnxruntime onnx" in why
    with pytest.raises(VostoolError, match="pip install onnxruntime onnx"):
        backends.resolve_backend("onnxruntime", CPU, "fp32")


def test_bench_reports_isa_backend_and_path():
    r = benchmark("crvos", random_weights=True, device="cpu", size=32, frames=2, warmup=1, end_to_end=False,
                  backend="torch")
    assert r.backend == "torch" and r.cpu_isa and "native bf16" in r.cpu_isa
    assert r.inference_path.startswith(("fp32 eager", "bf16 autocast")) and "--backend torch" in r.inference_path
    d = r.to_dict()
    assert d["backend"] == "torch" and d["inference_path"] == r.inference_path and d["cpu_isa"] == r.cpu_isa
    from vostool.bench import conditions_lines

    text = "\n".join(conditions_lines([r]))
    assert "CPU ISA:" in text and "inference path:" in text


def _run(model: torch.nn.Module, backend: str, objects: int = 2) -> tuple[list, Propagator]:
    clip = SyntheticClip(48, 80, objects=objects)
    prop = Propagator(model, device="cpu", precision="fp32", size=48, backend=backend, threads=1)
    out = [prop.start(clip.frame(0), clip.first_mask())]
    out += [prop.step(clip.frame(i)) for i in range(1, 5)]
    return out, prop


@pytest.mark.parametrize("name, backbone", [
    ("crvos", None), ("crvos", "mobilenet_v2_s32"), ("crvos", "mobilenet_v2_s32_lateral"), ("rgmp", "resnet18"),
])
def test_onnxruntime_backbones_give_torch_masks(name, backbone):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_model(name, **({"backbone": backbone} if backbone else {}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref, _ = _run(model, "torch")
    got, prop = _run(model, "onnxruntime")
    assert prop.backend == "onnxruntime" and "onnxruntime" in prop.inference_path
    assert "fallback" not in prop.inference_path
    for a, b in zip(ref, got):
        assert a.object_ids == b.object_ids
        assert np.abs(a.probs.astype(int) - b.probs.astype(int)).max() <= 1
        assert (a.index != b.index).mean() < 0.01
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model itself is untouched


def test_onnxruntime_thread_counts_and_channels_last():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from vostool.engine.fastpath import fold_batchnorm
    from vostool.models.backbones import build_backbone

    folded = fold_batchnorm(build_backbone("mobilenet_v2").eval())
    ort_bb = backends.OrtBackbone(folded, 3)
    x = torch.randn(2, 3, 64, 112)
    with torch.inference_mode():
        ref = folded(x)
        before = torch.get_num_threads()
        try:
            outs = []
            for n in (1, 2):
                torch.set_num_threads(n)
                outs.append(ort_bb(x.contiguous(memory_format=torch.channels_last)))
        finally:
            torch.set_num_threads(before)
    assert set(ort_bb._sessions) == {1, 2}
    for out in outs:
        assert out.keys() == ref.keys()
        for k in ref:
            assert out[k].shape == ref[k].shape
            assert out[k].is_contiguous(memory_format=torch.channels_last)
            assert torch.allclose(out[k], ref[k], rtol=1e-3, atol=1e-3 * float(ref[k].abs().max()))


def test_unknown_backend_is_one_line_error():
    with pytest.raises(VostoolError, match="unknown backend"):
        Propagator(build_model("crvos"), device="cpu", backend="nope")


def test_segment_backend_errors_before_any_output(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from test_io_helpers import make_video
    from vostool.cli.app import app
    from vostool.io.masks import save_index_png

    video = make_video(tmp_path / "clip.mp4", n=3)
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 10:20] = 1
    save_index_png(tmp_path / "first.png", mask)
    monkeypatch.setattr(backends, "onnxruntime_version", lambda: None)  # as where it is not installed
    for extra, words in ((["--backend", "nope"], "unknown backend"),
                         (["--backend", "onnxruntime", "--device", "cpu"], "pip install onnxruntime onnx")):
        out = tmp_path / "out"
        r = CliRunner().invoke(app, ["segment", str(video), "--mask", str(tmp_path / "first.png"), "--out", str(out),
                                     *extra])
        assert r.exit_code != 0 and words in r.output and "Traceback" not in r.output
        assert not out.exists()


def test_onnxruntime_decoder_matches_torch_and_follows_the_weights():
    """crvos declares graph_state_keys: its decoder runs as an ONNX Runtime graph whose
    logits equal torch's, rebuilt when the weights change between videos."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    model = build_model("crvos").eval()
    feats = {"s4": torch.randn(2, 24, 12, 20), "s8": torch.randn(2, 32, 6, 10), "s16": torch.randn(2, 320, 3, 5)}
    state = {"clue_mask": torch.softmax(torch.randn(2, 2, 3, 5), 1)}
    graph = backends.OrtPredict(model, model.graph_state_keys)
    with torch.inference_mode():
        ref = model.predict(torch.empty(0), feats, state)
        got = graph({k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}, state)
    assert got is not None and not graph.fallback
    assert got.shape == ref.shape == (2, 2, 48, 80)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))

    _, prop = _run(model, "onnxruntime")
    assert prop.inference_path.count("onnxruntime") >= 2 and "decoder on onnxruntime" in prop.inference_path
    first = prop._graph
    with torch.no_grad():
        model.predictor.bias.add_(1.0)  # the weights change between two videos
    ref2, _ = _run(model, "torch")
    got2, _ = _run(model, "onnxruntime")
    for a, b in zip(ref2, got2):
        assert np.abs(a.probs.astype(int) - b.probs.astype(int)).max() <= 1
    prop.start(SyntheticClip(48, 80, objects=2).frame(0), SyntheticClip(48, 80, objects=2).first_mask())
    assert prop._graph is not first  # the same Propagator re-exports for the new weights


def test_onnxruntime_decoder_falls_back_to_torch(monkeypatch):
    """A decoder that cannot be exported runs in torch, and the inference path says why."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    torch.manual_seed(0)
    model = build_model("crvos")
    ref, _ = _run(model, "torch")
    real_export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda module, *a, **k: broken() if isinstance(
        module, backends._PredictGraph) else real_export(module, *a, **k))
    got, prop = _run(model, "onnxruntime")
    assert "decoder on torch (decoder export failed (RuntimeError))" in prop.inference_path
    assert "backbones on onnxruntime" in prop.inference_path
    for a, b in zip(ref, got):
        assert np.abs(a.probs.astype(int) - b.probs.astype(int)).max() <= 1


def test_models_without_a_graph_keep_the_torch_decoder():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    _, prop = _run(build_model("gam"), "onnxruntime", objects=1)
    assert build_model("gam").graph_state_keys is None
    assert prop._graph is None and "decoder" not in prop.inference_path


@pytest.mark.parametrize("cin,bias,multiple", [(133, True, 8), (34, False, 8), (66, True, 16), (9, True, 8)])
def test_channel_padded_convolution_is_the_same_convolution(cin, bias, multiple):
    """Zero input channels with zero weights change nothing: the padded copy gives the
    convolution's own output, and the original keeps its weights."""
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, 16, 3, padding=1, bias=bias)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    padded = backends._ChannelPaddedConv(conv, multiple)
    assert padded.conv.in_channels % multiple == 0 and padded.conv.in_channels - cin < multiple
    x = torch.randn(2, cin, 9, 11)
    with torch.no_grad():
        assert torch.allclose(padded(x), conv(x), rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, conv.state_dict()[k]) for k, v in before.items())


def test_onnxruntime_decoder_graph_has_blocked_channels_and_leaves_the_model_as_it_was(monkeypatch):
    """crvos's refine convolutions read 128 + 5, 64 + 2 and 32 + 2 channels: the exported
    graph reads them padded to the channel block, and the model keeps its own modules."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    monkeypatch.setattr(backends, "nchwc_block", lambda: 8)
    torch.manual_seed(0)
    model = build_model("crvos").eval()
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    feats = {"s4": torch.randn(1, 24, 12, 20), "s8": torch.randn(1, 32, 6, 10), "s16": torch.randn(1, 320, 3, 5)}
    state = {"clue_mask": torch.softmax(torch.randn(1, 2, 3, 5), 1)}
    graph = backends.OrtPredict(model, model.graph_state_keys)
    with torch.inference_mode():
        ref = model.predict(torch.empty(0), feats, state)
        got = graph(feats, state)
    assert got is not None and torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)} == convs
    (proto_bytes,) = graph._graphs.values()
    proto = onnx.load_from_string(proto_bytes)
    weights = {t.name: list(t.dims) for t in proto.graph.initializer}
    in_channels = sorted(weights[n.input[1]][1] for n in proto.graph.node
                         if n.op_type == "Conv" and n.input[1] in weights)
    assert all(c % 8 == 0 for c in in_channels if c > 8), in_channels
    assert {40, 72, 136} <= set(in_channels)
