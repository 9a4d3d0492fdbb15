"""Synthetic test data for the I/O tests (imported by the other test_io_* files)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H, SQ = 64, 48, 12  # frame size and square side


def square_frame(i: int, width: int = W, height: int = H) -> np.ndarray:
    """H x W x 3 uint8: dark grey background, white square at x = 4 i, y = 10."""
    img = np.full((height, width, 3), 40, np.uint8)
    x = (4 * i) % (width - SQ)
    img[10 : 10 + SQ, x : x + SQ] = 255
    return img


def square_x(img: np.ndarray) -> float:
    """Estimated left edge of the white square."""
    cols = np.nonzero((img[..., 0] > 150).sum(0) >= SQ // 2)[0]
    return float(cols.min()) if len(cols) else -1.0


def make_video(
    path: Path,
    n: int = 12,
    codec: str = "mpeg4",
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 24),
    audio: str | None = None,
    size: tuple[int, int] = (W, H),
    frame_fn=square_frame,
) -> Path:
    """Write a clip of moving squares; ``pts`` makes it variable frame rate, ``audio`` is a codec."""
    pts = pts if pts is not None else list(range(n))
    with av.open(str(path), "w") as out:
        rate = int(round(1 / time_base))
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.time_base = vs.codec_context.time_base = time_base
        if audio:
            sr = 44100 if audio == "aac" else 8000
            aus = out.add_stream(audio, rate=sr, layout="mono")
            total = int(sr * (pts[-1] + 1) * time_base)
            t = np.arange(total) / sr
            wave = 0.3 * np.sin(2 * np.pi * 440 * t)
            fmt = aus.format.name  # fltp for aac, s16 for pcm codecs
            wave = wave.astype(np.float32) if fmt == "fltp" else (wave * 32767).astype(np.int16)
            for start in range(0, total, 1024):
                af = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format=fmt, layout="mono")
                af.sample_rate, af.pts = sr, start
                for packet in aus.encode(af):
                    out.mux(packet)
            for packet in aus.encode():
                out.mux(packet)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(frame_fn(i, *size), format="rgb24")
            frame.pts = p
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


def decode_times(path: Path) -> list[Fraction]:
    """Presentation times (seconds) of every frame of a video's first video stream."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [f.pts * stream.time_base for f in c.decode(stream)]
