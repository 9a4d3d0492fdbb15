"""The engine's speed work keeps its behaviour: BatchNorm folded into inference copies of
the backbones gives the same masks, and the model itself is never changed."""

from __future__ import annotations

import numpy as np
import torch

from vostool.bench.synthetic import SyntheticClip
from vostool.engine import Propagator
from vostool.engine.device import available_cpus, configure_cpu
from vostool.engine.fastpath import fold_batchnorm
from vostool.models import build_model


def _randomise_bn(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)


def test_fold_batchnorm_matches_and_leaves_the_original():
    from vostool.models.backbones import build_backbone

    for name in ("mobilenet_v2", "resnet18"):
        net = build_backbone(name).eval()
        _randomise_bn(net)
        fused = fold_batchnorm(net)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
        x = torch.randn(1, 3, 64, 96)
        with torch.no_grad():
            a, b = net(x), fused(x)
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-4), (name, k)
        assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == n_bn


def test_conv_activation_fusion_matches():
    from vostool.engine.fastpath import _ConvAct
    from vostool.models.backbones import build_backbone

    net = build_backbone("mobilenet_v2").eval()
    _randomise_bn(net)
    for dtype in (None, torch.bfloat16):
        plain = fold_batchnorm(net, dtype)
        fused = fold_batchnorm(net, dtype, fuse_activations=True)
        # Whether the fused path is taken depends on the CPU and the torch build (oneDNN
        # refuses bf16 post-op convolutions without native bf16): never require it, only
        # that whatever copy the engine chose gives the plain copy's features.
        x = torch.randn(1, 3, 64, 96)
        ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.no_grad()
        with torch.inference_mode(), ctx:
            a, b = plain(x), fused(x)
        tol = 1e-4 if dtype is None else 3e-2
        for k in a:
            assert b[k].dtype == a[k].dtype
            assert torch.allclose(a[k].float(), b[k].float(), rtol=tol, atol=tol), (dtype, k)


def _run(model, fold, precision="fp32", objects=2):
    clip = SyntheticClip(72, 128, objects=objects)
    prop = Propagator(model, device="cpu", precision=precision, size=64, fold_batchnorm=fold)
    out = [prop.start(clip.frame(0), clip.first_mask())]
    out += [prop.step(clip.frame(i)) for i in range(1, 5)]
    return out


