"""DTN: forward/backward of every loss per backbone, the engine on a 2-object clip, the
conditional anchors, the decision threshold switching streams, RoI paste-back geometry,
DIS flow and warping, checkpoint round trip, registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vostool.engine.propagator import Propagator
from vostool.errors import VostoolError
from vostool.models import VOSModel, build_model, get_spec, load_model, save_checkpoint
from vostool.models.dtn import DTN, conditional_anchors, decode_boxes, encode_boxes, mask_boxes, paste_masks
from vostool.models.flow import get_flow, warp

from synthetic import two_squares_clip

# Keeps the 4-level MRN, the RPN head and the DM cheap on CPU (defaults: the paper's sizes).
SMALL = {"roi_size": 32, "mrn_channels": [32, 32, 16, 16], "rpn_channels": 64, "dm_hidden": 64}


@pytest.mark.parametrize("backbone,size", [("mobilenet_v2", 64), ("resnet18", 64), ("resnet50", 32)])
def test_forward_backward_all_losses(backbone: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model("dtn", backbone=backbone, **SMALL).train()
    b = 1 if backbone == "resnet50" else 2  # the big backbone once, one sample
    frames = torch.randn(b, 3, 3, size, size)
    masks = torch.zeros(b, 3, size, size, dtype=torch.long)
    for t in range(3):
        masks[0, t, 4 + t:20 + t, 6:22] = 1
        masks[-1, t, 10:26, 8 + 2 * t:24 + 2 * t] = 1
    masks[-1, 2, :2] = 255
    losses = model.training_losses(frames, masks)
    assert set(losses) == {"mask", "dm", "rpn_cls", "rpn_reg", "total"}
    for name, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), name
    losses["total"].backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    for p in (model.decision[0].weight, model.rpn_cls.weight, model.rpn_reg.weight, model.mask_out.weight,
              model.guide[3][1].weight, model.refine[0].skip[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert next(model.encoder.parameters()).grad.abs().sum() > 0
    if backbone != "resnet18":
        return
    # The generic trainer path (forward_clip + loss) adds L_DM and L_CRPN to the mask loss.
    model.zero_grad()
    frames, masks = frames[..., :32, :32], masks[..., :32, :32]
    logits = model.forward_clip(frames, (masks[:, 0:1] == 1).float())
    assert logits.shape == (b, 2, 2, 32, 32)
    total = model.loss(logits, masks[:, 1:])
    mask_only = VOSModel.loss(model, logits, masks[:, 1:])
    assert total > mask_only
    assert model._clip_aux is None  # consumed


def test_engine_two_objects_state_and_ids() -> None:
    torch.manual_seed(0)
    frames, first = two_squares_clip(5, h=64, w=64, start7=(36, 44))
    model = build_model("dtn", **SMALL)
    prop = Propagator(model, device="cpu", precision="fp32", size=64)
    r0 = prop.start(frames[0], first)
    assert np.array_equal(r0.index, first)
    st = prop.states[0]
    assert st["prev_mask"].shape == (2, 1, 64, 64) and st["prev_box"].shape == (2, 4)
    assert st["first_feat"].shape == (2, 320) and st["prev_gray"].dtype == torch.uint8
    # The boxes of the first masks, in pixels (x1, y1, x2, y2).
    assert st["prev_box"].tolist() == [[6, 8, 22, 24], [44, 36, 58, 50]]
    for img in frames[1:]:
        r = prop.step(img)
        assert r.index.shape == (64, 64) and r.probs.shape == (2, 64, 64)
        assert set(np.unique(r.index)) <= {0, 3, 7} and r.object_ids == [3, 7]
        assert all(t.shape[0] == 2 for t in prop.states[0].values())


def test_conditional_anchors_81_centred_on_previous_box() -> None:
    box = torch.tensor([20.0, 30.0, 60.0, 50.0])  # centre (40, 40), w 40, h 20
    a = conditional_anchors(box)
    assert a.shape == (81, 4)
    cx, cy = (a[:, 0] + a[:, 2]) / 2, (a[:, 1] + a[:, 3]) / 2
    assert torch.allclose(cx.mean(), torch.tensor(40.0)) and torch.allclose(cy.mean(), torch.tensor(40.0))
    # 3x3 grid one feature stride (16 px) apart, 9 anchors per cell.
    centres = sorted({(round(float(x)), round(float(y))) for x, y in zip(cx, cy)})
    assert centres == [(x, y) for x in (24, 40, 56) for y in (24, 40, 56)]
    for c in centres:
        sel = (cx.round() == c[0]) & (cy.round() == c[1])
        assert int(sel.sum()) == 9
    # Scales {0.5, 1, 1.5} x sqrt(w h), ratios h/w {0.5, 1, 1.5} x 0.5, per cell.
    w, h = a[:9, 2] - a[:9, 0], a[:9, 3] - a[:9, 1]
    s = (40.0 * 20.0) ** 0.5
    exp_s = torch.tensor([f * s for f in (0.5, 1.0, 1.5) for _ in range(3)])
    exp_r = torch.tensor([f * 0.5 for _ in range(3) for f in (0.5, 1.0, 1.5)])
    assert torch.allclose(torch.sqrt(w * h), exp_s, rtol=1e-5)
    assert torch.allclose(h / w, exp_r, rtol=1e-5)
    # Batched: K x 81 x 4, each object around its own box; a custom stride.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 50.0, 140.0, 90.0]])
    b = conditional_anchors(boxes, stride=8)
    assert b.shape == (2, 81, 4) and b.flatten(0, 1).shape == (162, 4)
    centre = torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1).mean(1)
    assert torch.allclose(centre, torch.tensor([[5.0, 5.0], [120.0, 70.0]]))
    assert torch.allclose(((b[1, :, 0] + b[1, :, 2]) / 2).unique(), torch.tensor([112.0, 120.0, 128.0]))
    # Box regression round trip.
    gt = torch.tensor([[30.0, 28.0, 70.0, 55.0]]).expand(81, 4)
    assert torch.allclose(decode_boxes(a, encode_boxes(a, gt)), gt, atol=1e-4)


def test_decision_threshold_switches_streams() -> None:
    torch.manual_seed(0)
    frames, first = two_squares_clip(4, h=64, w=64, start7=(36, 44))
    model = build_model("dtn", **SMALL)
    for theta, stream in ((0.0, "propagation"), (1.01, "reidentification")):
        model.theta_c = theta
        model.reset_stream_counts()
        prop = Propagator(model, device="cpu", precision="fp32", size=64)
        prop.start(frames[0], first)
        for img in frames[1:]:
            prop.step(img)
            assert model.last_stream == stream and 0.0 < model.last_confidence < 1.0
        other = "reidentification" if stream == "propagation" else "propagation"
        assert model.stream_counts == {stream: 3, other: 0}
        assert model.propagation_share() == (1.0 if stream == "propagation" else 0.0)
    model.reset_stream_counts()
    assert model.stream_counts == {"propagation": 0, "reidentification": 0}
    assert model.propagation_share() is None
    assert "theta_c" not in model.config and DTN().theta_c == 0.83


def test_paste_back_geometry() -> None:
    out = paste_masks(torch.ones(1, 1, 28, 28), torch.tensor([[10.0, 20.0, 30.0, 50.0]]), 64, 64)
    assert out.shape == (1, 1, 64, 64)
    expected = torch.zeros(64, 64)
    expected[20:50, 10:30] = 1
    assert torch.equal(out[0, 0] > 0.5, expected > 0.5)  # exactly that rectangle, nothing else
    assert torch.allclose(out[0, 0], expected, atol=1e-6)
    # A left/right split RoI lands on the left/right halves of the box; K boxes at once.
    roi = torch.zeros(2, 1, 8, 8)
    roi[:, :, :, :4] = 1
    out = paste_masks(roi, torch.tensor([[0.0, 0.0, 16.0, 16.0], [32.0, 32.0, 64.0, 48.0]]), 64, 64)
    assert out[0, 0, 8, 3] == 1 and out[0, 0, 8, 12] == 0 and out[0, 0, 20, 3] == 0
    assert out[1, 0, 40, 40] == 1 and out[1, 0, 40, 60] == 0 and out[1, 0, 50, 40] == 0
    boxes, valid = mask_boxes(expected[None, None])
    assert valid.all() and boxes.tolist() == [[10, 20, 30, 50]]
    assert not mask_boxes(torch.zeros(1, 1, 8, 8))[1].any()


def _textured_pair(dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    tex = rng.integers(0, 256, (12, 12)).astype(np.float32)
    tex = np.kron(tex, np.ones((2, 2), np.float32))  # 24 x 24, smooth enough for DIS
    prev = np.full((64, 64), 40, np.uint8)
    cur = prev.copy()
    prev[16:40, 16:40] = tex
    cur[16 + dy:40 + dy, 16 + dx:40 + dx] = tex
    return prev, cur


def test_dis_flow_and_warp() -> None:
    prev, cur = _textured_pair(3, 2)
    flow = get_flow("dis")(prev, cur)
    assert flow.shape == (64, 64, 2) and flow.dtype == np.float32
    inner = flow[22:38, 23:39]  # inside the square in the current frame
    # Backward flow: the content at x in the current frame was at x + flow in the previous.
    assert abs(np.median(inner[..., 0]) + 3) <= 0.5 and abs(np.median(inner[..., 1]) + 2) <= 0.5
    mask = torch.zeros(1, 1, 64, 64)
    mask[0, 0, 16:40, 16:40] = 1
    moved = warp(mask, flow)[0, 0] > 0.5
    ys, xs = torch.nonzero(moved, as_tuple=True)
    assert abs(float(xs.float().mean()) - (27.5 + 3)) <= 0.5
    assert abs(float(ys.float().mean()) - (27.5 + 2)) <= 0.5
    # A pure translation field moves masks exactly (K objects, one flow).
    shift = np.zeros((64, 64, 2), np.float32)
    shift[..., 0] = -4.0
    two = torch.zeros(2, 1, 64, 64)
    two[0, 0, 5:9, 5:9] = 1
    two[1, 0, 30:40, 20:22] = 1
    out = warp(two, shift)
    assert torch.equal(out[0, 0, 5:9, 9:13], torch.ones(4, 4)) and out[0].sum() == 16
    assert torch.equal(out[1, 0, 30:40, 24:26], torch.ones(10, 2)) and out[1].sum() == 20
    with pytest.raises(VostoolError, match="unknown flow"):
        get_flow("flownet9")


def test_dis_flow_does_not_depend_on_the_sizes_it_saw_before() -> None:
    # OpenCV's DIS object keeps state from the last frame size: one estimator serves every
    # video of a process (and every test), so a pair's flow must not depend on what ran before
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur((rng.random((240, 432)) * 255).astype(np.uint8), (0, 0), 3)
    small = np.ascontiguousarray(big[:64, :64])
    fresh = get_flow("dis")(big, np.roll(big, 3, 1))
    used = get_flow("dis")
    used(small, np.roll(small, 2, 0))
    again = used(big, np.roll(big, 3, 1))
    assert np.array_equal(again, fresh)
    assert np.array_equal(used(big, np.roll(big, 3, 1)), fresh)  # same size again: same flow


def test_raft_without_weights_is_a_clear_error(monkeypatch) -> None:
    from torchvision.models._api import WeightsEnum

    def unavailable(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", unavailable)
    with pytest.raises(VostoolError, match="RAFT-small weights are not available"):
        get_flow("raft")
    with pytest.raises(VostoolError, match="RAFT-small"):
        DTN(roi_size=8, mrn_channels=[8, 8, 8, 8]).set_flow("raft")


def test_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("dtn", backbone="resnet18", roi_size=24, mrn_channels=[32, 32, 16, 16]).eval()
    path = save_checkpoint(model, tmp_path / "dtn.safetensors")
    loaded = load_model("dtn", weights=path)
    assert loaded.config == model.config
    assert loaded.config["roi_size"] == 24 and loaded.config["mrn_channels"] == [32, 32, 16, 16]
    frames, first = two_squares_clip(3, h=64, w=64, start7=(36, 44))
    outs = []
    for m in (model, loaded):
        m.theta_c = 0.5
        prop = Propagator(m, device="cpu", precision="fp32", size=64)
        prop.start(frames[0], first)
        outs.append([prop.step(img).probs for img in frames[1:]])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_registry_entry_and_config() -> None:
    spec = get_spec("dtn")
    assert "83.6" in spec.published and "14 FPS" in spec.published and "1080 Ti" in spec.published
    assert "Zhang" in spec.paper
    m = build_model("dtn")
    assert isinstance(m, DTN) and m.config == {
        "backbone": "mobilenet_v2", "roi_size": 112, "mrn_channels": [128, 64, 64, 32],
        "rpn_channels": 256, "dm_hidden": 256, "box_margin": 0.1}
    assert m.decision[2].out_features == 1 and m.decision[0].out_features == 256
    assert m.rpn_cls.out_channels == 9 and m.rpn_reg.out_channels == 36
    with pytest.raises(VostoolError, match="roi_size"):
        build_model("dtn", roi_size=100)
    with pytest.raises(VostoolError, match="only rvos"):
        Propagator(m, device="cpu", precision="fp32", size=32).start(np.zeros((32, 32, 3), np.uint8), None)


def test_reidentification_ranks_with_objectness() -> None:
    """Issue 12, defect 5: the 81 candidates were ranked by feature distance alone."""
    from vostool.models.dtn import reid_scores

    dist = torch.tensor([[1.0, 1.2, 3.0]])
    same = torch.zeros(1, 3)
    assert int(reid_scores(dist, same).argmin(1)) == 0  # equal objectness: the closest
    obj = torch.tensor([[-6.0, 6.0, 6.0]])
    assert int(reid_scores(dist, obj).argmin(1)) == 1  # a little farther, far more object-like
    assert int(reid_scores(dist * 10, obj).argmin(1)) == 1  # relative distances: scale-free
    torch.testing.assert_close(reid_scores(dist, same), dist - 0.5)
    # Through the model: the same candidates and features, only the objectness differs.
    torch.manual_seed(0)
    model = build_model("dtn", **SMALL).eval()
    s16 = torch.randn(1, model.encoder.channels["s16"], 8, 8)
    cand = torch.tensor([[[0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0]]])
    with torch.no_grad():
        f = model._pool(s16, cand[0])
        target = f[:2].mean(0, keepdim=True)  # between candidates 0 and 1
        dist = 2 * (f - target).norm(dim=-1)
        assert float(dist.max() / dist.min()) < 2 or float(dist[:2].max() / dist[:2].min()) < 2
        for winner in (0, 1):
            obj = torch.full((1, 3), -9.0)
            obj[0, winner] = 9.0
            pick = model._reidentify(s16, cand, obj, target, target)
            assert torch.equal(pick[0], cand[0, winner]), winner
