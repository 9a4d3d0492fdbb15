"""RGMP: forward/backward per backbone, the engine on a 2-object clip, constant state,
checkpoint round trip, registry entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vostool.engine.propagator import Propagator
from vostool.errors import VostoolError
from vostool.models import build_model, get_spec, list_models, load_model, save_checkpoint
from vostool.models.rgmp import RGMP, GlobalConvBlock

from synthetic import clip_forward_backward, two_squares_clip

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("backbone,size", [("mobilenet_v2", 64), ("resnet18", 64), ("resnet50", 32)])
def test_forward_backward(backbone: str, size: int) -> None:
    model = clip_forward_backward("rgmp", backbone, size)
    for p in (model.pred.weight, model.gc.left1.weight, model.refine4.out.conv2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # The extra (mask) input filter of the first convolution learns too.
    first = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad[:, 3:].abs().sum() > 0


def test_bptt_through_fed_back_prediction() -> None:
    """Frame 2's output depends on frame 1's image only through frame 1's soft prediction
    fed back as the guidance mask: its gradient must reach frame 1 (eval mode: no batch-norm coupling)."""
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 16]).eval()
    frames = torch.randn(1, 3, 3, 32, 32, requires_grad=True)
    logits = model.forward_clip(frames, torch.rand(1, 1, 32, 32))
    (grad,) = torch.autograd.grad(logits[:, 1, 1].sum(), frames)
    assert grad[:, 1].abs().sum() > 0
    assert grad[:, 2].abs().sum() > 0


def test_registry_and_config() -> None:
    assert "rgmp" in [s.name for s in list_models()]
    spec = get_spec("rgmp")
    assert "81.8" in spec.published and "Oh" in spec.paper
    m = build_model("rgmp")
    assert isinstance(m, RGMP) and m.config == {"backbone": "mobilenet_v2", "channels": [256, 128, 64],
                                                "gc_kernel": 7}
    assert m.encoder.channels["s16"] == 320
    # 4-channel Siamese encoder: the first convolution takes RGB + mask.
    first = next(mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.Conv2d))
    assert first.in_channels == 4
    with pytest.raises(VostoolError):
        build_model("rgmp", channels=[256, 128])


def test_global_conv_block_shapes() -> None:
    gc = GlobalConvBlock(8, 16, k=7)
    assert gc.left1.kernel_size == (7, 1) and gc.left2.kernel_size == (1, 7)
    assert gc.right1.kernel_size == (1, 7) and gc.right2.kernel_size == (7, 1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in gc.modules())
    assert gc(torch.randn(1, 8, 5, 3)).shape == (1, 16, 5, 3)


def test_reference_encoded_once_and_soft_guidance() -> None:
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 8]).eval()
    img = torch.randn(2, 3, 32, 32)
    masks = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        state = model.init_state(img, model.encode(img), masks)
        assert state["ref"].shape == (2, 320, 2, 2)
        probs = torch.rand(2, 1, 32, 32)  # soft, not binarised
        new = model.update(img, {}, state, probs)
        assert new["ref"] is state["ref"]
        assert torch.equal(new["guide"], probs)


def test_engine_two_objects_and_multiscale() -> None:
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 16])
    frames, first = two_squares_clip()
    # The default single scale over 6 frames, then the paper's multi-scale averaging.
    for scales, n in (((1.0,), 6), ((0.5, 1.0), 3)):
        prop = Propagator(model, device="cpu", precision="fp32", size=64, scales=scales)
        results = [prop.start(frames[0], first)] + [prop.step(f) for f in frames[1:n]]
        for r in results:
            assert r.index.shape == first.shape
            assert set(np.unique(r.index)) <= {0, 3, 7}
            assert r.probs.dtype == np.uint8 and r.probs.shape == (2, *first.shape)
            assert r.object_ids == [3, 7]


def test_state_size_constant() -> None:
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 16]).eval()
    img = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        feats = model.expand_features(model.encode(img), 2)
        state = model.init_state(img.expand(2, -1, -1, -1), feats, torch.rand(2, 1, 32, 32))
        shapes = {k: v.shape for k, v in state.items()}
        numel = sum(v.numel() for v in state.values())
        for _ in range(30):
            logits = model.predict(img.expand(2, -1, -1, -1), feats, state)
            state = model.update(img.expand(2, -1, -1, -1), feats, state, torch.softmax(logits, 1)[:, 1:2])
            assert {k: v.shape for k, v in state.items()} == shapes
            assert sum(v.numel() for v in state.values()) == numel


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 16]).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_model("rgmp", weights=path)
    assert loaded.config == model.config
    img = torch.randn(1, 3, 32, 32)
    masks = (torch.rand(1, 1, 32, 32) > 0.5).float()
    outs = []
    with torch.inference_mode():
        for m in (model, loaded):
            state = m.init_state(img, m.encode(img), masks)
            outs.append(m.predict(img, m.encode(img), state))
    assert torch.equal(outs[0], outs[1])

    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state.pop("pred.weight")
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=meta)
    with pytest.raises(VostoolError, match="missing"):
        load_model("rgmp", weights=broken)


def test_background_is_the_network_output_on_the_merged_foreground() -> None:
    """Issue 12, defect 4: RGMP's soft aggregation takes the background from the network
    run on the merged foreground (one extra object: the union), not ``1 - max_k p_k``."""
    from vostool.models.blocks import soft_aggregate

    assert RGMP.background_from_union is True
    assert [s.name for s in list_models() if s.cls.background_from_union] == ["rgmp"]
    torch.manual_seed(0)
    model = build_model("rgmp", channels=[32, 16, 16])
    frames, first = two_squares_clip()
    # window off: this test checks the merge alone (the search window crops after it)
    prop = Propagator(model, device="cpu", precision="fp32", size=None, fold_batchnorm=False, window=None)
    prop.start(frames[0], first)
    lane = prop._lanes[0]
    union0 = torch.from_numpy((first > 0).astype(np.float32))
    assert lane.state["guide"].shape[0] == 3  # objects 3 and 7, then their union
    assert torch.allclose(lane.state["guide"][2, 0, :60, :80], union0, atol=1e-5)
    for img in frames[1:3]:
        # What the step should compute: background = 1 - the union row's output.
        with torch.inference_mode():
            x, feats = prop._encode(img, lane)
            p = torch.softmax(model.predict(x.expand(3, -1, -1, -1), feats, lane.state), 1)[:, 1, :60, :80]
            want = soft_aggregate(p[:2], background=1 - p[2:])
            plain = soft_aggregate(p[:2])
        r = prop.step(img)
        assert np.array_equal(r.probs, prop._result(want).probs)
        assert not np.array_equal(r.probs, prop._result(plain).probs)
        # The union is fed back the merged foreground, each object its merged probability.
        g = lane.state["guide"][:, 0, :60, :80]
        assert torch.allclose(g[2], 1 - want[0], atol=1e-5) and torch.allclose(g[:2], want[1:], atol=1e-5)
    # An object added later restarts the union from the merged foreground there.
    extra = np.zeros_like(first)
    extra[40:55, 2:12] = 9
    r = prop.add_objects(frames[3], extra)
    assert r.object_ids == [3, 7, 9] and lane.state["guide"].shape[0] == 4
    assert lane.state["ref"].shape[0] == 4
    r = prop.step(frames[4])
    assert r.probs.shape == (3, *first.shape) and set(np.unique(r.index)) <= {0, 3, 7, 9}
    # One object: its union is itself, no extra run, the same as 1 - max_k p_k.
    prop = Propagator(model, device="cpu", precision="fp32", size=None, fold_batchnorm=False)
    prop.start(frames[0], (first == 3).astype(np.uint8) * 3)
    assert prop.states[0]["guide"].shape[0] == 1
