"""DAVIS metrics: golden cases computed by hand, and a cross-check against a slow reference."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vostool.errors import VostoolError
from vostool.eval import (
    bound_pixels,
    boundary_map,
    boundary_map_batch,
    contour_accuracy,
    contour_accuracy_batch,
    disk_kernel,
    read_index_png,
    region_similarity,
    region_similarity_batch,
    score_sequence,
    statistics,
    summarise,
)

# --------------------------------------------------------------------------------------------
# A slow but simple reference, written straight from shared/docs/davis-metrics.md.


def ref_bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def ref_dilate(b: np.ndarray, r: int) -> np.ndarray:
    h, w = b.shape
    out = np.zeros_like(b)
    for y, x in zip(*np.nonzero(b)):
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r and 0 <= y + dy < h and 0 <= x + dx < w:
                    out[y + dy, x + dx] = True
    return out


def ref_j(gt: np.ndarray, pred: np.ndarray) -> float:
    union = np.sum(gt | pred)
    return 1.0 if union == 0 else np.sum(gt & pred) / union


def ref_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    h, w = gt.shape
    r = int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(h * h + w * w)))
    fg_b, gt_b = ref_bmap(pred), ref_bmap(gt)
    fg_match = fg_b & ref_dilate(gt_b, r)
    gt_match = gt_b & ref_dilate(fg_b, r)
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        p, rc = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        p, rc = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        p, rc = 1.0, 1.0
    else:
        p, rc = fg_match.sum() / float(n_fg), gt_match.sum() / float(n_gt)
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    if kind == 0:
        return np.zeros((h, w), bool)
    if kind == 1:
        return rng.random((h, w)) < 0.1  # speckle
    y, x = np.ogrid[:h, :w]
    cy, cx = rng.uniform(-5, h + 5), rng.uniform(-5, w + 5)
    ry, rx = rng.uniform(1, h), rng.uniform(1, w)
    m = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1
    if kind == 3:
        m ^= rng.random((h, w)) < 0.02
    if kind == 4:
        m = m | (rng.random((h, w)) < 0.01)
    return m


@pytest.mark.parametrize("bound_th", [0.008, 3, 2.5])
def test_matches_slow_reference_on_random_masks(bound_th: float) -> None:
    rng = np.random.default_rng(int(bound_th * 1000))
    for _ in range(40):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 40))
        gt, pred = random_mask(rng, h, w), random_mask(rng, h, w)
        assert np.array_equal(boundary_map(gt), ref_bmap(gt))
        assert region_similarity(gt, pred) == ref_j(gt, pred)
        if bound_th == 2.5:  # non-integer radius: even-sized kernel, compare with itself batched
            f = contour_accuracy(gt, pred, bound_th)
            assert contour_accuracy_batch(gt[None], pred[None], bound_th)[0] == f
        else:
            assert contour_accuracy(gt, pred, bound_th) == ref_f(gt, pred, bound_th)


def test_batched_versions_match_per_frame() -> None:
    rng = np.random.default_rng(7)
    gt = np.stack([random_mask(rng, 24, 36) for _ in range(12)])
    pred = np.stack([random_mask(rng, 24, 36) for _ in range(12)])
    assert np.array_equal(boundary_map_batch(gt), np.stack([ref_bmap(g) for g in gt]))
    assert region_similarity_batch(gt, pred).tolist() == [ref_j(g, p) for g, p in zip(gt, pred)]
    assert contour_accuracy_batch(gt, pred).tolist() == [ref_f(g, p) for g, p in zip(gt, pred)]


# --------------------------------------------------------------------------------------------
# Golden cases


def test_bound_pixels_and_disk() -> None:
    # ceil(0.008 * sqrt(480^2 + 854^2)) = ceil(0.008 * 979.64) = ceil(7.84) = 8, and so on.
    assert bound_pixels(480, 854) == 8
    assert bound_pixels(720, 1280) == 12
    assert bound_pixels(1080, 1920) == 18
    assert bound_pixels(100, 160) == 2  # ceil(0.008 * 188.68) = ceil(1.51)
    assert bound_pixels(40, 64) == 1  # ceil(0.008 * 75.47) = ceil(0.60)
    assert bound_pixels(40, 64, bound_th=3) == 3  # >= 1: pixels
    # dx^2 + dy^2 <= 4
    assert disk_kernel(2.0).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]


def test_boundary_map_by_hand() -> None:
    seg = np.zeros((4, 4), bool)
    seg[1:3, 1:3] = True
    # (0,0) differs from its SE neighbour; (0,1),(0,2) from S; (1,0),(2,0) from E; (1,2),(2,2)
    # from E; (2,1) from S; (1,1) has E=S=SE=1. Last column: seg ^ S = 0; last row: seg ^ E = 0.
    assert boundary_map(seg).astype(int).tolist() == [
        [1, 1, 1, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ]
    # A full mask has no boundary: the interior equals its neighbours, the last row/column
    # rules give 1 ^ 1 = 0, and the bottom-right pixel is forced to 0.
    assert not boundary_map(np.ones((5, 7), bool)).any()


def test_empty_empty() -> None:
    z = np.zeros((40, 64), bool)
    assert region_similarity(z, z) == 1.0  # union 0 -> 1
    assert contour_accuracy(z, z) == 1.0  # no boundary on either side -> P = R = 1


def test_empty_gt_full_pred_and_full_gt_empty_pred() -> None:
    z = np.zeros((40, 64), bool)
    full = np.ones((40, 64), bool)
    # J = 0 / 2560 = 0; a full mask has no boundary, so both boundary maps are empty: F = 1.
    assert region_similarity(z, full) == 0.0
    assert contour_accuracy(z, full) == 1.0
    assert region_similarity(full, z) == 0.0
    assert contour_accuracy(full, z) == 1.0


def test_empty_gt_with_a_predicted_blob() -> None:
    gt = np.zeros((40, 64), bool)
    pred = gt.copy()
    pred[10:20, 10:20] = True
    # n_fg > 0, n_gt = 0 -> P = 0, R = 1 -> F = 0; and the reverse: P = 1, R = 0 -> F = 0.
    assert contour_accuracy(gt, pred) == 0.0
    assert contour_accuracy(pred, gt) == 0.0
    assert region_similarity(gt, pred) == 0.0


@pytest.mark.parametrize("h,w", [(100, 160), (480, 854)])
def test_boundary_shift_at_bound_pix_and_one_more(h: int, w: int) -> None:
    r = int(bound_pixels(h, w))  # 2 for 100x160, 8 for 480x854
    a = w // 3
    gt = np.zeros((h, w), bool)
    gt[:, :a] = True  # boundary: column a-1, all h rows
    for d, expected_f in ((r, 1.0), (r + 1, 0.0)):
        pred = np.zeros((h, w), bool)
        pred[:, : a + d] = True  # boundary: column a+d-1, h rows, d columns away
        # Offset (0, d) is in the disk iff d <= r: every pixel matches (P = R = 1, F = 1) at
        # d = r; no offset (dy, r+1) is in the disk, so nothing matches at d = r + 1 (F = 0).
        assert contour_accuracy(gt, pred) == expected_f
        # J = a*h / ((a+d)*h)
        assert region_similarity(gt, pred) == pytest.approx(a / (a + d), abs=1e-15)


def test_partial_boundary_match_by_hand() -> None:
    h, w, a, top = 100, 160, 50, 40  # r = 2
    gt = np.zeros((h, w), bool)
    gt[:, :a] = True  # boundary: column a-1, 100 pixels
    pred = np.zeros((h, w), bool)
    pred[:top, :a] = True  # boundary: column a-1 rows 0..38 (39 px) + row 39 cols 0..49 (50 px)
    # fg_match: the 40 pixels of column a-1 (rows 0..39) + row 39 cols a-3, a-2 (within 2 of
    # column a-1) = 42 of n_fg = 89. gt_match: rows 0..39 of column a-1, plus rows 40, 41 that
    # are within 2 of pixel (39, a-1) = 42 of n_gt = 100.
    p, rc = 42 / 89, 42 / 100
    assert contour_accuracy(gt, pred) == pytest.approx(2 * p * rc / (p + rc), abs=1e-15)
    assert region_similarity(gt, pred) == pytest.approx(0.4, abs=1e-15)  # 40*50 / (100*50)


def test_statistics_recall_at_exactly_half() -> None:
    # recall counts values strictly above 0.5: 0.6 and 1.0 -> 2 / 4
    m, o, d = statistics(np.array([0.5, 0.6, 0.5, 1.0]))
    assert o == 0.5
    assert m == pytest.approx(0.65)


def test_statistics_decay_bins_by_hand() -> None:
    v = np.arange(7) / 10  # 0.0 .. 0.6
    # linspace(1, 7, 5) = [1, 2.5, 4, 5.5, 7]; + 1e-10 makes 2.5 round up: [1, 3, 4, 6, 7] - 1
    # = [0, 2, 3, 5, 6]; bin0 = v[0:3] (mean 0.1), bin3 = v[5:7] (mean 0.55): D = -0.45.
    m, o, d = statistics(v)
    assert d == pytest.approx(-0.45)
    assert m == pytest.approx(0.3)
    assert o == pytest.approx(1 / 7)  # only 0.6 > 0.5
    v = np.arange(10) / 10
    # linspace(1, 10, 5) = [1, 3.25, 5.5, 7.75, 10] -> [0, 2, 5, 7, 9]: bins v[0:3], v[7:10]
    assert statistics(v)[2] == pytest.approx(0.1 - 0.8)


def test_statistics_long_sequence_decay_finite() -> None:
    n = 298  # a 300-frame sequence without its first and last frame
    v = np.zeros(n)
    v[:150] = 1.0
    # linspace(1, 298, 5) = [1, 75.25, 149.5, 223.75, 298] -> ids [0, 74, 149, 223, 297]:
    # bin0 = v[0:75] (all 1), bin3 = v[223:298] (all 0): D = 1.
    m, o, d = statistics(v)
    assert d == 1.0
    assert m == o == 150 / 298
    # The official uint8 cast wraps 297 to 41: bin3 = v[223:42] is empty and D is NaN.
    assert math.isnan(statistics(v, legacy_uint8_decay=True)[2])
    # Up to 256 scored frames both agree.
    w = np.linspace(1, 0, 256)
    assert statistics(w) == statistics(w, legacy_uint8_decay=True)


# --------------------------------------------------------------------------------------------
# Sequences on disk


def _save(path: Path, arr: np.ndarray, mode: str = "P") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")  # keeps the values as palette indices
        im.putpalette([v for i in range(256) for v in (i, i, i)])
    im.save(path)


def _write_seq(root: Path, masks: list[np.ndarray], mode: str = "P") -> Path:
    for t, m in enumerate(masks):
        _save(root / f"{t:05d}.png", m, mode)
    return root


def test_sequence_of_300_frames_has_finite_decay(tmp_path: Path) -> None:
    gt = np.zeros((8, 8), np.uint8)
    gt[2:6, 2:6] = 1
    empty = np.zeros_like(gt)
    # scored frames 1..298: the first 150 perfect (J = 1), the rest empty (J = 0)
    preds = [gt if t <= 150 else empty for t in range(300)]
    _write_seq(tmp_path / "gt", [gt] * 300)
    _write_seq(tmp_path / "pred", preds)
    s = score_sequence(tmp_path / "gt", tmp_path / "pred")
    assert s.j.shape == (1, 298)
    (_, rows) = summarise([s])
    assert rows[0].j_decay == 1.0 and rows[0].j_mean == 150 / 298
    (_, legacy) = summarise([s], legacy_uint8_decay=True)
    assert math.isnan(legacy[0].j_decay)


def test_recall_at_exactly_half_through_a_sequence(tmp_path: Path) -> None:
    gt = np.zeros((6, 6), np.uint8)
    gt[1, 1:3] = 1  # 2 pixels
    half = np.zeros_like(gt)
    half[1, 1] = 1  # J = 1 / 2 = 0.5 exactly
    _write_seq(tmp_path / "gt", [gt] * 5)
    _write_seq(tmp_path / "pred", [gt, half, gt, half, gt])
    s = score_sequence(tmp_path / "gt", tmp_path / "pred")
    assert s.j[0].tolist() == [0.5, 1.0, 0.5]
    _, rows = summarise([s])
    assert rows[0].j_recall == pytest.approx(1 / 3)  # 0.5 is not > 0.5


def test_two_objects_one_missing(tmp_path: Path) -> None:
    gt = np.zeros((40, 64), np.uint8)
    gt[5:15, 5:15] = 1
    gt[20:30, 30:50] = 2
    pred = np.where(gt == 1, 1, 0).astype(np.uint8)  # object 2 never predicted
    _write_seq(tmp_path / "gt", [gt] * 4)
    _write_seq(tmp_path / "pred", [pred] * 4)
    s = score_sequence(tmp_path / "gt", tmp_path / "pred")
    # object 1: J = F = 1. Object 2: empty prediction, J = 0 / 200 = 0, F: n_fg = 0 and
    # n_gt > 0 -> P = 1, R = 0 -> F = 0.
    assert s.object_ids == [1, 2]
    assert s.j.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    assert s.f.tolist() == [[1.0, 1.0], [0.0, 0.0]]
    figures, rows = summarise([s])
    assert [r.name for r in rows] == ["gt_1", "gt_2"]
    # object-weighted: (1 + 0) / 2 for every mean and recall; decays are 0.
    assert figures == {"J&F-Mean": 0.5, "J-Mean": 0.5, "J-Recall": 0.5, "J-Decay": 0.0,
                       "F-Mean": 0.5, "F-Recall": 0.5, "F-Decay": 0.0}


def test_void_pixels_are_background(tmp_path: Path) -> None:
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1  # 16 pixels of object 1
    gt[2:6, 6] = 255  # a void column of 4 pixels beside it
    pred = np.zeros_like(gt)
    pred[2:6, 2:7] = 1  # the object and the void column: 20 pixels
    _write_seq(tmp_path / "gt", [gt] * 3)
    _write_seq(tmp_path / "pred", [pred] * 3)
    s = score_sequence(tmp_path / "gt", tmp_path / "pred")
    assert s.object_ids == [1]  # 255 in the first frame is not an object
    assert s.j[0, 0] == 16 / 20  # void counts as background, not as "ignore"
    # Single-object (DAVIS-2016) scoring: any non-zero pixel is the object, void included.
    s16 = score_sequence(tmp_path / "gt", tmp_path / "pred", binary=True)
    assert s16.j[0, 0] == 1.0


def test_binary_scoring_reads_0_255_and_0_1(tmp_path: Path) -> None:
    gt = np.zeros((20, 30), np.uint8)
    gt[5:12, 5:20] = 255
    _write_seq(tmp_path / "gt", [gt] * 3, mode="L")
    _write_seq(tmp_path / "pred01", [(gt > 0).astype(np.uint8)] * 3)
    _write_seq(tmp_path / "pred255", [gt] * 3, mode="L")
    for pred in ("pred01", "pred255"):
        s = score_sequence(tmp_path / "gt", tmp_path / pred, binary=True)
        assert s.j.tolist() == [[1.0]] and s.f.tolist() == [[1.0]]


def test_input_errors(tmp_path: Path) -> None:
    gt = np.zeros((20, 30), np.uint8)
    gt[5:12, 5:20] = 1
    _write_seq(tmp_path / "gt", [gt] * 4)
    # missing frame: names the sequence and the frame
    _write_seq(tmp_path / "miss", [gt] * 4)
    (tmp_path / "miss" / "00002.png").unlink()
    with pytest.raises(VostoolError, match=r"sequence gt miss frame 00002"):
        score_sequence(tmp_path / "gt", tmp_path / "miss")
    # size mismatch
    _write_seq(tmp_path / "size", [np.zeros((10, 30), np.uint8)] * 4)
    with pytest.raises(VostoolError, match=r"is 30x10 but the ground truth .* is 30x20"):
        score_sequence(tmp_path / "gt", tmp_path / "size")
    # id above the number of objects
    _write_seq(tmp_path / "ids", [gt * 3] * 4)
    with pytest.raises(VostoolError, match=r"object id 3 .* 1 object"):
        score_sequence(tmp_path / "gt", tmp_path / "ids")
    # RGB result
    (tmp_path / "rgb").mkdir()
    for t in range(4):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "rgb" / f"{t:05d}.png")
    with pytest.raises(VostoolError, match=r"not an index PNG \(mode RGB\)"):
        score_sequence(tmp_path / "gt", tmp_path / "rgb")
    # too short to score
    _write_seq(tmp_path / "short", [gt] * 2)
    with pytest.raises(VostoolError, match=r"at least 3"):
        score_sequence(tmp_path / "short", tmp_path / "short")


def test_grey_alpha_png_reads_its_grey_plane(tmp_path: Path) -> None:
    # DAVIS-2016 ships one such annotation (bear/00077.png): grey + an all-opaque alpha.
    arr = np.zeros((4, 6, 2), np.uint8)
    arr[1:3, 2:4, 0] = 255
    arr[..., 1] = 255
    Image.fromarray(arr, mode="LA").save(tmp_path / "la.png")
    assert read_index_png(tmp_path / "la.png").tolist() == arr[..., 0].tolist()


def test_frames_in_natural_order(tmp_path: Path) -> None:
    gt = np.zeros((6, 6), np.uint8)
    gt[1:4, 1:4] = 1
    for t in range(12):  # 0.png .. 11.png: "10" and "11" are not scored only if sorted as numbers
        _save(tmp_path / "gt" / f"{t}.png", gt)
        _save(tmp_path / "pred" / f"{t}.png", gt if t not in (0, 11) else np.zeros_like(gt))
    s = score_sequence(tmp_path / "gt", tmp_path / "pred")
    assert s.frames == [str(t) for t in range(1, 11)]
    assert s.j.tolist() == [[1.0] * 10]


def test_json_payload_turns_nan_into_null() -> None:
    v = np.zeros((1, 298))
    v[0, :150] = 1.0
    from vostool.eval import EvalResult, SequenceScore, json_payload

    s = SequenceScore("long", [1], [str(i) for i in range(298)], v, v.copy())
    figures, rows = summarise([s], legacy_uint8_decay=True)
    payload = json_payload(EvalResult(figures, rows, [s]), benchmark="folders")
    assert payload["J-Decay"] is None and payload["F-Decay"] is None
    assert payload["J-Mean"] == 150 / 298
    json.dumps(payload, allow_nan=False)  # valid JSON
