"""Writing segmentation results: PNG sequences and videos, one output folder per input.

Outputs (``--outputs`` names):

- ``masks``: ``masks/<name>.png`` index PNGs (mode P, DAVIS palette), 0 = background.
- ``objects``: ``objects/<id>/<name>.png`` binary 0/255 mask of each object.
- ``probs``: ``probs/<id>/<name>.png`` 8-bit soft mask of each object.
- ``alpha``: ``alpha/<name>.png`` RGBA frame, alpha = foreground.
- ``matte``: ``matte/<name>.png`` greyscale alpha matte.
- ``overlay``: ``overlay.mp4`` H.264 of the source with objects tinted and outlined,
  the source audio copied.
- ``alpha-video``: ``alpha.mov`` (ProRes 4444) or ``alpha.webm`` (VP9 + alpha).

Every file is recorded in the folder's manifest before it is written (see
:mod:`vostool.io.outdir`: ``--overwrite`` replaces only what vostool wrote). Every PNG is
written atomically; videos go to ``<file>.part`` and are renamed when closed, so an
interrupted run leaves only complete, playable files. Videos keep the
source frame count and timestamps (variable frame rate included) and the exact source
size: an odd-sized overlay is H.264 4:4:4 (``yuv444p``, since 4:2:0 H.264 cannot store an
odd width or height); ProRes 4444 and VP9 store odd sizes as they are.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from vostool.errors import VostoolError
from vostool.interrupts import block_signals_in_thread, deferred_signals, raise_if_stopped
from vostool.io.masks import PALETTE_RGB, save_gray_png, save_index_png, save_rgba_png
from vostool.io.outdir import Manifest, check_out_dir, output_targets, prepare_out_dir
from vostool.io.video import FrameSource
from vostool.types import Frame, FrameResult

VALID_OUTPUTS: tuple[str, ...] = ("masks", "objects", "probs", "alpha", "matte", "overlay", "alpha-video")
ALPHA_FORMATS: tuple[str, ...] = ("mov", "webm")

Warn = Callable[[str], None]


def parse_outputs(text: str) -> set[str]:
    """Parse a comma-separated ``--outputs`` value (``all`` selects every output).

    Raises:
        VostoolError: an unknown or empty name list.
    """
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    if "all" in names:
        return set(VALID_OUTPUTS)
    unknown = sorted(names - set(VALID_OUTPUTS))
    if unknown or not names:
        what = f"unknown output {', '.join(unknown)}" if unknown else "no output selected"
        raise VostoolError(f"{what}; valid outputs: {', '.join(VALID_OUTPUTS)} (or all)")
    return names


# ---------------------------------------------------------------------------- rendering


def _color_lut(max_id: int) -> np.ndarray:
    """(max_id + 1) x 3 uint8 palette colours; ids above 255 wrap around, never to black."""
    if max_id < 256:
        return PALETTE_RGB
    idx = np.arange(max_id + 1)
    return PALETTE_RGB[np.where(idx < 256, idx, (idx - 1) % 255 + 1)]


def render_overlay(image: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Tint each object 50% in its DAVIS colour and outline it (2 px contour).

    Args:
        image: H x W x 3 uint8 RGB.
        ids: H x W uint8/uint16 object ids, 0 = background.

    Returns:
        H x W x 3 uint8 RGB.
    """
    lut = _color_lut(int(ids.max(initial=0)))
    out = image.copy()
    fg = ids > 0
    out[fg] = ((image[fg].astype(np.uint16) + lut[ids[fg]]) >> 1).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    dilated = cv2.dilate(ids, kernel)
    edge = dilated != cv2.erode(ids, kernel)  # morphological gradient of the label map
    out[edge] = lut[dilated[edge]]
    return out


# ---------------------------------------------------------------------------- PNG outputs

PngFile = tuple[str, Callable[[Path, np.ndarray], None], np.ndarray]  # (relative path, saver, image)
PngOutput = Callable[[Frame, FrameResult, "np.ndarray | None"], list[PngFile]]