def test_engine_same_results_with_folded_backbone_and_model_untouched():
    torch.manual_seed(0)
    model = build_model("crvos")
    _randomise_bn(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = model.encoder
    plain, fast = _run(model, False), _run(model, True)
    for a, b in zip(plain, fast):
        assert a.object_ids == b.object_ids
        assert np.abs(a.probs.astype(int) - b.probs.astype(int)).max() <= 1
        assert (a.index != b.index).mean() < 0.05  # random weights: near-ties may flip
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert model.encoder is encoder  # swapped back after every call


def test_folded_copy_follows_training_between_videos():
    torch.manual_seed(0)
    model = build_model("crvos")
    clip = SyntheticClip(72, 128)
    prop = Propagator(model, device="cpu", precision="fp32", size=64)
    prop.start(clip.frame(0), clip.first_mask())
    first = prop.step(clip.frame(1)).probs.copy()
    # "training": the weights change in place, as an optimizer step does
    model.train()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(1.5)
    model.eval()
    prop.start(clip.frame(0), clip.first_mask())
    second = prop.step(clip.frame(1)).probs
    reference = _run(model, False, objects=1)[1].probs
    assert np.abs(second.astype(int) - reference.astype(int)).max() <= 1
    assert not np.array_equal(first, second)


def test_bf16_with_precast_weights_runs():
    model = build_model("crvos")
    out = _run(model, True, precision="bf16")
    assert all(r.index.dtype == np.uint8 for r in out)
    assert all(set(np.unique(r.index)) <= {0, 1, 2} for r in out)


def test_ids_above_255_and_uncontiguous():
    model = build_model("crvos")
    clip = SyntheticClip(48, 80, objects=2)
    mask = clip.first_mask().astype(np.int32)
    mask[mask == 1] = 300
    mask[mask == 2] = 7
    prop = Propagator(model, device="cpu", precision="fp32", size=32)
    r0 = prop.start(clip.frame(0), mask)
    assert r0.index.dtype == np.uint16 and set(np.unique(r0.index)) <= {0, 7, 300}
    r1 = prop.step(clip.frame(1))
    assert r1.index.dtype == np.uint16 and set(np.unique(r1.index)) <= {0, 7, 300}


def test_cpu_configuration():
    assert available_cpus() >= 1
    assert configure_cpu() >= 1


def test_configure_torch_is_where_the_process_settings_are_made(monkeypatch):
    """The engine's process-wide torch settings (threads, denormals, cuDNN autotuning) are
    made by one function, device.configure_torch, which the Propagator calls."""
    import pytest

    from vostool.engine.device import ThreadGovernor, configure_torch
    from vostool.errors import VostoolError

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("VOSTOOL_THREADS", raising=False)
        assert configure_torch(torch.device("cpu"), threads=1) is None and torch.get_num_threads() == 1
        with pytest.raises(VostoolError, match="at least 1"):
            configure_torch(torch.device("cpu"), threads=0)
        gov = configure_torch(torch.device("cpu"))
        assert (gov is None) == (configure_cpu() == 1)
        assert gov is None or (isinstance(gov, ThreadGovernor) and gov.max == configure_cpu())
        monkeypatch.setenv("VOSTOOL_THREADS", "1")  # a fixed count: no governor
        assert configure_torch(torch.device("cpu")) is None
        assert configure_torch(torch.device("meta")) is None  # other devices: nothing to set
    finally:
        torch.set_num_threads(before)


def _simulate(gov, cost, frames):
    seen = []
    for i in range(frames):
        gov.begin()
        n = torch.get_num_threads()
        seen.append(n)
        gov.end(cost(n, i))
    return seen


def test_thread_governor_keeps_all_cores_on_a_quiet_cpu():
    from vostool.engine.device import ThreadGovernor

    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(2)
        seen = _simulate(gov, lambda n, i: 0.036 if n == 2 else 0.055, 400)
        assert gov.best == 2
        assert seen.count(1) < 0.06 * len(seen)  # probes back off
        assert gov.interval[1] > ThreadGovernor.BASE_INTERVAL
    finally:
        torch.set_num_threads(before)


def test_thread_governor_drops_threads_on_a_loaded_cpu_and_comes_back():
    from vostool.engine.device import ThreadGovernor

    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(2)
        loaded = lambda n, i: 1.5 if n == 2 else 0.055  # noqa: E731
        seen = _simulate(gov, loaded, 200)
        assert gov.best == 1
        assert seen[:10].count(1) >= 5  # switched within a few frames
        assert seen.count(2) < 15  # a losing probe stops after one slow frame
        quiet = lambda n, i: 0.036 if n == 2 else 0.055  # noqa: E731
        _simulate(gov, quiet, 2 * ThreadGovernor.MAX_INTERVAL)
        assert gov.best == 2
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_have_no_governor(monkeypatch):
    before = torch.get_num_threads()
    try:
        prop = Propagator(build_model("crvos"), device="cpu", precision="fp32", size=32, threads=1)
        assert prop.governor is None and torch.get_num_threads() == 1
        monkeypatch.setenv("VOSTOOL_THREADS", "1")
        assert Propagator(build_model("crvos"), device="cpu", precision="fp32", size=32).governor is None
    finally:
        torch.set_num_threads(before)


def test_winner_is_argmax_with_ties():
    g = torch.Generator().manual_seed(0)
    for k in (1, 2, 3, 6):
        m = torch.softmax(torch.randn(k, 37, 53, generator=g) * 3, 0)
        m[:, :5] = 1.0 / k  # exact ties: the first channel wins, as argmax
        m[:, 5:9, :3] = torch.tensor([0.0] + [0.5] * (k - 1)).view(k, 1, 1) if k > 1 else 1.0
        got = Propagator._winner(m)
        assert got.dtype == torch.uint8
        assert torch.equal(got.long(), m.argmax(0)), k


def test_fast_path_seam_swaps_copies_in_and_back():
    """The BatchNorm-folding fast path lives behind one seam (fastpath.inference_copies):
    the copies are swapped in inside ``swapped()`` only; the model is left as it was."""
    import vostool.engine.propagator as propagator_module
    from vostool.engine.fastpath import FastBackbones, inference_copies

    assert propagator_module.fold_batchnorm is fold_batchnorm  # still importable from there
    model = build_model("crvos").eval()
    originals = dict(model.named_children())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_copies(model, torch.device("cpu"), "fp32", channels_last=False)
    assert isinstance(fast, FastBackbones) and fast.slots and fast.describe().startswith("backbones on torch")
    with fast.swapped():
        swapped = dict(model.named_children())
        assert any(swapped[n] is not originals[n] for n in originals)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for _, _, orig in fast.slots
                       for m in fast.copies[id(orig)][1].modules())
    assert dict(model.named_children()) == originals
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert inference_copies(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.device("cpu"), "fp32",
                            channels_last=False) is None  # no Backbone: nothing to swap


def test_thread_governor_does_not_time_a_counts_first_frame():
    """The first frame at a thread count builds its ONNX Runtime sessions (and warms caches):
    a slow first frame at two threads must not make one thread look faster."""
    from vostool.engine.device import ThreadGovernor

    before = torch.get_num_threads()
    try:
        gov = ThreadGovernor(2)
        firsts: set[int] = set()

        def cost(n, i):
            if n not in firsts:
                firsts.add(n)
                return 1.0  # session creation and the decoder's export
            return 0.087 if n == 2 else 0.150

        seen = _simulate(gov, cost, 100)
        assert gov.best == 2 and seen.count(2) > 0.9 * len(seen)
    finally:
        torch.set_num_threads(before)
