"""RVOS: forward/backward one-shot and zero-shot, one-shot with 3 objects through the
engine, zero-shot discovery with at most N stable ids, the permutation-invariant
Hungarian loss, the predict/update hidden-state hand-over, checkpoint round trip."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vostool.engine.propagator import Propagator
from vostool.errors import VostoolError
from vostool.models import build_model, get_spec, load_model, save_checkpoint
from vostool.models.rvos import RVOS, hungarian, soft_iou_loss


def shapes_clip(n: int = 5, h: int = 64, w: int = 64) -> tuple[list[np.ndarray], np.ndarray]:
    """Three moving shapes (ids 2, 5, 9) on a textured background; frames + first mask."""
    rng = np.random.default_rng(0)
    bg = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    frames, first = [], None
    for t in range(n):
        img = bg.copy()
        mask = np.zeros((h, w), np.uint8)
        sq = (yy >= 6 + t) & (yy < 22 + t) & (xx >= 6 + 2 * t) & (xx < 22 + 2 * t)
        disc = (yy - 44) ** 2 + (xx - (46 - 2 * t)) ** 2 < 81
        bar = (yy >= 48 - t) & (yy < 54 - t) & (xx >= 4) & (xx < 30)
        for m, oid, col in ((sq, 2, (220, 40, 40)), (disc, 5, (40, 200, 60)), (bar, 9, (50, 60, 230))):
            img[m] = col
            mask[m] = oid
        frames.append(img)
        if t == 0:
            first = mask
    return frames, first


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_one_shot_forward_backward(backbone: str) -> None:
    torch.manual_seed(0)
    model = build_model("rvos", backbone=backbone, hidden=32).train()
    frames = torch.randn(2, 3, 3, 64, 64)
    first = (torch.rand(2, 1, 64, 64) > 0.5).float()
    logits = model.forward_clip(frames, first)
    assert logits.shape == (2, 2, 2, 64, 64)
    target = (torch.rand(2, 2, 64, 64) > 0.5).long()
    target[0, 0, :4] = 255
    loss = model.loss(logits, target)
    assert torch.isfinite(loss) and 0 < float(loss.detach()) < 1
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name
    for p in (model.decoder.out.weight, model.decoder.cells[0].gates.weight, model.skip["s4"][0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert next(model.encoder.parameters()).grad.abs().sum() > 0
    assert model.decoder_zero.out.weight.grad is None  # one-shot training leaves the zero-shot decoder
    # Several objects per sample (spatial recurrence), with teacher forcing.
    z = model.forward_clip_objects(frames, first[:, None].expand(2, 3, 1, 64, 64),
                                   teacher=torch.zeros(2, 3, 3, 1, 64, 64))
    assert z.shape == (2, 2, 3, 64, 64)


def test_zero_shot_forward_backward() -> None:
    torch.manual_seed(0)
    model = build_model("rvos", hidden=32).train()
    frames = torch.randn(2, 3, 3, 64, 64)
    masks = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    masks[:, :, 8:24, 8:24] = 4
    masks[0, :, 40:56, 30:50] = 6
    masks[1, 2, :3] = 255
    slots = model.forward_clip_zero_shot(frames, slots=3)
    assert slots.shape == (2, 3, 3, 64, 64)
    loss = model.loss_zero_shot(slots, masks)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.decoder_zero.out.weight.grad.abs().sum() > 0
    assert model.decoder_zero.cells[2].gates.weight.grad.abs().sum() > 0
    assert model.decoder.out.weight.grad is None
    assert torch.isfinite(model.training_loss_zero_shot(frames, masks, slots=2))


def test_one_shot_engine_three_objects_keeps_ids() -> None:
    torch.manual_seed(0)
    frames, first = shapes_clip()
    model = build_model("rvos", chain=True)
    assert model.uses_soft_aggregation is False
    prop = Propagator(model, device="cpu", precision="fp32", size=64)
    r0 = prop.start(frames[0], first)
    assert np.array_equal(r0.index, first) and r0.object_ids == [2, 5, 9]
    st = prop.states[0]
    assert st["h0"].shape == (3, 128, 4, 4) and st["h2"].shape == (3, 32, 16, 16)
    assert st["h0"].abs().sum() > 0  # frame 0 was decoded with the given masks
    assert torch.equal(st["zero_shot"], torch.zeros(3))
    for img in frames[1:]:
        r = prop.step(img)
        assert set(np.unique(r.index)) <= {0, 2, 5, 9}
        assert r.object_ids == [2, 5, 9] and r.probs.shape == (3, 64, 64)
        assert not any(k.startswith("next_") for k in prop.states[0])


def test_zero_shot_engine_at_most_n_stable_ids() -> None:
    torch.manual_seed(0)
    frames, _ = shapes_clip()
    model = build_model("rvos")
    prop = Propagator(model, device="cpu", precision="fp32", size=64, max_objects=3)
    results = [prop.start(frames[0], None)] + [prop.step(img) for img in frames[1:]]
    for r in results:
        assert r.object_ids == [1, 2, 3]
        assert set(np.unique(r.index)) <= {0, 1, 2, 3}
        assert r.probs.shape == (3, 64, 64)
    st = prop.states[0]
    assert torch.equal(st["zero_shot"], torch.ones(3)) and st["h1"].shape[0] == 3
    # A mask given later starts a one-shot object next to the discovered slots.
    extra = np.zeros((64, 64), np.uint8)
    extra[30:40, 30:40] = 7
    r = prop.add_objects(frames[-1], extra)
    assert r.object_ids == [1, 2, 3, 7]
    r = prop.step(frames[-1])
    assert set(np.unique(r.index)) <= {0, 1, 2, 3, 7}
    assert prop.states[0]["zero_shot"].tolist() == [1, 1, 1, 0]
    # Without the zero-shot decoder there is no mask-less mode.
    with pytest.raises(VostoolError, match="zero-shot decoder"):
        Propagator(build_model("rvos", hidden=16, zero_shot=False), device="cpu", precision="fp32",
                   size=32).start(np.zeros((32, 32, 3), np.uint8), None)


def test_hungarian_loss_is_permutation_invariant(monkeypatch) -> None:
    torch.manual_seed(0)
    model = RVOS(hidden=16)
    logits = torch.randn(2, 2, 3, 16, 16) * 3
    target = torch.zeros(2, 2, 16, 16, dtype=torch.long)
    target[:, :, 2:8, 2:8] = 1
    target[:, :, 9:15, 4:12] = 2
    target[1, 1, 0, :] = 255
    base = model.loss_zero_shot(logits, target)
    swapped = target.clone()
    swapped[target == 1], swapped[target == 2] = 2, 1
    relabel = target.clone()
    relabel[target == 1], relabel[target == 2] = 9, 4
    for t in (swapped, relabel):
        assert torch.allclose(model.loss_zero_shot(logits, t), base, atol=1e-6)
    # The matching picks the right slots: a slot predicting an instance exactly costs ~0.
    perfect = torch.full((1, 2, 3, 16, 16), -30.0)
    perfect[:, :, 2] = torch.where(target[:1] == 1, 30.0, -30.0)
    perfect[:, :, 0] = torch.where(target[:1] == 2, 30.0, -30.0)
    assert float(model.loss_zero_shot(perfect, target[:1])) < 1e-3
    # Without scipy the exact fallback gives the same assignment.
    cost = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.3]])
    rows, cols = hungarian(cost)
    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    rows2, cols2 = hungarian(cost)
    assert list(cols) == list(cols2) == [1, 0] and list(rows) == list(rows2) == [0, 1]
    # Soft IoU: 0 for a perfect mask, ~1 for a disjoint one, pushes empty targets to empty.
    y = torch.zeros(8, 8)
    y[:4] = 1
    assert float(soft_iou_loss(y, y)) == 0 and float(soft_iou_loss(1 - y, y)) > 0.95
    assert float(soft_iou_loss(torch.full((8, 8), 0.5), torch.zeros(8, 8))) > 0.9


def test_update_recomputes_hidden_without_predict() -> None:
    torch.manual_seed(0)
    model = build_model("rvos", hidden=16).eval()
    x = torch.randn(1, 3, 32, 32)
    masks = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        feats = model.expand_features(model.encode(x), 2)
        state = model.init_state(x.expand(2, -1, -1, -1), feats, masks)
        fresh = dict(state)
        model.predict(x.expand(2, -1, -1, -1), feats, state)
        assert set(state) == set(fresh) and all(state[k] is fresh[k] for k in state)  # not mutated
        probs = torch.rand(2, 1, 32, 32)
        a = model.update(x.expand(2, -1, -1, -1), feats, state, probs)
        b = model.update(x.expand(2, -1, -1, -1), feats, fresh, probs)
    assert set(a) == set(b) == {"prev_mask", "h0", "h1", "h2", "zero_shot"}
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_checkpoint_round_trip_and_registry(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("rvos", backbone="resnet18", hidden=32).eval()
    path = save_checkpoint(model, tmp_path / "rvos.safetensors")
    loaded = load_model("rvos", weights=path)
    assert loaded.config == model.config == {"backbone": "resnet18", "hidden": 32, "zero_shot": True,
                                                "slots": 3, "chain": False}
    frames, first = shapes_clip(3)
    for masks in (first, None):
        outs = []
        for m in (model, loaded):
            prop = Propagator(m, device="cpu", precision="fp32", size=64, max_objects=2)
            prop.start(frames[0], masks)
            outs.append([prop.step(img).probs for img in frames[1:]])
        for a, b in zip(*outs):
            assert np.array_equal(a, b)
    spec = get_spec("rvos")
    assert "56.8" in spec.published and "P100" in spec.published and "Ventura" in spec.paper
    assert build_model("rvos").config == {"backbone": "mobilenet_v2", "hidden": 128, "zero_shot": True, "slots": 3,
                                          "chain": False}
    with pytest.raises(VostoolError, match="hidden"):
        build_model("rvos", hidden=30)


def test_zero_shot_default_slots_are_the_trained_ones(tmp_path) -> None:
    """The engine's default number of zero-shot slots is the number the checkpoint was
    trained with (issue 12, defect 6: trained with 3, run with 5)."""
    from vostool.models.base import VOSModel
    from vostool.train.loop import TrainConfig, train

    assert VOSModel.zero_shot_slots == 0
    frames, _ = shapes_clip(3)
    # A checkpoint without "slots" in its config (the shipped one) was trained with 3.
    model = build_model("rvos", hidden=16)
    del model.config["slots"]
    path = save_checkpoint(model, tmp_path / "old.safetensors")
    for m, want in ((load_model("rvos", weights=path), 3), (build_model("rvos", hidden=16, slots=4), 4)):
        assert m.zero_shot_slots == want
        r = Propagator(m, device="cpu", precision="fp32", size=64).start(frames[0], None)
        assert r.object_ids == list(range(1, want + 1)) and r.probs.shape[0] == want
        with torch.no_grad():
            assert m.forward_clip_zero_shot(torch.randn(1, 2, 3, 32, 32)).shape[2] == want
    # The caller can still ask for another number.
    r = Propagator(build_model("rvos", hidden=16), device="cpu", precision="fp32", size=64,
                   max_objects=2).start(frames[0], None)
    assert r.object_ids == [1, 2]
    # A model without zero-shot slots cannot be started without a mask.
    with pytest.raises(VostoolError):
        Propagator(build_model("crvos"), device="cpu", precision="fp32", size=64).start(frames[0], None)
    # Zero-shot training records its --slots in the checkpoint's config and the export.
    from synthetic import make_davis
    from vostool.train import export_run, load_run

    make_davis(tmp_path / "davis")
    cfg = TrainConfig(model="rvos", pretrained=False, stage="video", data=[str(tmp_path / "davis")],
                      size=(32, 48), clip_len=2, batch=1, iters=1, zero_shot=True, slots=2, precision="fp32",
                      device="cpu", threads=1, out=str(tmp_path / "run"), log_every=1, progress=False)
    train(cfg)
    assert load_run(tmp_path / "run/last.pt")["model_config"]["slots"] == 2
    export_run(tmp_path / "run/last.pt", tmp_path / "zs.safetensors", fp16=False)
    assert load_model("rvos", weights=tmp_path / "zs.safetensors").zero_shot_slots == 2


def _spatial_grads(model: RVOS) -> list[float]:
    """|grad| of the gate weights that read the previous object's hidden state, per layer."""
    out = []
    for cell in model.decoder.cells:
        cin = cell.gates.in_channels - cell.hidden
        out.append(float(cell.gates.weight.grad[:, cin:].abs().sum()))
    return out


