"""The propagation engine: ids, resizing, merging, corrections, devices, precision, memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vostool.engine import Propagator, propagate, resolve_device, resolve_precision
from vostool.errors import VostoolError
from vostool.models import VOSModel, build_model
from vostool.types import Frame


class CopyModel(VOSModel):
    """Predicts the previous merged mask again: propagation should then keep the first mask."""

    name = "copy"
    stride = 8

    def __init__(self) -> None:
        super().__init__("none")
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, image):
        return {"x": image[:, :1]}

    def init_state(self, image, feats, masks):
        return {"prev": masks}

    def update(self, image, feats, state, probs):
        return {"prev": probs}

    def predict(self, image, feats, state):
        p = state["prev"].clamp(1e-4, 1 - 1e-4)
        z = torch.log(p) - torch.log1p(-p)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _clip(n=5, h=45, w=77):
    rng = np.random.default_rng(0)
    frames = [(rng.random((h, w, 3)) * 255).astype(np.uint8) for _ in range(n)]
    mask = np.zeros((h, w), np.uint8)
    mask[5:25, 4:30] = 3
    mask[20:40, 40:70] = 7
    return frames, mask


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def test_ids_preserved_and_exact_at_source_size():
    frames, mask = _clip()
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=None)
    first = prop.start(frames[0], mask)
    assert np.array_equal(first.index, mask)
    assert first.object_ids == [3, 7]
    for img in frames[1:]:
        r = prop.step(img)
        assert r.index.shape == mask.shape and r.index.dtype == np.uint8
        assert np.array_equal(r.index, mask)  # no resizing: the copy is exact
        assert r.probs.shape == (2, *mask.shape) and r.probs.dtype == np.uint8
        assert (r.probs.astype(int).sum(0) <= 256).all()  # background = 255 - sum >= 0 (rounding)


@pytest.mark.parametrize("size", [16, 24, 100])
def test_resize_back_to_source(size):
    frames, mask = _clip()
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=size)
    prop.start(frames[0], mask)
    r = prop.step(frames[1])
    assert r.index.shape == mask.shape
    assert set(np.unique(r.index)) <= {0, 3, 7}
    for oid in (3, 7):
        assert _iou(r.index == oid, mask == oid) > 0.8


def test_crvos_two_objects_valid_masks_and_constant_state():
    torch.manual_seed(0)
    frames, mask = _clip(n=8)
    prop = Propagator(build_model("crvos"), device="cpu", precision="fp32", size=32)
    sizes = []
    for frame, r in propagate(prop, (Frame(i, f) for i, f in enumerate(frames)), mask):
        assert r.index.shape == mask.shape
        assert set(np.unique(r.index)) <= {0, 3, 7}
        sizes.append(sum(t.numel() for t in prop.states[0].values()))
    assert len(set(sizes)) == 1


def test_add_and_correct_objects_later():
    frames, mask = _clip()
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=None)
    prop.start(frames[0], mask)
    later = np.zeros_like(mask)
    later[0:4, 0:4] = 9       # a new object
    later[30:44, 0:20] = 3    # object 3 corrected to a new place
    r = prop.add_objects(frames[1], later)
    assert sorted(r.object_ids) == [3, 7, 9]
    assert np.array_equal(r.index == 9, later == 9)
    assert np.array_equal(r.index == 3, later == 3)
    assert np.array_equal(r.index == 7, mask == 7)  # untouched object goes on
    r = prop.step(frames[2])
    assert np.array_equal(r.index == 3, later == 3) and np.array_equal(r.index == 9, later == 9)


def test_mask_at_through_propagate():
    frames, mask = _clip()
    extra = np.zeros_like(mask)
    extra[0:5, 60:70] = 12
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=None)
    seen = [r.object_ids for _, r in propagate(prop, (Frame(i, f) for i, f in enumerate(frames)), mask, {2: extra})]
    assert seen[1] == [3, 7] and 12 in seen[2] and 12 in seen[-1]


def test_multiscale_averages_lanes():
    frames, mask = _clip()
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=40, scales=(0.5, 1.0))
    prop.start(frames[0], mask)
    r = prop.step(frames[1])
    assert len(prop.geometry.scales) == len(prop.states) == 2 and r.index.shape == mask.shape
    assert _iou(r.index == 7, mask == 7) > 0.8


class ScaleSpyModel(CopyModel):
    """CopyModel whose logits depend on the input scale (so that averaging shows) and
    that records the size of every feedback."""

    def __init__(self) -> None:
        super().__init__()
        self.fed: list[tuple[int, int]] = []

    def update(self, image, feats, state, probs):
        self.fed.append(tuple(probs.shape[-2:]))
        assert probs.shape[-2:] == image.shape[-2:]
        return {"prev": probs}

    def predict(self, image, feats, state):
        logits = super().predict(image, feats, state)
        return logits + torch.tensor([0.0, 1.0 if image.shape[-1] < 60 else -1.0]).view(1, 2, 1, 1)


def test_multiscale_merges_and_feeds_back_at_the_base_size():
    """Issue 12, defect 3: with --scales 0.5,1.0 the scales were averaged, merged, output
    and fed back at the first listed scale (half resolution)."""
    import torch.nn.functional as F

    from vostool.models.blocks import soft_aggregate

    frames, mask = _clip()  # 45 x 77; size 40: base 40 x 68 (padded 40 x 72), half 20 x 34 (24 x 40)
    results = {}
    for scales in ((0.5, 1.0), (1.0, 0.5)):
        model = ScaleSpyModel()
        prop = Propagator(model, device="cpu", precision="fp32", size=40, scales=scales)
        prop.start(frames[0], mask)
        assert (prop.geometry.base.h, prop.geometry.base.w) == (40, 68)
        # What the step should compute: each scale's probabilities upsampled to the base
        # size, averaged, merged there.
        want = []
        with torch.inference_mode():
            for lane in prop._lanes:
                x, feats = prop._encode(frames[1], lane)
                z = model.predict(x.expand(2, -1, -1, -1), feats, lane.state)
                p = torch.softmax(z[:, :, : lane.h, : lane.w], 1)[:, 1:2]
                want.append(F.interpolate(p, (40, 68), mode="bilinear", align_corners=False) if lane.h != 40 else p)
            merged = soft_aggregate(torch.stack(want).mean(0)[:, 0])
            expected = prop._result(merged)
        model.fed.clear()
        r = prop.step(frames[1])
        assert np.array_equal(r.probs, expected.probs) and np.array_equal(r.index, expected.index)
        # Each scale's state is fed back at its own (padded) size, from the base-size merge.
        assert sorted(model.fed) == [(24, 40), (40, 72)]
        full = next(i for i, g in enumerate(prop.geometry.scales) if g.h == 40)
        assert prop.states[full]["prev"].shape[-2:] == (40, 72)
        results[scales] = [r] + [prop.step(f) for f in frames[2:]]
    for a, b in zip(results[(0.5, 1.0)], results[(1.0, 0.5)]):  # the order of the scales is irrelevant
        assert np.array_equal(a.probs, b.probs)


def test_geometry_and_states_are_a_read_only_public_view():
    """Bench and tests read the engine's sizes and states through Propagator.geometry and
    Propagator.states, not its private lanes."""
    from vostool.engine.propagator import Geometry, ScaleGeometry

    frames, mask = _clip()  # 45 x 77
    prop = Propagator(CopyModel(), device="cpu", precision="fp32", size=40, scales=(0.5, 1.0))
    assert prop.geometry is None and prop.states == ()
    prop.start(frames[0], mask)
    g = prop.geometry
    assert g == Geometry((45, 77), ScaleGeometry(1.0, 40, 68, 40, 72),
                         (ScaleGeometry(0.5, 20, 34, 24, 40), ScaleGeometry(1.0, 40, 68, 40, 72)), (3, 7), False)
    assert (g.internal, g.padded) == ((20, 34), (24, 40))
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.source = (1, 1)  # type: ignore[misc]
    state = prop.states[1]
    assert state["prev"].shape == (2, 1, 40, 72)
    with pytest.raises(TypeError):
        state["prev"] = None  # type: ignore[index]
    later = np.zeros_like(mask)
    later[0:4, 0:4] = 9
    prop.add_objects(frames[1], later)
    assert prop.geometry.object_ids == (3, 7, 9) and prop.states[0]["prev"].shape[0] == 3


def test_input_errors():
    frames, mask = _clip()
    prop = Propagator(CopyModel(), device="cpu", precision="fp32")
    with pytest.raises(VostoolError, match="start"):
        prop.step(frames[0])
    with pytest.raises(VostoolError, match="no object"):
        prop.start(frames[0], np.zeros_like(mask))
    with pytest.raises(VostoolError, match="mask size"):
        prop.start(frames[0], mask[:10])
    with pytest.raises(VostoolError, match="only rvos"):
        prop.start(frames[0], None)
    prop.start(frames[0], mask)
    with pytest.raises(VostoolError, match="changed mid-video"):
        prop.step(frames[0][:20])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_absent_is_a_clear_error():
    with pytest.raises(VostoolError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(VostoolError, match="unknown device"):
        resolve_device("tpu")


def test_precision_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("VOSTOOL_NO_BF16", "1")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "fp32"  # falls back without native bf16
    monkeypatch.delenv("VOSTOOL_NO_BF16")
    with pytest.raises(VostoolError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(VostoolError, match="unknown precision"):
        resolve_precision("int4", cpu)


def test_bf16_autocast_runs_when_available():
    frames, mask = _clip()
    prop = Propagator(build_model("crvos"), device="cpu", precision="bf16", size=32)
    prop.start(frames[0], mask)
    r = prop.step(frames[1])
    assert r.probs.dtype == np.uint8 and set(np.unique(r.index)) <= {0, 3, 7}