def _png_masks(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> list[PngFile]:
    return [(f"masks/{frame.name}.png", save_index_png, result.index)]


def _png_objects(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> list[PngFile]:
    return [
        (f"objects/{oid}/{frame.name}.png", save_gray_png,
         np.where(result.index == oid, np.uint8(255), np.uint8(0)))
        for oid in result.object_ids
    ]


def _png_probs(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> list[PngFile]:
    return [(f"probs/{oid}/{frame.name}.png", save_gray_png, result.probs[k])
            for k, oid in enumerate(result.object_ids)]


def _png_alpha(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> list[PngFile]:
    return [(f"alpha/{frame.name}.png", save_rgba_png, np.dstack((frame.image, alpha)))]


def _png_matte(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> list[PngFile]:
    return [(f"matte/{frame.name}.png", save_gray_png, alpha)]


_PNG_OUTPUTS: dict[str, PngOutput] = {
    "masks": _png_masks,
    "objects": _png_objects,
    "probs": _png_probs,
    "alpha": _png_alpha,
    "matte": _png_matte,
}

# ---------------------------------------------------------------------------- video outputs


@dataclass(frozen=True)
class VideoSpec:
    """How one video output is encoded and what each of its frames shows."""

    filename: str
    container: str
    codec: str
    pix_fmt: str
    input_format: str  # "rgb24" or "rgba"
    render: Callable[[Frame, FrameResult, "np.ndarray | None"], np.ndarray]
    options: dict[str, str] = field(default_factory=dict)
    copy_audio: bool = False
    odd_pix_fmt: str | None = None  # pixel format for an odd width or height (default: pix_fmt)

    def pixel_format(self, width: int, height: int) -> str:
        """The pixel format that stores a ``width`` x ``height`` frame without padding."""
        odd = width % 2 or height % 2
        return self.odd_pix_fmt if odd and self.odd_pix_fmt else self.pix_fmt


def _overlay(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> np.ndarray:
    return render_overlay(frame.image, result.index)


def _rgba(frame: Frame, result: FrameResult, alpha: np.ndarray | None) -> np.ndarray:
    return np.dstack((frame.image, alpha))


OVERLAY_SPEC = VideoSpec(
    "overlay.mp4", "mp4", "libx264", "yuv420p", "rgb24", _overlay, {"crf": "18", "preset": "veryfast"}, True,
    odd_pix_fmt="yuv444p",  # 4:2:0 H.264 needs even sizes (its crop unit is 2 pixels)
)
_VP9_OPTIONS = {"crf": "20", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"}
ALPHA_SPECS: dict[str, VideoSpec] = {
    "mov": VideoSpec("alpha.mov", "mov", "prores_ks", "yuva444p10le", "rgba", _rgba, {"profile": "4444"}),
    "webm": VideoSpec("alpha.webm", "webm", "libvpx-vp9", "yuva420p", "rgba", _rgba, _VP9_OPTIONS),
}


class _AudioCopy:
    """Copies (no re-encode) the source's audio packets into an output container."""

    def __init__(self, source: Path, out: av.container.OutputContainer, warn: Warn) -> None:
        self._warn = warn
        self._input = av.open(str(source))
        self._stream = self._input.streams.audio[0]
        codec = self._stream.codec_context.name
        if codec not in out.supported_codecs:
            self.close()
            raise ValueError(f"audio codec {codec} cannot be stored in {out.format.name}")
        self._out = out
        self._ostream = out.add_stream_from_template(self._stream)
        self._packets = self._input.demux(self._stream)
        self._pending: av.Packet | None = None

    def mux_until(self, time: Fraction | None) -> None:
        """Mux the audio packets whose time is <= ``time`` (all of them when None)."""
        if self._input is None:
            return
        try:
            while True:
                packet = self._pending or next(self._packets, None)
                self._pending = None
                if packet is None:
                    self.close()
                    return
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None:  # demuxer flush packet
                    continue
                if time is not None and ts * packet.time_base > time:
                    self._pending = packet
                    return
                packet.stream = self._ostream
                self._out.mux(packet)
        except av.FFmpegError as exc:
            self._warn(f"audio copy stopped: {exc}")
            self.close()

    def close(self) -> None:
        if self._input is not None:
            self._input.close()
            self._input = None


class VideoEncoder:
    """Encodes frames into one video file, keeping their timestamps.

    Opens the file lazily on the first frame (``<name>.part``); ``close()`` flushes the
    encoder, closes the container and renames it to the final name.
    """

    def __init__(
        self, path: Path, spec: VideoSpec, rate: Fraction | None, audio_from: Path | None, warn: Warn
    ) -> None:
        self.path, self.spec, self._rate, self._audio_from, self._warn = path, spec, rate, audio_from, warn
        self.part = path.with_name(path.name + ".part")
        self.frames = 0
        self._out: av.container.OutputContainer | None = None
        self._stream: Any = None
        self._audio: _AudioCopy | None = None
        self._pending: list[av.Packet] = []
        self._last_pts: int | None = None
        self._time_base = Fraction(1, 1)
        self._end_time = Fraction(0)

    def _open(self, width: int, height: int, time_base: Fraction) -> None:
        spec = self.spec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(self.part), "w", format=spec.container)
        try:
            stream = out.add_stream(spec.codec, rate=self._rate or Fraction(25), options=dict(spec.options))
            stream.width, stream.height, stream.pix_fmt = width, height, spec.pixel_format(width, height)
            stream.time_base = stream.codec_context.time_base = time_base
            if self._audio_from is not None:
                try:
                    self._audio = _AudioCopy(self._audio_from, out, self._warn)
                except (ValueError, av.FFmpegError) as exc:
                    self._warn(f"{self.path.name}: audio not copied ({exc})")
        except BaseException:
            out.close()
            self.part.unlink(missing_ok=True)
            raise
        self._out, self._stream, self._time_base = out, stream, time_base

    def write(self, image: np.ndarray, pts: int, time_base: Fraction) -> None:
        """Encode one H x W x C uint8 frame (C = 3 RGB or 4 RGBA) at ``pts * time_base``.

        Timestamps must increase; a repeated or decreasing one is bumped by one tick.
        """
        if self._out is None:
            self._open(image.shape[1], image.shape[0], time_base)
        pts = round(pts * time_base / self._time_base) if time_base != self._time_base else pts
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=self.spec.input_format)
        vframe.pts = pts
        time = pts * self._time_base
        if self._audio is not None:
            self._audio.mux_until(time)
        self._pending.extend(self._stream.encode(vframe))
        self._mux_pending()
        self._last_pts, self.frames = pts, self.frames + 1
        step = 1 / self._rate if self._rate else Fraction(0)
        self._end_time = time + step

    def _mux_pending(self) -> None:
        while self._pending:  # one at a time, so an interrupt never drops a packet
            self._out.mux(self._pending[0])
            self._pending.pop(0)

    def close(self, aborted: bool = False) -> None:
        """Finish the file; with ``aborted`` the audio is cut at the last video frame."""
        out = self._out
        if out is None:
            return
        error: BaseException | None = None
        try:
            self._mux_pending()
            self._pending.extend(self._stream.encode(None))  # flush delayed frames
            self._mux_pending()
            if self._audio is not None:
                self._audio.mux_until(self._end_time if aborted else None)
        except BaseException as exc:
            error = exc
        finally:
            self._out = None
            if self._audio is not None:
                self._audio.close()
        try:
            out.close()
        except BaseException as exc:
            error = error or exc
            self.part.unlink(missing_ok=True)
        if self.part.exists():
            if self.frames:
                os.replace(self.part, self.path)
            else:
                self.part.unlink()
        if error is not None:
            raise error


# ---------------------------------------------------------------------------- writers


class OutputWriter:
    """Writes the selected outputs of one input into ``out_dir``.

    Args:
        out_dir: output folder (see :func:`prepare_out_dir`).
        outputs: names from :data:`VALID_OUTPUTS`.
        source: the input, for the frame rate and the audio.
        alpha_object: object whose probability is the alpha (None = all objects).
        alpha_format: ``mov`` (ProRes 4444) or ``webm`` (VP9 with alpha).
        warn: called with a one-line message for non-fatal problems.
        preview: tiles of ``preview.jpg``, a contact sheet of overlay frames spread over the
            video (:mod:`vostool.io.preview`), written on close; 0 = none.
    """

    def __init__(
        self,
        out_dir: Path,
        outputs: set[str],
        source: FrameSource,
        alpha_object: int | None = None,
        alpha_format: str = "mov",
        warn: Warn | None = None,
        preview: int = 0,
    ) -> None:
        unknown = set(outputs) - set(VALID_OUTPUTS)
        if unknown:
            parse_outputs(",".join(sorted(unknown)))  # raises with the list of valid names
        if alpha_format not in ALPHA_SPECS:
            raise VostoolError(f"unknown alpha format {alpha_format!r}; use one of: {', '.join(ALPHA_SPECS)}")
        self.out_dir = Path(out_dir)
        self.outputs = set(outputs)
        self.alpha_object = alpha_object
        self.frames_written = 0
        self._warn: Warn = warn or (lambda message: None)
        self._closed = False
        self._pngs = [fn for name, fn in _PNG_OUTPUTS.items() if name in outputs]
        self._needs_alpha = bool(self.outputs & {"alpha", "matte", "alpha-video"})
        self._fallback_tb = 1 / source.fps if source.fps else Fraction(1, 25)
        specs = [OVERLAY_SPEC] if "overlay" in outputs else []
        specs += [ALPHA_SPECS[alpha_format]] if "alpha-video" in outputs else []
        self._videos = [
            VideoEncoder(
                self.out_dir / spec.filename,
                spec,
                source.fps,
                Path(source.path) if spec.copy_audio and source.has_audio else None,
                self._warn,
            )
            for spec in specs
        ]
        self._manifest = Manifest(self.out_dir)
        from vostool.io.preview import ContactSheet  # it imports this module

        self._preview = ContactSheet(preview, source.num_frames) if preview > 0 else None

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Write every selected output for one frame (``result`` at the frame's size).

        A frame goes to every output or to none: a stop signal arriving meanwhile takes
        effect once the frame is written (see :mod:`vostool.interrupts`).
        """
        if self._closed:
            raise RuntimeError("OutputWriter is closed")
        raise_if_stopped()  # a stop whose exception was lost still ends the run here
        with deferred_signals():
            self._write(frame, result)

    def _write(self, frame: Frame, result: FrameResult) -> None:
        alpha = None
        if self._needs_alpha:
            if self.alpha_object is not None and self.alpha_object not in result.object_ids:
                raise VostoolError(
                    f"alpha object {self.alpha_object} is not one of the objects {result.object_ids}"
                )
            alpha = result.foreground(self.alpha_object)
        try:
            pngs = [item for png_output in self._pngs for item in png_output(frame, result, alpha)]
            # on record before anything is created: --overwrite may later replace exactly these
            self._manifest.record([rel for rel, _, _ in pngs] + [v.path.name for v in self._videos])
            for rel, save, image in pngs:
                save(self.out_dir / rel, image)
            if self._videos:
                pts = frame.pts if frame.pts is not None else frame.index
                tb = frame.time_base if frame.pts is not None and frame.time_base else self._fallback_tb
                for video in self._videos:
                    video.write(video.spec.render(frame, result, alpha), pts, tb)
            if self._preview is not None:
                self._preview.add(frame, result)
        except (OSError, av.FFmpegError) as exc:
            raise VostoolError(f"cannot write outputs to {self.out_dir} ({exc})") from None
        self.frames_written += 1

    def close(self, aborted: bool = False) -> None:
        """Finish the videos (idempotent). ``aborted`` cuts copied audio at the last frame.

        Stop signals wait until the videos are finished.
        """
        if self._closed:
            return
        with deferred_signals():
            self._close(aborted)

    def _close(self, aborted: bool) -> None:
        self._closed = True
        errors: list[BaseException] = []
        if self._preview is not None and self._preview.seen:
            from vostool.io.preview import PREVIEW_NAME

            try:
                self._manifest.record([PREVIEW_NAME])
                self._preview.save(self.out_dir / PREVIEW_NAME)
            except BaseException as exc:
                errors.append(exc)
        self._manifest.close()
        for video in self._videos:
            try:
                video.close(aborted)
            except BaseException as exc:
                errors.append(exc)
        if errors:
            if isinstance(errors[0], (OSError, av.FFmpegError)):
                raise VostoolError(f"cannot finish videos in {self.out_dir} ({errors[0]})") from None
            raise errors[0]

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        _close_on_exit(self, exc_type, self._warn)


class AsyncWriter:
    """Runs an :class:`OutputWriter` in a background thread behind a bounded queue.

    ``write()`` returns as soon as the frame is queued (blocking while 8 are waiting);
    an exception raised by the writer thread is re-raised by the next ``write()`` or by
    ``close()``. ``close()`` writes everything queued so far, then closes the writer.
    """

    def __init__(self, writer: OutputWriter, maxsize: int = 8) -> None:
        self.writer = writer
        self._queue: queue.Queue[tuple[Frame, FrameResult] | None] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self._raised = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vostool-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        block_signals_in_thread()  # signals go to the main thread, never cut a write here
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure, keep draining so write() never blocks
                try:
                    self.writer.write(*item)
                except BaseException as exc:
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def write(self, frame: Frame, result: FrameResult) -> None:
        """Queue one frame's result; re-raises an earlier failure of the writer thread."""
        if self._closed:
            raise RuntimeError("AsyncWriter is closed")
        raise_if_stopped()  # a stop whose exception was lost still ends the run here
        self._raise_error()
        self._queue.put((frame, result))

    def close(self, aborted: bool = False) -> None:
        """Drain the queue, stop the thread and close the writer (idempotent).

        Stop signals wait until everything queued is written and the videos are finished.
        """
        if self._closed:
            return
        self._closed = True
        with deferred_signals():
            self._queue.put(None)
            self._thread.join()
            try:
                self.writer.close(aborted or self._error is not None)
            finally:
                self._raise_error()

    def __enter__(self) -> AsyncWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        _close_on_exit(self, exc_type, self.writer._warn)


def _close_on_exit(writer: OutputWriter | AsyncWriter, exc_type: type | None, warn: Warn) -> None:
    """Close on leaving a ``with`` block; a close error never hides the error in flight."""
    if exc_type is None:
        writer.close()
        return
    try:
        writer.close(aborted=True)
    except Exception as exc:
        warn(f"while stopping: {exc}")
