from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image
from test_io_helpers import H, W, make_video, square_frame, square_x

from vostool.errors import VostoolError
from vostool.io import expand_inputs, open_source
from vostool.types import Frame


def test_video_decodes_lazily_with_content_and_pts(tmp_path):
    path = make_video(tmp_path / "clip.mp4", n=12, codec="libx264")
    with open_source(path) as src:
        assert src.is_video and not src.has_audio
        assert (src.width, src.height, src.num_frames) == (W, H, 12)
        assert src.fps == 24 and src.stem == "clip"
        frames = list(src)
    assert [f.index for f in frames] == list(range(12))
    assert [f.name for f in frames] == [f"{i:05d}" for i in range(12)]
    assert all(isinstance(f, Frame) for f in frames)
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    for i, f in enumerate(frames):
        assert abs(square_x(f.image) - square_x(square_frame(i))) <= 1
    assert [f.time for f in frames] == pytest.approx([i / 24 for i in range(12)])


def test_variable_frame_rate_pts_preserved(tmp_path):
    pts = [0, 1, 3, 7, 8, 9, 12, 20, 21, 22]
    path = make_video(tmp_path / "vfr.mp4", codec="libx264", pts=pts, time_base=Fraction(1, 30))
    with open_source(path) as src:
        times = [f.pts * f.time_base for f in src]
        assert all(f.time_base == src.time_base for f in src)
    assert times == [Fraction(p, 30) for p in pts]


def _live_frames() -> int:
    return sum(isinstance(o, Frame) for o in gc.get_objects())


def test_memory_does_not_grow_with_length(tmp_path):
    """600 frames stream through with only a handful alive at any time.

    PyAV hands out frame pixels without a copy (FFmpeg-allocated, invisible to
    tracemalloc), so the live Frame objects are counted as well as Python allocations.
    """
    w, h, n = 160, 120, 600
    path = make_video(tmp_path / "long.mkv", n=n, size=(w, h))
    count, most_alive, peak = 0, 0, 0
    with open_source(path) as src:
        tracemalloc.start()
        try:
            for frame in src:
                count += 1
                if count % 50 == 0:
                    time.sleep(0.02)  # a slow consumer: let the decoder fill its queue
                    peak = max(peak, tracemalloc.get_traced_memory()[1])
                    # gc.get_objects() allocates a list of every object: keep it out of the peak
                    most_alive = max(most_alive, _live_frames())
                    tracemalloc.reset_peak()
            peak = max(peak, tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert count == n
    assert 2 <= most_alive <= 8  # the consumer's frame + the bounded queue
    assert peak < 20 * w * h * 3, f"peak {peak} bytes = {peak / (w * h * 3):.1f} frames"


def test_early_close_stops_decoding_thread(tmp_path):
    path = make_video(tmp_path / "clip.mkv", n=60)
    before = threading.active_count()
    src = open_source(path)
    it = iter(src)
    next(it)
    assert threading.active_count() == before + 1
    src.close()
    it.close()
    assert threading.active_count() == before
    # a new iteration starts again from the first frame
    assert len(list(src)) == 60


def test_image_folder_natural_sort(tmp_path):
    names = ["f10.png", "f2.png", "f1.jpg", "f100.bmp", "notes.txt"]
    for i, name in enumerate(names[:-1]):
        Image.fromarray(square_frame(i)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(tmp_path, fps=10) as src:
        assert not src.is_video and src.num_frames == 4 and (src.width, src.height) == (W, H)
        assert src.fps == 10 and src.stem == tmp_path.name
        frames = list(src)
    assert [f.name for f in frames] == ["f1", "f2", "f10", "f100"]
    assert [f.pts for f in frames] == [0, 1, 2, 3] and frames[0].time_base == Fraction(1, 10)
    assert square_x(frames[1].image) == square_x(square_frame(1))  # f2.png, lossless


def test_expand_inputs(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ["b10.mp4", "b2.mov", "a.mkv"]:
        (videos / name).write_bytes(b"x")
    (videos / "readme.txt").write_text("x")
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(square_frame(0)).save(frames / "0.png")
    single = tmp_path / "single.mp4"
    single.write_bytes(b"x")
    got = expand_inputs([single, str(videos), frames])
    assert got == [single, videos / "a.mkv", videos / "b2.mov", videos / "b10.mp4", frames]
    with pytest.raises(VostoolError, match="no such file"):
        expand_inputs([tmp_path / "missing.mp4"])


def test_error_missing_path(tmp_path):
    with pytest.raises(VostoolError, match="no such file or folder"):
        open_source(tmp_path / "nope.mp4")


def test_error_random_bytes(tmp_path):
    path = tmp_path / "x.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VostoolError, match="x.mp4: not a readable video file") as info:
        open_source(path)
    assert "\n" not in str(info.value)


def test_error_empty_folder_and_no_images(tmp_path):
    with pytest.raises(VostoolError, match="folder has no images"):
        open_source(tmp_path)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(VostoolError, match="folder has no images"):
        open_source(tmp_path)


def test_error_corrupt_image_in_folder(tmp_path):
    Image.fromarray(square_frame(0)).save(tmp_path / "0.png")
    (tmp_path / "1.png").write_bytes(b"garbage")
    with open_source(tmp_path) as src, pytest.raises(VostoolError, match="1.png: cannot read image"):
        list(src)


def test_error_no_video_stream(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*stream.encode(frame), *stream.encode()]:
            out.mux(packet)
    with pytest.raises(VostoolError, match="no video stream"):
        open_source(path)


def test_error_corrupt_frame_mid_video(tmp_path):
    def noise(i, w, h):
        return np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)

    path = make_video(tmp_path / "c.mp4", n=30, codec="libx264", frame_fn=noise)
    data = bytearray(path.read_bytes())
    n = len(data)
    garbage = np.random.default_rng(0).integers(0, 256, n // 5, dtype=np.uint8).tobytes()
    data[n // 3 : n // 3 + n // 5] = garbage
    path.write_bytes(bytes(data))
    with open_source(path) as src:
        count = 0
        with pytest.raises(VostoolError, match=r"c.mp4: corrupt video data at frame \d+") as info:
            for _ in src:
                count += 1
    assert 0 < count < 30
    assert f"at frame {count} " in str(info.value)
