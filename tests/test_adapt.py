"""``--adapt``: the per-video target model (vostool/engine/adapt.py) in the engine and the CLI.

Tiny random-weight crvos on synthetic clips, CPU, fp32 (the same on AVX2-only CPUs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import cli_clip, two_objects_frame, two_squares_clip
from typer.testing import CliRunner

from vostool.cli.app import app
from vostool.engine import Propagator, propagate
from vostool.engine.adapt import AdaptConfig, Adaptation, parse_steps
from vostool.errors import VostoolError
from vostool.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("crvos")


def _prop(model, steps: int | None = 20, margin: float = 2.0) -> Propagator:
    adapt = Adaptation(AdaptConfig(steps=steps, augmentations=3, margin=margin)) if steps is not None else None
    return Propagator(model, device="cpu", precision="fp32", size=48, adapt=adapt)


def _run(prop: Propagator, frames, first, mask_at=None) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(r.index.copy(), r.probs.copy()) for _, r in propagate(prop, _frames(frames), first, mask_at)]


def _frames(images):
    from vostool.types import Frame

    return [Frame(index=i, image=img) for i, img in enumerate(images)]


def test_adaptation_lowers_the_loss_on_the_first_frame_clips():
    frames, first = two_squares_clip(n=2)
    prop = _prop(_model(), steps=40)
    prop.start(frames[0], first)
    losses = prop.adaptation.losses
    assert len(losses) == 40
    assert losses[-1] < 0.8 * losses[0]
    assert sorted(prop.adaptation.heads) == [3, 7]


def test_zero_steps_is_bit_identical_to_no_adaptation():
    frames, first = two_squares_clip(n=4)
    model = _model()
    plain = _run(_prop(model, steps=None), frames, first)
    zero = _run(_prop(model, steps=0), frames, first)
    for (i0, p0), (i1, p1) in zip(plain, zero):
        assert np.array_equal(i0, i1) and np.array_equal(p0, p1)


def test_adaptation_changes_outputs_and_never_the_weights():
    frames, first = two_squares_clip(n=4)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = _run(_prop(model, steps=None), frames, first)
    adapted = _run(_prop(model, steps=60, margin=0.0), frames, first)
    assert any(not np.array_equal(p0, p1) for (_, p0), (_, p1) in zip(plain[1:], adapted[1:]))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_two_videos_in_one_run_equal_two_separate_runs():
    a_frames, a_first = two_squares_clip(n=4)
    b_frames, b_first = two_squares_clip(n=4, start7=(36, 60))
    model = _model()
    prop = _prop(model, steps=20)
    _run(prop, a_frames, a_first)
    b_after_a = _run(prop, b_frames, b_first)
    b_alone = _run(_prop(model, steps=20), b_frames, b_first)
    for (i0, p0), (i1, p1) in zip(b_after_a, b_alone):
        assert np.array_equal(i0, i1) and np.array_equal(p0, p1)


def test_multi_object_ids_kept():
    frames, first = two_squares_clip(n=3)
    prop = _prop(_model(), steps=10)
    results = [r for _, r in propagate(prop, _frames(frames), first)]
    for r in results:
        assert r.object_ids == [3, 7]
        assert set(np.unique(r.index)) <= {0, 3, 7}
        assert r.probs.shape[0] == 2
    assert set(np.unique(results[0].index)) == {0, 3, 7}


def test_mask_at_adapts_on_the_new_frame_objects():
    frames, first = two_squares_clip(n=5)
    later = np.zeros_like(first)
    later[30:40, 60:75] = 9  # a new object at frame 2
    prop = _prop(_model(), steps=10)
    heads = []
    fit = prop.adaptation.fit

    def spy(p, image, masks, ids):
        heads.append((ids, image is frames[2] or np.array_equal(image, frames[2])))
        fit(p, image, masks, ids)

    prop.adaptation.fit = spy  # type: ignore[method-assign]
    kept = None
    for frame, r in propagate(prop, _frames(frames), first, {2: later}):
        if frame.index == 1:
            kept = prop.adaptation.heads[3]
    assert heads == [([3, 7], False), ([9], True)]
    assert sorted(prop.adaptation.heads) == [3, 7, 9]
    assert prop.adaptation.heads[3] is kept  # the other objects keep their classifiers
    assert r.object_ids == [3, 7, 9]


def test_bad_steps():
    assert parse_steps("12") == 12 and parse_steps(None) == 100
    for bad in ("-1", "abc", "1.5"):
        with pytest.raises(VostoolError, match="--adapt-steps"):
            parse_steps(bad)
    with pytest.raises(VostoolError, match="--adapt-steps"):
        AdaptConfig(steps=-3)


def _error_line(result) -> str:
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def cli_data(tmp_path_factory):
    return cli_clip(tmp_path_factory.mktemp("adapt"), 5, two_objects_frame,
                    {3: (slice(8, 20), slice(4, 16)), 7: (slice(28, 44), slice(40, 56))})


def test_cli_bad_adapt_steps_is_one_line(cli_data, tmp_path):
    root, video, mask, weights = cli_data
    base = ["segment", str(video), "--mask", str(mask), "--weights", str(weights), "--out", str(tmp_path / "o")]
    assert "--adapt-steps" in _error_line(runner.invoke(app, base + ["--adapt", "--adapt-steps", "-1"]))
    assert "--adapt-steps" in _error_line(runner.invoke(app, base + ["--adapt", "--adapt-steps", "ten"]))
    assert "--adapt-steps" in _error_line(runner.invoke(app, base + ["--adapt-steps", "5"]))
    assert not (tmp_path / "o").exists()


def test_cli_segment_adapt_zero_steps_matches_plain(cli_data, tmp_path):
    from PIL import Image

    root, video, mask, weights = cli_data
    base = ["segment", str(video), "--mask", str(mask), "--weights", str(weights), "--outputs", "masks,probs",
            "--quiet", "--device", "cpu", "--precision", "fp32"]
    r0 = runner.invoke(app, base + ["--out", str(tmp_path / "plain")])
    r1 = runner.invoke(app, base + ["--out", str(tmp_path / "zero"), "--adapt", "--adapt-steps", "0"])
    r2 = runner.invoke(app, base + ["--out", str(tmp_path / "adapt"), "--adapt", "--adapt-steps", "5"])
    assert r0.exit_code == 0 and r1.exit_code == 0 and r2.exit_code == 0, (r0.output, r1.output, r2.output)
    for png in sorted((tmp_path / "plain").rglob("*.png")):
        rel = png.relative_to(tmp_path / "plain")
        assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(tmp_path / "zero" / rel))), rel
        assert (tmp_path / "adapt" / rel).is_file()


def test_bench_reports_adaptation_apart_from_fps():
    from vostool.bench import benchmark

    r = benchmark("crvos", random_weights=True, device="cpu", precision="fp32", size=32, frames=2, warmup=1,
                  end_to_end=False, adapt=AdaptConfig(steps=3, augmentations=2))
    assert r.adapt_steps == 3 and r.adapt_s is not None and r.adapt_s > 0
    assert r.to_dict()["adapt_s"] == r.adapt_s
    plain = benchmark("crvos", random_weights=True, device="cpu", precision="fp32", size=32, frames=2, warmup=1,
                      end_to_end=False)
    assert plain.adapt_s is None and plain.adapt_steps is None
