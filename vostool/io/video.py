"""Frame sources: video files (decoded lazily with PyAV) and folders of frame images.

Frames are produced by a background thread into a small bounded queue, so decoding
overlaps whatever the consumer does with each frame (model inference, encoding) while
at most a handful of frames are alive at any time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from vostool.data.files import (  # noqa: F401  (IMAGE_EXTS, natural_key: re-exported by vostool.io)
    IMAGE_EXTS, list_images, natural_key, read_frame,
)
from vostool.errors import VostoolError
from vostool.interrupts import block_signals_in_thread
from vostool.types import Frame

VIDEO_EXTS = frozenset(
    {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".gif"}
)
DEFAULT_FOLDER_FPS = 24.0
PREFETCH_FRAMES = 4


def _is_video(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTS and not path.name.startswith(".")


def _sorted_files(folder: Path, keep: Callable[[Path], bool]) -> list[Path]:
    return sorted((p for p in folder.iterdir() if keep(p)), key=lambda p: natural_key(p.name))


def output_stem(path: Path) -> str:
    """The name an input's outputs are called by: a video's stem, a folder's name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


class _Prefetcher:
    """Runs ``produce()`` (a generator factory) in a thread, handing items over a bounded queue.

    Exceptions raised by the producer are re-raised in the consumer; ``close()`` stops
    the thread even if the consumer stops iterating early.
    """

    _END = object()

    def __init__(self, produce: Callable[[], Iterator[Any]], maxsize: int = PREFETCH_FRAMES) -> None:
        self._produce = produce
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vostool-decode", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        block_signals_in_thread()  # stop signals are the main thread's to handle
        gen = self._produce()
        try:
            for item in gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer
            self._put(exc)
        finally:
            gen.close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                while True:
                    self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


class FrameSource:
    """An input to segment: iterate it to get :class:`vostool.types.Frame` objects.

    Attributes:
        path: the video file or image folder.
        is_video: True for a video file, False for an image folder.
        width, height: frame size in pixels.
        num_frames: best known frame count (exact for folders, may be None or an
            estimate for videos).
        fps: average frame rate, or None if unknown.
        time_base: unit of ``Frame.pts``.
        has_audio: whether the file has an audio stream.
        stem: a name for the default output folder.

    Iterating yields frames with ``image`` H x W x 3 uint8 RGB. Each iteration starts
    from the first frame; frames are decoded lazily in a background thread.
    """

    path: Path
    is_video: bool
    width: int
    height: int
    num_frames: int | None
    fps: Fraction | None
    time_base: Fraction
    has_audio: bool
    stem: str

    def __init__(self) -> None:
        self._active: set[_Prefetcher] = set()

    def _frames(self) -> Iterator[Frame]:  # runs in the decoding thread
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        prefetcher = _Prefetcher(self._frames)
        self._active.add(prefetcher)
        try:
            yield from prefetcher
        finally:
            prefetcher.close()
            self._active.discard(prefetcher)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("frame count unknown")
        return self.num_frames

    def close(self) -> None:
        """Stop any decoding thread still running. Safe to call twice."""
        for prefetcher in list(self._active):
            prefetcher.close()
        self._active.clear()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "video" if self.is_video else "folder"
        return f"<FrameSource {kind} {self.path} {self.width}x{self.height} frames={self.num_frames}>"


