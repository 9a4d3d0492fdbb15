"""Bad options and usage errors in every command: exactly one line on stderr, a non-zero exit,
nothing created; plain help (no boxed panels, no ``<bool>`` metavars)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vostool.cli.app import app
from vostool.io.masks import save_index_png
from vostool.models import build_model, save_checkpoint

runner = CliRunner()
W, H = 64, 48


def invoke(*args: object, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_error_line(result) -> str:
    """The single ``error: ...`` line on stderr of a failed command (nothing else there)."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "╭" not in result.output and "│" not in result.output
    return lines[0]


# -- item 9: usage errors and help ------------------------------------------------------------

def test_usage_errors_are_one_line(tmp_path):
    line = one_error_line(invoke("segment", "x.mp4", "--size", "abc"))
    assert "--size" in line and "vostool segment -h" in line
    assert "Missing argument" in one_error_line(invoke("segment"))
    assert "--bogus" in one_error_line(invoke("segment", "x.mp4", "--bogus"))
    assert "--frames" in one_error_line(invoke("bench", "--frames", "many"))
    assert "--workers" in one_error_line(invoke("eval", "folders", "--gt", tmp_path, "--pred", tmp_path,
                                                "--workers", "x"))
    assert "No such command" in one_error_line(invoke("segmnt"))


def test_help_is_plain_without_bool_metavar():
    for cmd in (["segment"], ["bench"], ["train"], ["models"], ["eval", "davis16"], ["eval", "folders"]):
        r = invoke(*cmd, "--help")
        assert r.exit_code == 0, r.output
        assert "<bool>" not in r.output and "╭" not in r.output, cmd
    r = invoke("segment", "--help")
    assert "--overwrite " in r.output and "--quiet " in r.output


def test_version_and_bare_command_still_work():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.startswith("vostool ")
    r = invoke()
    assert "Usage: vostool" in r.output and "segment" in r.output


def test_models_lists_inference_size_without_breaking_words(tmp_path, monkeypatch):
    torch.manual_seed(0)
    save_checkpoint(build_model("crvos"), tmp_path / "crvos.safetensors", extra={"size": 352})
    monkeypatch.setenv("VOSTOOL_WEIGHTS", str(tmp_path))
    r = invoke("models", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    row = next(ln for ln in lines if ln.startswith("│ crvos"))
    assert "352" in row.split("│")[4]  # the size column
    assert all(len(ln) <= 80 for ln in lines if ln.startswith(("│", "┃", "┏", "└")))
    # the long texts are whole lines (soft-wrapped by the terminal), never cut inside a word
    assert any("CRVOS: Clue Refining Network for Video Object Segmentation" in ln for ln in lines)
    r = invoke("models", "--json")
    crvos = next(m for m in __import__("json").loads(r.output)["models"] if m["model"] == "crvos")
    assert crvos["inference_size"] == 352
    assert crvos["search_window"] == 1.0 and crvos["window_connected"] is True
    dtn = next(m for m in __import__("json").loads(r.output)["models"] if m["model"] == "dtn")
    assert dtn["search_window"] is None and dtn["window_connected"] is False  # no window: nothing to connect


# -- a small clip and random weights for the segment cases ------------------------------------

@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from test_io_helpers import make_video

    root = tmp_path_factory.mktemp("clip")
    video = make_video(root / "clip.mp4", n=6, codec="libx264")
    mask = np.zeros((H, W), np.uint8)
    mask[10:22, 0:12] = 3
    mask[30:40, 40:60] = 7
    save_index_png(root / "first.png", mask)
    torch.manual_seed(0)
    weights = save_checkpoint(build_model("crvos"), root / "crvos.safetensors", extra={"size": 32})
    return video, root / "first.png", weights, mask


def segment(clip, out, *extra: object, mask=None):
    video, first, weights, _ = clip
    return invoke("segment", video, "--mask", mask or first, "--weights", weights, "--out", out,
                  "--device", "cpu", "--outputs", "masks", *extra)


# -- item 3: lossy masks ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_mask_is_one_line_and_nothing_created(clip, tmp_path, mode):
    from PIL import Image

    ids = clip[3]
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[ids == 3] = (128, 0, 0)
    rgb[ids == 7] = (0, 128, 0)
    img = Image.fromarray(rgb)
    (img.convert("L") if mode == "L" else img).save(tmp_path / "mask.jpg", quality=85)
    line = one_error_line(segment(clip, tmp_path / "o", mask=tmp_path / "mask.jpg"))
    assert "JPEG" in line and "lossy" in line and "PNG" in line
    assert not (tmp_path / "o").exists()
    line = one_error_line(segment(clip, tmp_path / "o", "--mask-at", f"2:{tmp_path / 'mask.jpg'}"))
    assert "JPEG" in line and not (tmp_path / "o").exists()


# -- item 6: id 255 -----------------------------------------------------------------------------

def test_grey_mask_with_255_warns_once_and_own_output_round_trips(clip, tmp_path):
    from PIL import Image

    ids = clip[3].copy()
    ids[0:4, :] = 255  # void band in an 8-bit greyscale id mask
    Image.fromarray(ids).save(tmp_path / "grey.png")
    r = segment(clip, tmp_path / "o", mask=tmp_path / "grey.png")
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.stderr.splitlines() if "255 is void" in ln]
    assert len(notes) == 1 and notes[0].startswith("warning:")
    first = np.array(Image.open(tmp_path / "o" / "masks" / "00000.png"))
    assert set(np.unique(first)) == {0, 3, 7}
    # vostool's own output fed back as --mask gives the same objects, no warning
    r = segment(clip, tmp_path / "o2", mask=tmp_path / "o" / "masks" / "00000.png")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.output
    assert set(np.unique(np.array(Image.open(tmp_path / "o2" / "masks" / "00000.png")))) == {0, 3, 7}


