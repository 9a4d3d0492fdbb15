"""Registry, backbones, shared blocks and CRVOS: built, run forward and backward, saved and reloaded."""

from __future__ import annotations

import json

import pytest
import torch

from vostool.errors import VostoolError
from vostool.models import (
    build_backbone, build_model, list_backbones, list_models, load_model, read_checkpoint, save_checkpoint,
)
from vostool.models.blocks import ConvLSTMCell, coord_maps, soft_aggregate


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_strides_and_channels(name):
    bb = build_backbone(name, extra_in_channels=1).eval()
    x = torch.randn(1, 4, 64, 96)
    with torch.no_grad():
        feats = bb(x)
    for key, stride in (("s4", 4), ("s8", 8), ("s16", 16)):
        assert feats[key].shape == (1, bb.channels[key], 64 // stride, 96 // stride)


def test_mobilenet_v2_s32_same_parameters_strided_last_blocks():
    """``mobilenet_v2_s32`` holds the dilated backbone's parameters (a file of one loads into the
    other strictly) and returns s16 on the same 1/16 grid, also where that grid is odd; its last
    blocks run at 1/32 (two strided 3x3 convolutions in the stride-16 stage), so s16 differs."""
    dil, s32 = build_backbone("mobilenet_v2").eval(), build_backbone("mobilenet_v2_s32").eval()
    assert dil.state_dict().keys() == s32.state_dict().keys()
    s32.load_state_dict(dil.state_dict(), strict=True)
    strides = [m.stride for m in s32.stage16.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert strides.count((2, 2)) == 2  # block 7 (1/8 -> 1/16) and block 14 (1/16 -> 1/32)
    for h, w in ((240, 432), (64, 96), (80, 112)):  # 1/16 grids 15x27 (odd), 4x6, 5x7 (odd)
        x = torch.randn(1, 3, h, w)
        with torch.no_grad():
            a, b = dil(x), s32(x)
        for key in ("s4", "s8"):
            assert torch.equal(a[key], b[key])
        assert b["s16"].shape == a["s16"].shape == (1, 320, -(-h // 16), -(-w // 16))
        assert (a["s16"] - b["s16"]).abs().max() > 0.1 * a["s16"].abs().max()  # (random weights: tiny maps)


def test_mobilenet_v2_s32_lateral_starts_as_s32_and_learns():
    """The lateral connection starts at zero (the strided backbone's function exactly) and is
    trained with the s16 stage: a loss on s16 gives its weights a gradient."""
    torch.manual_seed(0)
    s32, lat = build_backbone("mobilenet_v2_s32").eval(), build_backbone("mobilenet_v2_s32_lateral").eval()
    missing = lat.load_state_dict(s32.state_dict(), strict=False).missing_keys
    assert sorted(missing) == sorted(lat.new_at_init) == ["lateral.bias", "lateral.weight"]
    assert any(m is lat.lateral for m in lat.stages()["s16"])
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        assert torch.equal(lat(x)["s16"], s32(x)["s16"])
    lat(x)["s16"].square().sum().backward()
    assert lat.lateral.weight.grad.abs().sum() > 0


def test_coord_maps_ranges():
    c = coord_maps(2, 5, 7)
    assert c.shape == (2, 3, 5, 7)
    assert c[0, 0, 0, 0] == -1 and c[0, 0, -1, 0] == 1          # y from top to bottom
    assert c[0, 1, 0, 0] == -1 and c[0, 1, 0, -1] == 1          # x from left to right
    assert torch.isclose(c[0, 2, 2, 3], torch.tensor(-1.0))     # centre
    assert torch.isclose(c[0, 2, 0, 0], torch.tensor(1.0))      # corner


def test_soft_aggregation_math():
    p = torch.tensor([[0.9, 0.2, 0.5], [0.3, 0.2, 0.5]])  # 2 objects x 3 pixels
    agg = soft_aggregate(p)
    assert agg.shape == (3, 3)
    assert torch.allclose(agg.sum(0), torch.ones(3))
    # Pixel 0: odds bg=(1-0.9)/0.9, o1=9, o2=0.3/0.7 -> normalised odds
    odds = torch.tensor([0.1 / 0.9, 9.0, 0.3 / 0.7])
    assert torch.allclose(agg[:, 0], odds / odds.sum(), atol=1e-6)
    # Pixel 1: both objects unlikely -> background wins
    assert agg[:, 1].argmax() == 0
    # One object: bg odds (1-p)/p against p/(1-p): object = p^2 / (p^2 + (1-p)^2)
    one = soft_aggregate(torch.tensor([[0.25, 0.8]]))
    assert torch.allclose(one[1], torch.tensor([0.1, 0.64 / 0.68]), atol=1e-6)
    assert torch.allclose(one.sum(0), torch.ones(2))


def test_soft_aggregation_matches_the_softmax_of_logits_in_every_form():
    """RGMP's Eq. 1 as written (softmax over logit(p)) and the normalised odds vostool computes
    agree, also at the clamped extremes, with a given background, with gradients and in fp16."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 17, 19, generator=g)
    p[0, 0, :4] = torch.tensor([0.0, 1.0, 1e-9, 1 - 1e-9])
    bg = torch.rand(1, 17, 19, generator=g)

    def eq1(probs, background=None, eps=1e-7):
        b = 1 - probs.max(0, keepdim=True).values if background is None else background
        q = torch.cat([b, probs]).clamp(eps, 1 - eps).double()  # clamped in fp32, as the engine does
        return torch.softmax(torch.log(q) - torch.log1p(-q), 0)

    for background in (None, bg):
        want = eq1(p, background)
        got = soft_aggregate(p.clone(), background=background)
        assert got.dtype == torch.float32 and torch.allclose(got.double(), want, atol=1e-6)
        x = p.clone().requires_grad_(True)
        out = soft_aggregate(x, background=background)
        assert torch.allclose(out.double(), want, atol=1e-6)
        out[1:].sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        half = soft_aggregate(p.half(), background=None if background is None else background.half())
        assert half.dtype == torch.float16 and torch.isfinite(half).all()
        assert torch.allclose(half.double(), want, atol=5e-3)  # fp16 inputs: ~3e-3
    x = p.clone()
    soft_aggregate(x)
    assert torch.equal(x, p)  # the input is not changed


def test_convlstm_shapes_and_state():
    cell = ConvLSTMCell(4, 6)
    h, c = cell(torch.randn(2, 4, 5, 5))
    assert h.shape == c.shape == (2, 6, 5, 5)
    h2, _ = cell(torch.randn(2, 4, 5, 5), (h, c))
    assert not torch.equal(h, h2)


def test_registry_lists_crvos_and_rejects_unknown():
    assert "crvos" in [s.name for s in list_models()]
    with pytest.raises(VostoolError, match="unknown model 'nope'"):
        build_model("nope")
    with pytest.raises(VostoolError, match="unknown backbone"):
        build_model("crvos", backbone="vgg99")


@pytest.mark.parametrize("backbone", list_backbones())
def test_crvos_forward_backward(backbone):
    torch.manual_seed(0)
    model = build_model("crvos", backbone=backbone)
    frames = torch.randn(2, 3, 3, 32, 48)
    first = (torch.rand(2, 1, 32, 48) > 0.5).float()
    logits = model.forward_clip(frames, first)
    assert logits.shape == (2, 2, 2, 32, 48)
    target = torch.randint(0, 2, (2, 2, 32, 48))
    loss = model.loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    grad = model.predictor.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_checkpoint_round_trip_and_strictness(tmp_path):
    torch.manual_seed(0)
    model = build_model("crvos", backbone="resnet18").eval()
    path = save_checkpoint(model, tmp_path / "crvos.safetensors", extra={"size": 320})
    loaded = load_model("crvos", weights=path)
    assert loaded.config == json.loads(json.dumps(model.config))
    assert loaded.weights_info.meta["size"] == "320" and loaded.weights_info.inference_size == 320
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        f1, f2 = model.encode(x), loaded.encode(x)
        s = model.init_state(x, f1, torch.rand(1, 1, 32, 32))
        assert torch.equal(model.predict(x, f1, s), loaded.predict(x, f2, s))
    # fp16 export loads back too, with float32 parameters
    half = save_checkpoint(model, tmp_path / "half.safetensors", half=True)
    assert half.stat().st_size < path.stat().st_size * 0.6
    assert next(load_model("crvos", weights=half).parameters()).dtype == torch.float32

    from safetensors.torch import save_file
    state, meta = read_checkpoint(path)
    dropped = dict(state)
    dropped.pop(next(iter(dropped)))
    save_file(dropped, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(VostoolError, match="missing keys"):
        load_model("crvos", weights=tmp_path / "missing.safetensors")
    extra = dict(state, bogus=torch.zeros(1))
    save_file(extra, str(tmp_path / "extra.safetensors"), metadata=meta)
    with pytest.raises(VostoolError, match="unexpected keys"):
        load_model("crvos", weights=tmp_path / "extra.safetensors")
    with pytest.raises(VostoolError, match="weights not found"):
        load_model("crvos", weights=tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(VostoolError, match="cannot read weights"):
        load_model("crvos", weights=tmp_path / "junk.safetensors")
    with pytest.raises(VostoolError, match="trained with backbone"):
        load_model("crvos", weights=path, backbone="resnet50")