def test_multi_object_training_trains_the_spatial_recurrence(tmp_path) -> None:
    """Issue 12, defect 1: with one object per sample the input "object i reads object
    i-1's ConvLSTM state" is always zero, so its weights get no gradient; the trainer's
    samples now hold several objects, chained as at inference."""
    from synthetic import make_davis
    from vostool.train.loop import TrainConfig, build_dataset, clip_loss, objects_per_sample

    torch.manual_seed(0)
    model = build_model("rvos", hidden=16, chain=True).train()
    frames = torch.randn(2, 3, 3, 64, 64)
    one = torch.zeros(2, 3, 64, 64, dtype=torch.long)
    for t in range(3):
        one[:, t, 8 + t:24 + t, 8:24] = 1
    # One object per sample: the weights reading the previous object get exactly nothing,
    # and training_loss is the old loss(forward_clip(...)).
    loss = clip_loss(model, frames, one)
    assert torch.allclose(loss, model.loss(model.forward_clip(frames, (one[:, :1] == 1).float()), one[:, 1:]))
    loss.backward()
    assert _spatial_grads(model) == [0.0, 0.0, 0.0]
    assert model.decoder.out.weight.grad.abs().sum() > 0
    # Two objects per sample (the second one absent from sample 1: padded, not in the loss).
    model.zero_grad()
    two = one.clone()
    two[0, :, 40:56, 30:50] = 2
    two[1, 1, :4] = 255
    loss = clip_loss(model, frames, two)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(g > 0 for g in _spatial_grads(model))
    # The trainer gives rvos two objects per sample by default, the others one.
    make_davis(tmp_path / "davis", seqs=3, h=64, w=80)
    cfg = TrainConfig(model="rvos", stage="video", data=[str(tmp_path / "davis")], size=(48, 64), clip_len=3)
    assert objects_per_sample(cfg) == 2
    assert objects_per_sample(TrainConfig(model="rvos", zero_shot=True)) == 1
    assert objects_per_sample(TrainConfig(model="crvos")) == 1
    with pytest.raises(VostoolError, match="--objects"):
        objects_per_sample(TrainConfig(model="crvos", objects=2))
    ds = build_dataset(cfg)
    for i in range(4):
        f, m = ds[i]
        assert f.shape == (3, 3, 48, 64) and m.shape == (3, 48, 64)
        assert set(torch.unique(m[0]).tolist()) == {0, 1, 2}
        assert set(torch.unique(m).tolist()) <= {0, 1, 2, 255}
    loss = clip_loss(model, torch.stack([ds[0][0], ds[1][0]]), torch.stack([ds[0][1], ds[1][1]]))
    assert torch.isfinite(loss)