# -- item 4: numeric options, the same check in every command ------------------------------------

SEGMENT_BAD = [
    ("--size", "-5"), ("--size", "0"), ("--size", "1"), ("--size", "7"), ("--size", "100000"),
    ("--size", "99999999999999999999"), ("--fps", "inf"), ("--fps", "nan"), ("--fps", "0"), ("--fps", "1e9"),
    ("--max-objects", "-2"), ("--max-objects", "0"), ("--max-objects", "256"), ("--theta-c", "nan"),
    ("--theta-c", "1.5"), ("--theta-c", "-inf"), ("--alpha-object", "0"), ("--alpha-object", "70000"),
    ("--scales", "nan"), ("--scales", "inf"), ("--scales", "0"), ("--scales", "-1"), ("--scales", "1,100"),
    ("--scales", "abc"),
]


@pytest.mark.parametrize("option,value", SEGMENT_BAD)
def test_segment_numeric_options_are_checked_first(clip, tmp_path, option, value):
    line = one_error_line(segment(clip, tmp_path / "o", option, value))
    assert option in line
    if option != "--scales" and value != "abc":
        assert "must be" in line and f"got {value}".replace("1e9", "1e+09") in line  # range, value given
    assert not (tmp_path / "o").exists()


def test_segment_size_and_scales_combined(clip, tmp_path):
    line = one_error_line(segment(clip, tmp_path / "o", "--size", "32", "--scales", "0.25"))
    assert "--scales" in line and "16.." in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [
    ["bench", "--frames", "0"], ["bench", "--frames", "99999999999999999999"], ["bench", "--warmup", "-1"],
    ["bench", "--size", "0"], ["bench", "--objects", "0"], ["bench", "--long", "0"], ["bench", "--threads", "0"],
    ["eval", "davis16", "--size", "-1"], ["eval", "davis17", "--workers", "0"],
    ["eval", "folders", "--gt", ".", "--pred", ".", "--workers", "99999999999999999999"],
    ["train", "--iters", "0"], ["train", "--batch", "-3"], ["train", "--clip-len", "1"], ["train", "--lr", "nan"],
    ["train", "--lr", "0"], ["train", "--ema", "1"], ["train", "--image-ratio", "2"], ["train", "--val-size", "7"],
    ["train", "--max-minutes", "inf"], ["train", "--seed", "-1"], ["train", "--workers", "-1"],
    ["train", "--slots", "0"], ["train", "--objects", "0"],
])
def test_other_commands_numeric_options(args):
    line = one_error_line(invoke(*args))
    assert args[-2] in line and "must be" in line


