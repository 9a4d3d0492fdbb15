from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from test_io_helpers import SQ, H, W, decode_times, make_video, square_x

from vostool.errors import VostoolError
from vostool.io import (
    PALETTE_RGB,
    VALID_OUTPUTS,
    AsyncWriter,
    OutputWriter,
    open_source,
    parse_outputs,
    prepare_out_dir,
    read_mask,
    render_overlay,
)
from vostool.types import Frame, FrameResult

OBJ = [3, 7]


def fake_result(frame: Frame) -> FrameResult:
    """Object 3 = the moving square (prob 200), object 7 = a fixed bar (prob 100)."""
    h, w = frame.image.shape[:2]
    index = np.zeros((h, w), np.uint8)
    x = int(square_x(frame.image))
    index[10 : 10 + SQ, x : x + SQ] = 3
    index[h - 8 :, 4:20] = 7
    probs = np.stack([np.where(index == oid, 200 if oid == 3 else 100, 0).astype(np.uint8) for oid in OBJ])
    return FrameResult(index, probs, list(OBJ))


def run_writer(src_path: Path, out: Path, outputs: set[str], **kw) -> list[str]:
    warnings: list[str] = []
    with open_source(src_path) as src, OutputWriter(out, outputs, src, warn=warnings.append, **kw) as writer:
        for frame in src:
            writer.write(frame, fake_result(frame))
    return warnings


def test_parse_outputs_and_prepare_out_dir(tmp_path):
    assert parse_outputs("masks, overlay") == {"masks", "overlay"}
    assert parse_outputs("all") == set(VALID_OUTPUTS)
    with pytest.raises(VostoolError, match="unknown output bogus; valid outputs: masks, objects"):
        parse_outputs("masks,bogus")
    out = tmp_path / "out"
    prepare_out_dir(out, overwrite=False)
    src_path = make_video(tmp_path / "clip.mkv", n=3)
    run_writer(src_path, out, {"masks", "overlay"})
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(VostoolError, match=r"already holds vostool outputs \(masks/, overlay.mp4\); pass --overwrite"):
        prepare_out_dir(out, overwrite=False)
    prepare_out_dir(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]  # the emptied manifest goes too


