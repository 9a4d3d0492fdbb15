"""GAM: the global attention math by hand, CAM and MEM, forward/backward per backbone,
the engine on a 2-object clip, constant memory over 500 frames, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vostool.engine.propagator import Propagator
from vostool.errors import VostoolError
from vostool.models import build_model, get_spec, list_models, load_model, save_checkpoint
from vostool.models.gam import (
    GAM, ChannelAttention, MaskEmbedding, distribute, global_context, update_global,
)

from synthetic import clip_forward_backward, two_squares_clip

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(key_dim=8, value_dim=16, embed_dim=8, decoder_channels=[16, 16, 8])


# -- the global attention module's math ------------------------------------------------
def test_global_attention_math_by_hand() -> None:
    torch.manual_seed(0)
    k, cn, cm, n = 2, 3, 4, 5
    fs = [torch.randn(k, cn, n, dtype=torch.float64) for _ in range(3)]   # F^T (channels first)
    ms = [torch.randn(k, cm, n, dtype=torch.float64) for _ in range(3)]
    a_hand = []
    for f, m in zip(fs, ms):
        a = global_context(f, m)
        assert a.shape == (k, cn, cm)
        hand = torch.zeros(k, cn, cm, dtype=torch.float64)
        for b in range(k):
            for i in range(cn):
                for j in range(cm):
                    hand[b, i, j] = sum(f[b, i, p] * m[b, j, p] for p in range(n))
        torch.testing.assert_close(a, hand)
        a_hand.append(hand)
    g, t = torch.zeros(k, cn, cm), torch.zeros(k)
    for a in a_hand:
        g, t = update_global(g, t, a)
    assert torch.equal(t, torch.full((k,), 3.0))
    torch.testing.assert_close(g, (sum(a_hand) / 3).float())
    # D = L_F G: N x C_N times C_N x C_M, here with channels first.
    q = torch.randn(k, cn, n)
    d = distribute(q, g)
    assert d.shape == (k, cm, n)
    torch.testing.assert_close(d, torch.stack([(q[b].T @ g[b]).T for b in range(k)]))


def test_channel_attention_eq4_to_7() -> None:
    torch.manual_seed(0)
    cam = ChannelAttention()
    with torch.no_grad():
        cam.alpha_raw.fill_(0.3)
    x = torch.randn(2, 4, 3, 2) * 0.5
    out = cam(x)
    alpha = torch.log1p(torch.exp(torch.tensor(0.3)))
    for b in range(2):
        f_in = x[b].reshape(4, 6).T                    # N x C
        r = f_in.T @ f_in / 6                          # Eq. 4: f1 f2, scaled by 1/N
        r_soft = torch.exp(r) / torch.exp(r).sum(0, keepdim=True)   # Eq. 5: sum over i
        f_r = f_in @ r_soft                            # Eq. 6
        want = alpha * f_r + f_in                      # Eq. 7
        torch.testing.assert_close(out[b].reshape(4, 6).T, want)
    with torch.no_grad():
        cam.alpha_raw.fill_(-50.0)
    assert cam.alpha >= 0


def test_channel_attention_is_not_one_hot_and_alpha_learns() -> None:
    """Issue 12, defect 2: unscaled, ``R = f f^T`` sums N products and the softmax of
    Eq. 5 is one-hot on features of realistic size (the shipped model's CAM input at
    480p: 128 channels, 30 x 54 positions, std ~0.6)."""
    torch.manual_seed(0)
    cam = ChannelAttention()
    x = torch.randn(1, 128, 30, 54) * 0.6 + 0.1 * torch.randn(1, 128, 1, 1)
    f = x.reshape(1, 128, -1)
    att = cam.attention(f)
    torch.testing.assert_close(att.sum(1), torch.ones(1, 128))
    assert float(att.max()) < 0.99
    raw = torch.softmax(torch.bmm(f, f.transpose(1, 2)), dim=1)  # Eq. 4-5 unscaled
    assert float(raw.max(1).values.mean()) > 0.99  # what the scaling fixes
    # The same weights at another input size (R is a mean over positions).
    att2 = cam.attention(torch.cat([f, f], dim=2))
    torch.testing.assert_close(att2, att)
    # alpha gets a gradient, and so does the attention (through f in Eq. 4).
    x.requires_grad_(True)
    out = cam(x)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    assert float(cam.alpha_raw.grad.abs()) > 0
    direct = g  # d/dx of the identity term
    assert float((x.grad - direct).abs().sum()) > 0


def test_mask_embedding_layers() -> None:
    mem = MaskEmbedding(8)
    convs = [m for m in mem.modules() if isinstance(m, torch.nn.Conv2d)]
    relus = [m for m in mem.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(convs) == 4 and len(relus) == 4
    assert convs[0].in_channels == 3 * 2 + 3   # three 2-channel masks + three coordinates
    assert mem(torch.rand(2, 6, 4, 5)).shape == (2, 8, 4, 5)


# -- the model -------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,size", [("mobilenet_v2", 64), ("resnet18", 64), ("resnet50", 32)])
def test_forward_backward(backbone: str, size: int) -> None:
    model = clip_forward_backward("gam", backbone, size)
    for p in (model.pred.weight, model.dec_in[0].weight, model.mem.layers[0][0].weight,
              model.key_proj.weight, model.cam.alpha_raw):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # Through time: the memory (mask encoder) gets a gradient.
    assert model.mask_encoder.layers[0][0].weight.grad.abs().sum() > 0


def test_bptt_through_fed_back_prediction() -> None:
    """Frame 2's output depends on frame 1's image only through frame 1's soft prediction
    fed back as memory and mask embedding: its gradient must reach frame 1 (eval mode: no batch-norm coupling)."""
    torch.manual_seed(0)
    model = build_model("gam", **SMALL).eval()
    frames = torch.randn(1, 3, 3, 32, 32, requires_grad=True)
    logits = model.forward_clip(frames, torch.rand(1, 1, 32, 32))
    (grad,) = torch.autograd.grad(logits[:, 1, 1].sum(), frames)
    assert grad[:, 1].abs().sum() > 0
    assert grad[:, 2].abs().sum() > 0


def test_paper_mask_encoder_resnet18() -> None:
    torch.manual_seed(0)
    model = build_model("gam", mask_backbone="resnet18", **SMALL).train()
    assert model.config["mask_backbone"] == "resnet18"
    logits = model.forward_clip(torch.randn(1, 3, 3, 32, 32), torch.rand(1, 1, 32, 32))
    logits.sum().backward()
    assert model.mask_encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(VostoolError):
        build_model("gam", mask_backbone="vgg")


def test_registry_and_config() -> None:
    assert "gam" in [s.name for s in list_models()]
    spec = get_spec("gam")
    assert "90.2" in spec.published and "28 FPS" in spec.published
    m = build_model("gam")
    assert isinstance(m, GAM)
    assert m.config == {"backbone": "mobilenet_v2", "key_dim": 64, "value_dim": 128, "embed_dim": 32,
                        "decoder_channels": [128, 64, 32], "mask_backbone": "small"}


def test_memory_is_running_mean_of_contexts() -> None:
    torch.manual_seed(0)
    model = build_model("gam", **SMALL).eval()
    imgs = torch.randn(3, 3, 32, 32)
    probs = torch.rand(3, 2, 1, 32, 32)
    with torch.inference_mode():
        feats = [model.encode(imgs[i:i + 1]) for i in range(3)]
        a = [model._context(imgs[i:i + 1], feats[i], probs[i][:1]) for i in range(3)]
        state = model.init_state(imgs[:1], feats[0], probs[0][:1])
        for i in (1, 2):
            state = model.update(imgs[i:i + 1], feats[i], state, probs[i][:1])
    torch.testing.assert_close(state["context"], (a[0] + a[1] + a[2]) / 3)
    assert state["count"].tolist() == [3.0]
    assert state["context"].dtype == torch.float32


def test_engine_two_objects() -> None:
    torch.manual_seed(0)
    model = build_model("gam", **SMALL)
    frames, first = two_squares_clip()
    prop = Propagator(model, device="cpu", precision="fp32", size=64)
    results = [prop.start(frames[0], first)] + [prop.step(f) for f in frames[1:]]
    for r in results:
        assert r.index.shape == first.shape
        assert set(np.unique(r.index)) <= {0, 3, 7}
        assert r.probs.dtype == np.uint8 and r.probs.shape == (2, *first.shape)
        assert r.object_ids == [3, 7]


def test_memory_constant_over_500_frames() -> None:
    torch.manual_seed(0)
    model = build_model("gam", **SMALL).eval()
    img = torch.randn(1, 3, 32, 32)
    k = 2
    with torch.inference_mode():
        feats = model.expand_features(model.encode(img), k)
        image = img.expand(k, -1, -1, -1)
        state = model.init_state(image, feats, torch.rand(k, 1, 32, 32))
        shapes = {n: v.shape for n, v in state.items()}
        numel = sum(v.numel() for v in state.values())
        for _ in range(500):
            logits = model.predict(image, feats, state)
            state = model.update(image, feats, state, torch.softmax(logits, 1)[:, 1:2])
            assert {n: v.shape for n, v in state.items()} == shapes
            assert sum(v.numel() for v in state.values()) == numel
    assert state["count"].tolist() == [501.0, 501.0]
    assert torch.isfinite(state["context"]).all()


def test_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("gam", **SMALL).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = load_model("gam", weights=path)
    assert loaded.config == model.config
    img = torch.randn(1, 3, 32, 32)
    masks = (torch.rand(1, 1, 32, 32) > 0.5).float()
    outs = []
    with torch.inference_mode():
        for m in (model, loaded):
            feats = m.encode(img)
            state = m.init_state(img, feats, masks)
            state = m.update(img, feats, state, masks)
            outs.append(m.predict(img, feats, state))
    assert torch.equal(outs[0], outs[1])

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    state.pop("cam.alpha_raw")
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken), metadata=meta)
    with pytest.raises(VostoolError, match="missing"):
        load_model("gam", weights=broken)