class ImageFolderSource(FrameSource):
    """A folder of frame images, naturally sorted by file name, read one at a time."""

    def __init__(self, path: Path, fps: float | None = None) -> None:
        super().__init__()
        self.path, self.is_video, self.has_audio, self.stem = path, False, False, output_stem(path)
        self.files = list_images(path)
        if not self.files:
            raise VostoolError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_EXTS))})")
        check_frame_names(self.files, path)
        rate = fps if fps is not None else DEFAULT_FOLDER_FPS
        if not rate > 0:
            raise VostoolError(f"--fps must be positive, got {rate}")
        self.fps = Fraction(rate).limit_denominator(1001 * 1000)
        self.time_base = 1 / self.fps
        self.num_frames = len(self.files)
        with self._open(self.files[0]) as first:
            self.width, self.height = first.size

    @staticmethod
    def _open(file: Path) -> Image.Image:
        try:
            return Image.open(file)
        except (UnidentifiedImageError, OSError) as exc:
            raise VostoolError(f"{file}: cannot read image ({exc})") from None

    def _frames(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            image = read_frame(file)
            if image.shape[:2] != (self.height, self.width):
                raise VostoolError(
                    f"{file}: image is {image.shape[1]}x{image.shape[0]}, "
                    f"but the first frame is {self.width}x{self.height}"
                )
            yield Frame(index, image, index, self.time_base, file.stem)


class VideoSource(FrameSource):
    """A video file in any container/codec FFmpeg can read, decoded frame by frame."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path, self.is_video, self.stem = path, True, output_stem(path)
        with self._open() as container:
            stream = self._video_stream(container)
            self.time_base = stream.time_base or Fraction(1, 1000)
            self.fps = Fraction(stream.average_rate) if stream.average_rate else None
            self.has_audio = len(container.streams.audio) > 0
            self.num_frames = stream.frames or None
            if stream.duration:
                seconds: Fraction | None = stream.duration * self.time_base
            else:
                seconds = Fraction(container.duration, av.time_base) if container.duration else None
            if self.num_frames is None and self.fps and seconds:
                self.num_frames = max(1, round(seconds * self.fps))  # estimate
            try:  # decode the first frame: validates the file and gives the displayed size
                first = next(container.decode(stream), None)
            except av.FFmpegError as exc:
                raise VostoolError(f"{path}: corrupt video ({_ffmpeg_reason(exc)})") from None
        if first is None:
            raise VostoolError(f"{path}: video has no decodable frames")
        self._turns = round((first.rotation or 0) / 90) % 4
        self.width, self.height = first.width, first.height
        if self._turns % 2:
            self.width, self.height = self.height, self.width

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path), "r")
        except av.FFmpegError as exc:
            raise VostoolError(f"{self.path}: not a readable video file ({_ffmpeg_reason(exc)})") from None

    def _video_stream(self, container: av.container.InputContainer) -> av.VideoStream:
        streams = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not streams:
            raise VostoolError(f"{self.path}: file has no video stream")
        return streams[0]

    def _frames(self) -> Iterator[Frame]:
        index = 0
        with self._open() as container:
            stream = self._video_stream(container)
            stream.thread_type = "AUTO"
            frame_tb = 1 / self.fps if self.fps else Fraction(1, 25)
            try:
                for vf in container.decode(stream):
                    pts = vf.pts
                    if pts is None:  # raw streams: synthesize from the frame rate
                        pts = round(index * frame_tb / self.time_base)
                    image = vf.to_ndarray(format="rgb24")
                    if self._turns:  # display matrix: counter-clockwise quarter turns
                        image = np.ascontiguousarray(np.rot90(image, self._turns))
                    yield Frame(index, image, pts, self.time_base, f"{index:05d}")
                    index += 1
            except av.FFmpegError as exc:
                raise VostoolError(
                    f"{self.path}: corrupt video data at frame {index} ({_ffmpeg_reason(exc)})"
                ) from None
        if index == 0:
            raise VostoolError(f"{self.path}: video has no decodable frames")


def _ffmpeg_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).split(":")[0] or type(exc).__name__


def open_source(path: str | Path, fps: float | None = None) -> FrameSource:
    """Open a video file or a folder of frame images.

    Args:
        path: a video file (any container/codec FFmpeg reads) or a folder of images.
        fps: frame rate used to make timestamps for image folders (default 24);
            ignored for videos.

    Raises:
        VostoolError: missing path, unreadable/corrupt file, no video stream, folder
            without images.
    """
    path = Path(path)
    if not path.exists():
        raise VostoolError(f"{path}: no such file or folder")
    if path.is_dir():
        return ImageFolderSource(path, fps)
    if path.suffix.lower() in IMAGE_EXTS:
        raise VostoolError(f"{path}: is a single image; pass the folder of frames instead")
    return VideoSource(path)


def expand_inputs(paths: list[str | Path]) -> list[Path]:
    """Turn command-line inputs into a list of sources.

    A file stays as is; a folder with video files and no images becomes its video
    files (natural order); any other folder is one image-folder input.

    Raises:
        VostoolError: a path does not exist.
    """
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise VostoolError(f"{path}: no such file or folder")
        if path.is_dir() and not list_images(path):
            videos = _sorted_files(path, _is_video)
            if videos:
                result.extend(videos)
                continue
        result.append(path)
    return result


def check_frame_names(files: list[Path], folder: Path) -> None:
    """Refuse frame files whose outputs would overwrite each other (one-line error).

    Outputs are named after the frame file's stem, so ``002.png`` and ``002.jpg`` (or
    ``A.png`` and ``a.png``, one file on macOS and Windows) would write one ``masks/002.png``;
    ``f.tmp.png`` is the name ``f.png``'s output is written under before it is complete.
    """
    seen: dict[str, Path] = {}
    for file in files:
        key = file.stem.casefold()
        if key in seen:
            raise VostoolError(f"{folder}: frames {seen[key].name} and {file.name} would both be written as "
                               f"{file.stem}.png; rename or remove one")
        seen[key] = file
    for key, file in seen.items():
        if key.endswith(".tmp") and key[: -len(".tmp")] in seen:
            raise VostoolError(f"{folder}: frame {file.name} is named like the temporary file of "
                               f"{seen[key[: -len('.tmp')]].name}; rename it")


def check_output_names(paths: list[Path], dests: list[Path]) -> None:
    """Before any work: refuse inputs whose outputs would overwrite each other (one line).

    Two inputs writing to one output folder (``a/clip.mp4`` and ``b/clip.mp4`` with
    ``--out``, or one input given twice), or a folder of frames with two files of one
    stem, are refused; names are compared without case.
    """
    seen: dict[str, Path] = {}
    for path, dest in zip(paths, dests):
        key = str(Path(dest).resolve()).casefold()
        if key in seen:
            other = seen[key]
            if Path(other).resolve() == Path(path).resolve():
                raise VostoolError(f"input {path} is given twice")
            raise VostoolError(f"inputs {other} and {path} would both write to {dest}; "
                               "rename one or segment them in separate runs with their own --out")
        seen[key] = path
    for path in paths:
        if Path(path).is_dir():
            check_frame_names(list_images(path), Path(path))