def test_objects_decode_as_the_checkpoint_was_trained(tmp_path) -> None:
    """A checkpoint trained on one object per sample (``chain=False``, the shipped one: its
    gates that read the previous object's state never learned) decodes each object on its
    own, exactly as alone, and the engine merges them by soft aggregation; one trained on
    several objects per sample (``chain=True``) decodes them as one spatial chain."""
    from synthetic import make_davis
    from vostool.train.loop import TrainConfig, build_train_model

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, :, 4:14, 4:14] = 1
    masks[1, :, 18:30, 16:28] = 1
    outs = {}
    for chain in (False, True):
        model = build_model("rvos", hidden=16, chain=chain).eval()
        if chain:
            model.load_state_dict(ref)
        ref = model.state_dict()
        assert model.uses_soft_aggregation is (not chain) and model.config["chain"] is chain
        with torch.no_grad():
            feats = model.encode(x)
            both = model.predict(x.expand(2, -1, -1, -1), model.expand_features(feats, 2),
                                 model.init_state(x.expand(2, -1, -1, -1), model.expand_features(feats, 2), masks))
            alone = model.predict(x, feats, model.init_state(x, feats, masks[1:]))
        outs[chain] = (both, alone)
    both, alone = outs[False]
    assert torch.allclose(both[1:], alone, atol=1e-6)  # object 2 ignores object 1
    both, alone = outs[True]
    assert not torch.allclose(both[1:], alone, atol=1e-4)  # object 2 reads object 1's state
    assert torch.equal(outs[False][0][:1], outs[True][0][:1])  # the first object of a chain reads nothing
    # A checkpoint without "chain" in its config (the shipped one) was trained one object at a time.
    old = build_model("rvos", hidden=16)
    del old.config["chain"]
    path = save_checkpoint(old, tmp_path / "old.safetensors")
    assert load_model("rvos", weights=path).chain is False
    # The trainer records what it trains: two objects per sample (rvos' default) chain them,
    # one does not, and a stage keeps the chain of the weights it starts from.
    make_davis(tmp_path / "davis", seqs=3, h=64, w=80)
    base = dict(model="rvos", pretrained=False, stage="video", data=[str(tmp_path / "davis")], size=(48, 64),
                clip_len=3)
    assert build_train_model(TrainConfig(**base)).chain is True
    assert build_train_model(TrainConfig(**base, objects=1)).chain is False
    chained = save_checkpoint(build_model("rvos", chain=True), tmp_path / "chained.safetensors")
    assert build_train_model(TrainConfig(**base, objects=1, init=str(chained))).chain is True
    assert build_train_model(TrainConfig(**base, zero_shot=True, init=str(chained))).chain is True
    assert build_train_model(TrainConfig(**base, zero_shot=True, init=str(path))).chain is False
    # A resumed run keeps its own record, whatever became of its --init file.
    from vostool.train.checkpoint import RunCheckpoint

    run = tmp_path / "run"
    run.mkdir()
    RunCheckpoint(config=None, model={}, model_config={"chain": True}).save(run / "last.pt")
    resumed = TrainConfig(**base, zero_shot=True, init=str(tmp_path / "gone.safetensors"), resume=True, out=str(run))
    assert build_train_model(resumed).chain is True