def test_ranges_are_in_the_help():
    out = invoke("segment", "--help").output
    for text in ("32..4096", "(0, 1000]", "1..255", "0.25..4"):
        assert text in out, text
    assert "1..100000" in invoke("bench", "--help").output
    assert "(0, 1)" in invoke("train", "--help").output


# -- item 8: everything checked before anything is created ---------------------------------------

def test_device_and_precision_errors_create_nothing(clip, tmp_path):
    if not torch.cuda.is_available():
        assert "CUDA" in one_error_line(segment(clip, tmp_path / "o", "--device", "cuda"))
        assert not (tmp_path / "o").exists()
    assert "unknown precision" in one_error_line(segment(clip, tmp_path / "o", "--precision", "fp8"))
    assert "fp16 is not supported on the CPU" in one_error_line(segment(clip, tmp_path / "o", "--precision",
                                                                        "fp16"))
    assert "unknown device" in one_error_line(segment(clip, tmp_path / "o", "--device", "tpu"))
    assert not (tmp_path / "o").exists()


def test_alpha_object_not_in_mask_creates_nothing(clip, tmp_path):
    line = one_error_line(segment(clip, tmp_path / "o", "--alpha-object", "5", "--outputs", "alpha"))
    assert "--alpha-object 5" in line and "3, 7" in line
    assert not (tmp_path / "o").exists()


def test_mask_at_twice_or_past_the_end_creates_nothing(clip, tmp_path):
    _, first, _, _ = clip
    line = one_error_line(segment(clip, tmp_path / "o", "--mask-at", f"2:{first}", "--mask-at", f"2:{first}"))
    assert "frame 2 twice" in line
    line = one_error_line(segment(clip, tmp_path / "o", "--mask-at", f"6:{first}"))  # 6 frames: 0..5
    assert "--mask-at 6 is past the last frame (5)" in line
    assert not (tmp_path / "o").exists()
    r = segment(clip, tmp_path / "ok", "--mask-at", f"5:{first}")  # the last frame is fine
    assert r.exit_code == 0, r.output


def test_bf16_on_a_cpu_without_native_bf16_warns_once(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("VOSTOOL_NO_BF16", "1")  # as on an AVX2-only CPU
    r = segment(clip, tmp_path / "o", "--precision", "bf16")
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.stderr.splitlines() if "bf16" in ln]
    assert len(notes) == 1 and notes[0].startswith("warning:") and "fp32" in notes[0]
    assert ", fp32 ->" in r.stdout  # the summary says what ran


def test_bench_and_eval_check_device_and_precision_first(tmp_path):
    if not torch.cuda.is_available():
        assert "CUDA" in one_error_line(invoke("bench", "--all", "--device", "cuda"))
    assert "fp16 is not supported" in one_error_line(invoke("bench", "--device", "cpu", "--precision", "fp16"))
    line = one_error_line(invoke("eval", "davis16", "--davis-root", tmp_path, "--precision", "fp8",
                                 "--out", tmp_path / "o"))
    assert "unknown precision" in line and not (tmp_path / "o").exists()


def test_theta_c_only_for_models_that_have_it(clip, tmp_path):
    line = one_error_line(segment(clip, tmp_path / "o", "--theta-c", "0.5"))  # crvos has no threshold
    assert "--theta-c applies to dtn only" in line and not (tmp_path / "o").exists()
    from vostool.models import VOSModel

    assert VOSModel.theta_c is None and build_model("dtn").theta_c == pytest.approx(0.83)
