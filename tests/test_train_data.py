"""Training data: synthetic clips from still images and DAVIS-layout clips (tiny, made here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vostool.errors import VostoolError
from vostool.data.davis import annotated_sequences
from vostool.train.data import Augment, DavisClips, MixedClips, SyntheticClips, affine_matrix

from synthetic import make_davis


def _still_images(n: int = 4, h: int = 60, w: int = 80, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        m = np.zeros((h, w), np.uint8)
        y, x = rng.integers(5, h // 2), rng.integers(5, w // 2)
        m[y:y + h // 3, x:x + w // 3] = 1
        img[m > 0] = (rng.integers(0, 255, 3)).astype(np.uint8)
        pairs.append((img, m))
    return pairs


# -- synthetic clips ---------------------------------------------------------------------------------
def test_synthetic_shapes_and_determinism():
    ds = SyntheticClips(pairs=_still_images(), size=(32, 48), clip_len=3, seed=5)
    x, y = ds[7]
    assert x.shape == (3, 3, 32, 48) and x.dtype == torch.float32
    assert y.shape == (3, 32, 48) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= {0, 1}
    assert (y[0] == 1).sum() >= 16  # the target is visible in the first frame
    x2, y2 = ds[7]
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same seed + index: same clip
    x3, _ = SyntheticClips(pairs=_still_images(), size=(32, 48), clip_len=3, seed=6)[7]
    assert not torch.equal(x, x3)  # another seed: another clip
    x4, _ = ds[8]
    assert not torch.equal(x, x4)


def test_synthetic_both_strategies_and_motion():
    ds = SyntheticClips(pairs=_still_images(), size=(32, 48), clip_len=4, seed=0)
    strategies = {ds.make_clip(i)["strategy"] for i in range(12)}
    assert strategies == {1, 2}
    clip = ds.make_clip(0)
    # frames differ over time (the transforms move)
    assert not torch.equal(clip["frames"][0], clip["frames"][-1])


def test_synthetic_occlusion_and_multi_object():
    ds = SyntheticClips(pairs=_still_images(6), size=(48, 64), clip_len=4, seed=3, p_paste=1.0, p_occlude=1.0,
                        max_objects=3, return_ids=True)
    occluded = 0
    objects = set()
    for i in range(10):
        c = ds.make_clip(i)
        assert c["strategy"] == 2
        objects.add(c["objects"])
        ids = c["masks"]
        full = torch.from_numpy(c["full"])          # K x T x H x W before occlusion
        assert full.shape[1:] == (4, 48, 64)
        visible = (ids > 0)
        # the visible ids never exceed the pasted objects
        assert (visible & (full.sum(0) == 0)).sum() == 0
        if c["occluded"]:
            occluded += 1
            assert (full.sum(0) > 0).sum() > visible.sum()  # something is hidden
    assert occluded > 0
    assert max(objects) > 1


def test_synthetic_needs_images():
    with pytest.raises(VostoolError):
        SyntheticClips(roots=[])


def test_affine_matrix_maps_centre():
    m = affine_matrix((10.0, 20.0), (32, 48), scale=2.0, angle=30.0, shear=(10.0, 0.0), flip=True)
    p = m @ np.array([10.0, 20.0, 1.0])
    assert np.allclose(p[:2], (24.0, 16.0))


# -- DAVIS-layout clips -----------------------------------------------------------------------------
def test_davis_clips(tmp_path):
    root = make_davis(tmp_path / "davis")
    ds = DavisClips([root], size=(32, 48), clip_len=4, max_skip=2, seed=0)
    assert len(ds.sequences) == 3 and ds.num_frames == 18
    x, y = ds[0]
    assert x.shape == (4, 3, 32, 48) and y.shape == (4, 32, 48)
    assert set(y.unique().tolist()) <= {0, 1} and (y[0] == 1).any()
    x2, y2 = ds[0]
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(ds[1][0], x)


def test_davis_exclude_and_palette(tmp_path):
    root = make_davis(tmp_path / "davis", palette=True)
    ds = DavisClips([root], size=(32, 48), clip_len=3, exclude=["seq1"], augment=Augment.none())
    assert [s.name for s in ds.sequences] == ["seq0", "seq2"]
    x, y = ds[3]
    assert y.max() == 1 and (y == 1).sum() > 0
    with pytest.raises(VostoolError):
        annotated_sequences([root], names=["nope"])
    with pytest.raises(VostoolError):
        DavisClips([tmp_path / "missing"])


def test_davis_short_sequence_holds_last_frame(tmp_path):
    root = make_davis(tmp_path / "davis", seqs=1, frames=3)
    x, y = DavisClips([root], size=(32, 48), clip_len=5)[0]
    assert x.shape[0] == 5 and y.shape[0] == 5


def test_mixed_clips_draw_both_sources_deterministically(tmp_path):
    videos = DavisClips([make_davis(tmp_path / "davis")], size=(32, 48), clip_len=3, seed=0)
    synthetic = SyntheticClips(pairs=_still_images(), size=(32, 48), clip_len=3, seed=0)
    ds = MixedClips(videos, synthetic, p_synthetic=0.3, seed=4)
    picks = [ds.is_synthetic(i) for i in range(400)]
    assert 0.2 < sum(picks) / len(picks) < 0.4
    i_syn, i_vid = picks.index(True), picks.index(False)
    assert torch.equal(ds[i_syn][0], synthetic[i_syn][0]) and torch.equal(ds[i_syn][1], synthetic[i_syn][1])
    assert torch.equal(ds[i_vid][0], videos[i_vid][0])
    x, y = ds[i_syn]
    assert x.shape == (3, 3, 32, 48) and set(y.unique().tolist()) <= {0, 1, 255}
    assert ds.sequences == videos.sequences and ds.count == 4
    assert not any(MixedClips(videos, synthetic, p_synthetic=0.0).is_synthetic(i) for i in range(50))
    with pytest.raises(VostoolError):
        MixedClips(videos, synthetic, p_synthetic=1.5)


def test_davis_multi_scale_draws_the_frame_short_side(tmp_path):
    # 48x64 frames with a 16x20 object: at a frame short side of S the object is 16x20 * S/48
    make_davis(tmp_path, seqs=1, frames=4)
    still = Augment(flip=False, rotation=0.0, shear=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0,
                    saturation=0.0, hue=0.0)
    for side, area in ((24, 80), (48, 320), (72, 720)):
        ds = DavisClips([tmp_path], size=(48, 64), clip_len=2, augment=still, short_sides=(side, side))
        assert ds.short_side == side  # frames cached at the largest side drawn
        got = [int((ds[i][1][0] == 1).sum()) for i in range(6)]
        assert all(abs(a - area) <= 0.2 * area for a in got), (side, got)
    ds = DavisClips([tmp_path], size=(48, 64), clip_len=2, augment=still, short_sides=(24, 72), seed=5)
    areas = [int((ds[i][1][0] == 1).sum()) for i in range(24)]
    assert min(areas) < 200 < max(areas)  # several scales within one run
    with pytest.raises(VostoolError, match="multi-scale"):
        DavisClips([tmp_path], size=(48, 64), short_sides=(72, 24))


def test_cli_multi_scale_option():
    from vostool.cli.train import parse_short_sides

    assert parse_short_sides("240-480") == (240, 480)
    for bad in ("480-240", "240", "a-b", "16-480"):
        with pytest.raises(VostoolError, match="--multi-scale"):
            parse_short_sides(bad)


def _mean_hue(frames: torch.Tensor) -> np.ndarray:
    """Mean hue (fraction of the circle) of each frame of ``T x 3 x H x W`` in [0, 1]."""
    import cv2

    hues = []
    for f in frames:
        hsv = cv2.cvtColor((f.permute(1, 2, 0).numpy() * 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
        a = hsv[..., 0].astype(np.float64) / 256 * 2 * np.pi
        hues.append((np.arctan2(np.sin(a).mean(), np.cos(a).mean()) / (2 * np.pi)) % 1.0)
    return np.array(hues)


def test_large_hue_range_shifts_the_clip_not_each_frame():
    # a pure red clip; with --hue 0.5 clips take any hue, but within a clip the hue moves
    # by at most per_frame x 0.02 of the circle either way (the default range), not 0.5
    from vostool.data.synth import colour_jitter

    red = torch.zeros(6, 3, 8, 8)
    red[:, 0] = 0.9
    red[:, 1:] = 0.1
    only_hue = Augment(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.5)
    clip_hues = []
    for seed in range(12):
        h = _mean_hue(colour_jitter(red, np.random.default_rng(seed), only_hue, per_frame=0.3))
        spread = np.abs(((h - h[0]) + 0.5) % 1.0 - 0.5).max()
        assert spread <= 2 * 0.3 * 0.02 + 0.01, (seed, h)
        clip_hues.append(h[0])
    d = np.abs((np.array(clip_hues) + 0.5) % 1.0 - 0.5)  # distance from red
    assert d.max() > 0.25  # some clips far from red (blue-green), which 0.02 never gives
    default = _mean_hue(colour_jitter(red, np.random.default_rng(0), Augment(brightness=0.0, contrast=0.0,
                                                                             saturation=0.0), per_frame=0.3))
    assert np.abs((default + 0.5) % 1.0 - 0.5).max() <= 0.02 * 1.3 + 0.01


def test_cli_hue_option_sets_the_augmentation(tmp_path, monkeypatch):
    import vostool.train as vt
    from typer.testing import CliRunner

    from vostool.cli.app import app

    seen = {}

    def fake_train(cfg):
        seen["augment"] = cfg.augment
        return {"interrupted": False, "out": cfg.out, "iteration": 0, "iters": 0, "s_per_it": None}

    monkeypatch.setattr(vt, "train", fake_train)
    args = ["train", "--model", "gam", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(app, args + ["--hue", "0.5"]).exit_code == 0
    assert seen["augment"] == {"hue": 0.5}
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["augment"] == {}
    r = CliRunner().invoke(app, args + ["--hue", "0.7"])
    assert r.exit_code != 0 and "--hue" in r.output