def test_all_outputs_round_trip(tmp_path):
    src_path = make_video(tmp_path / "clip.mp4", n=10, codec="libx264")
    out = tmp_path / "out"
    assert run_writer(src_path, out, set(VALID_OUTPUTS)) == []
    names = [f"{i:05d}.png" for i in range(10)]
    for sub in ["masks", "objects/3", "objects/7", "probs/3", "probs/7", "alpha", "matte"]:
        assert sorted(p.name for p in (out / sub).iterdir()) == names, sub
    with open_source(src_path) as src:
        frames = list(src)
    for frame in frames[:: 3]:
        res = fake_result(frame)
        name = f"{frame.name}.png"
        with Image.open(out / "masks" / name) as img:
            assert img.mode == "P" and np.array_equal(np.array(img), res.index)
        assert read_mask(out / "masks" / name).object_ids == OBJ
        for k, oid in enumerate(OBJ):
            obj = np.array(Image.open(out / "objects" / str(oid) / name))
            assert set(np.unique(obj)) == {0, 255} and np.array_equal(obj == 255, res.index == oid)
            assert np.array_equal(np.array(Image.open(out / "probs" / str(oid) / name)), res.probs[k])
        alpha = np.array(Image.open(out / "alpha" / name))
        assert alpha.shape == (H, W, 4)
        assert np.array_equal(alpha[..., 3], res.foreground()) and np.array_equal(alpha[..., :3], frame.image)
        assert np.array_equal(np.array(Image.open(out / "matte" / name)), res.foreground())
    assert decode_times(out / "overlay.mp4") == [Fraction(i, 24) for i in range(10)]
    with av.open(str(out / "alpha.mov")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "prores"
        decoded = [f for f in c.decode(stream)]
        assert len(decoded) == 10 and decoded[0].format.name.startswith("yuva444p")
        rgba = decoded[4].to_ndarray(format="rgba")
    fg = fake_result(frames[4]).foreground()
    assert np.abs(rgba[..., 3].astype(int) - fg).max() <= 2
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tmp*"))


def test_overlay_render_tints_and_outlines():
    image = np.full((20, 20, 3), 100, np.uint8)
    ids = np.zeros((20, 20), np.uint8)
    ids[5:15, 5:15] = 3
    out = render_overlay(image, ids)
    color = PALETTE_RGB[3].astype(int)
    assert out[10, 10].tolist() == ((100 + color) // 2).tolist()  # inside: 50% tint
    assert out[5, 10].tolist() == color.tolist() and out[4, 10].tolist() == color.tolist()  # 2 px contour
    assert out[0, 0].tolist() == [100, 100, 100]


def test_vfr_overlay_and_alpha_webm_keep_timestamps(tmp_path):
    pts = [0, 1, 3, 7, 8, 9, 12, 20, 21, 22]
    src_path = make_video(tmp_path / "vfr.mp4", codec="libx264", pts=pts, time_base=Fraction(1, 30))
    out = tmp_path / "out"
    run_writer(src_path, out, {"overlay", "alpha-video"}, alpha_format="webm", alpha_object=3)
    expected = [Fraction(p, 30) for p in pts]
    assert decode_times(out / "overlay.mp4") == expected
    webm = decode_times(out / "alpha.webm")  # Matroska stores milliseconds
    assert [round(float(t), 3) for t in webm] == [round(float(t), 3) for t in expected]
    with av.open(str(out / "alpha.webm")) as c:
        stream = c.streams.video[0]
        assert stream.metadata.get("alpha_mode") == "1"
        decoder = av.CodecContext.create("libvpx-vp9", "r")  # the native vp9 decoder drops alpha
        frames = [f for packet in c.demux(stream) for f in decoder.decode(packet)]
    assert len(frames) == len(pts) and frames[0].format.name == "yuva420p"
    alpha = frames[0].to_ndarray(format="rgba")[..., 3]
    assert alpha[10 + SQ // 2, SQ // 2] > 150 and alpha[H - 4, 10] < 30  # object 3 only


def test_overlay_copies_audio(tmp_path):
    src_path = make_video(tmp_path / "talk.mp4", n=12, codec="libx264", audio="aac")
    out = tmp_path / "out"
    assert run_writer(src_path, out, {"overlay"}) == []
    with av.open(str(src_path)) as c:
        src_packets = sum(1 for p in c.demux(c.streams.audio[0]) if p.size)
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
        packets = sum(1 for p in c.demux(c.streams.audio[0]) if p.size)
    assert packets == src_packets
    assert len(decode_times(out / "overlay.mp4")) == 12


@pytest.mark.parametrize("alpha_format", ["mov", "webm"])
def test_odd_size_videos_keep_the_source_size(tmp_path, alpha_format):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((21, 33, 3), 50 * i, np.uint8)).save(folder / f"im{i}.png")
    out = tmp_path / "out"
    with open_source(folder, fps=10) as src, OutputWriter(out, {"overlay", "masks", "alpha-video"}, src,
                                                          alpha_format=alpha_format) as writer:
        for frame in src:
            result = FrameResult(np.ones((21, 33), np.uint8), np.full((1, 21, 33), 255, np.uint8), [1])
            writer.write(frame, result)
    assert decode_times(out / "overlay.mp4") == [Fraction(i, 10) for i in range(5)]
    for name in ("overlay.mp4", f"alpha.{alpha_format}"):
        with av.open(str(out / name)) as c:
            stream = c.streams.video[0]
            assert (stream.width, stream.height) == (33, 21), name
            frames = list(c.decode(stream))
        assert len(frames) == 5 and {(f.width, f.height) for f in frames} == {(33, 21)}, name
    with av.open(str(out / "overlay.mp4")) as c:
        last = next(iter(c.decode(video=0)))
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
    rgb = last.to_ndarray(format="rgb24")
    assert rgb.shape == (21, 33, 3)
    assert sorted(p.stem for p in (out / "masks").iterdir()) == [f"im{i}" for i in range(5)]


def test_even_size_overlay_stays_yuv420p(tmp_path):
    src_path = make_video(tmp_path / "clip.mkv", n=3)
    out = tmp_path / "out"
    run_writer(src_path, out, {"overlay"})
    with av.open(str(out / "overlay.mp4")) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.pix_fmt == "yuv420p" and (stream.width, stream.height) == (W, H)


def test_interrupted_run_leaves_complete_files(tmp_path):
    src_path = make_video(tmp_path / "talk.mp4", n=12, codec="libx264", audio="aac")
    out = tmp_path / "out"
    with open_source(src_path) as src, pytest.raises(KeyboardInterrupt):
        with OutputWriter(out, {"masks", "overlay", "alpha-video"}, src) as writer:
            for frame in src:
                writer.write(frame, fake_result(frame))
                if frame.index == 4:
                    raise KeyboardInterrupt
    assert sorted(p.name for p in (out / "masks").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    for p in (out / "masks").iterdir():
        assert read_mask(p).object_ids == OBJ
    assert decode_times(out / "overlay.mp4") == [Fraction(i, 24) for i in range(5)]
    assert len(decode_times(out / "alpha.mov")) == 5
    with av.open(str(out / "overlay.mp4")) as c:  # audio cut near the last frame
        assert float(c.streams.audio[0].duration * c.streams.audio[0].time_base) < 0.35
    assert not list(out.rglob("*.part")) and not list(out.rglob("*.tmp*"))


def test_async_writer_writes_everything(tmp_path):
    src_path = make_video(tmp_path / "clip.mkv", n=10)
    out = tmp_path / "out"
    with open_source(src_path) as src:
        with AsyncWriter(OutputWriter(out, {"masks", "overlay"}, src)) as writer:
            for frame in src:
                writer.write(frame, fake_result(frame))
    assert len(list((out / "masks").iterdir())) == 10
    assert len(decode_times(out / "overlay.mp4")) == 10


def test_async_writer_reraises(tmp_path):
    src_path = make_video(tmp_path / "clip.mkv", n=10)
    with open_source(src_path) as src:
        # alpha object 9 does not exist: the writer thread fails on the first frame
        writer = AsyncWriter(OutputWriter(tmp_path / "out", {"matte"}, src, alpha_object=9))
        with pytest.raises(VostoolError, match=r"alpha object 9 is not one of the objects \[3, 7\]"):
            for frame in src:
                writer.write(frame, fake_result(frame))
            writer.close()
        writer.close()  # idempotent, does not raise twice


def test_unsupported_audio_is_skipped_with_warning(tmp_path):
    src_path = make_video(tmp_path / "clip.avi", n=6, audio="pcm_mulaw")
    out = tmp_path / "out"
    warnings = run_writer(src_path, out, {"overlay"})
    assert len(warnings) == 1 and "audio not copied" in warnings[0] and "pcm_mulaw" in warnings[0]
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.audio) == 0
    assert len(decode_times(out / "overlay.mp4")) == 6


def test_bad_alpha_format(tmp_path):
    src_path = make_video(tmp_path / "clip.mkv", n=2)
    with open_source(src_path) as src, pytest.raises(VostoolError, match="alpha format"):
        OutputWriter(tmp_path / "out", {"alpha-video"}, src, alpha_format="gif")
