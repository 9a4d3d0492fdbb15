"""Running a model over a DAVIS split, through the same engine as ``vostool segment``.

For each sequence the first ground-truth mask starts the propagator, every frame's object ids
are written as an index PNG with the DAVIS palette (``vostool.io.masks.save_index_png``) to
``<out>/<seq>/<frame>.png`` by a background thread, so that disk writes overlap compute, and
frames and model time are counted for the FPS figure.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vostool.data.davis import SequenceSpec
from vostool.data.files import read_frame
from vostool.data.masks import read_index_mask, without_void
from vostool.errors import VostoolError

if TYPE_CHECKING:
    from vostool.engine.adapt import AdaptConfig


class PropagatorLike(Protocol):
    """What the runner needs from ``vostool.engine.Propagator``."""

    device_name: str
    precision: str

    def start(self, image: np.ndarray, masks: np.ndarray) -> Any:
        """image: H x W x 3 uint8 RGB; masks: H x W int ids. Returns a FrameResult."""
        ...

    def step(self, image: np.ndarray) -> Any:
        """image: H x W x 3 uint8 RGB. Returns a FrameResult (``.index``: H x W ids)."""
        ...


@dataclass
class RunStats:
    """How a model run went: frames processed, seconds inside the model (start/step calls),
    wall seconds of the whole run including reading and writing, and the engine's device."""

    frames: int
    model_seconds: float
    wall_seconds: float
    device: str | None = None
    precision: str | None = None
    #: ``--adapt``: seconds spent learning the sequences' objects (not in ``model_seconds``)
    adapt_seconds: float | None = None

    @property
    def fps(self) -> float | None:
        """Frames per second of the model alone (None when nothing was timed)."""
        return self.frames / self.model_seconds if self.model_seconds > 0 else None


def build_propagator(
    model: str,
    weights: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    size: int | None = None,
    adapt: AdaptConfig | None = None,
    adapt_progress: Callable[[int, int, float], None] | None = None,
    window: float | None = None,
) -> PropagatorLike:
    """Load ``model`` (and ``weights``) into the engine's Propagator.

    size: internal size of the shorter side; None takes the checkpoint's training size.
    adapt: ``--adapt``: each sequence learns its objects from its first mask (None: not).
    window: search window margin (``--window``; 0: off); None takes the model's default.
    """
    from vostool.engine import Propagator, load_model  # torch is only imported when needed
    from vostool.engine.adapt import Adaptation
    from vostool.models import recommended_size

    net = load_model(model, weights=weights)
    if size is None:
        size = recommended_size(net)
    if window is not None:
        net.search_window = window or None
    adaptation = Adaptation(adapt, adapt_progress) if adapt is not None else None
    return Propagator(net, device=device, precision=precision, size=size, adapt=adaptation)


def _frame_paths(spec: SequenceSpec) -> list[Path]:
    """Every frame image from the first annotated one on (annotated or not)."""
    if spec.image_dir is None or not spec.image_dir.is_dir():
        raise VostoolError(f"no frames for sequence {spec.name}: {spec.image_dir} is not a folder")
    paths = spec.image_files()
    stems = [p.stem for p in paths]
    if spec.frames[0] not in stems:
        raise VostoolError(
            f"sequence {spec.name}: no frame {spec.frames[0]} in {spec.image_dir} for its first "
            "ground-truth mask"
        )
    missing = sorted(set(spec.frames) - set(stems))
    if missing:
        raise VostoolError(f"sequence {spec.name}: frame {missing[0]} missing in {spec.image_dir}")
    return paths[stems.index(spec.frames[0]) :]


def _first_mask(spec: SequenceSpec, binary: bool) -> np.ndarray:
    mask = read_index_mask(spec.mask_path(spec.frames[0]), "ground truth")
    if binary:
        return (mask != 0).astype(np.uint8)
    mask = without_void(mask)
    return mask.astype(np.uint8) if mask.max() <= 255 else mask


def _index_of(result: Any, shape: tuple[int, int], where: str) -> np.ndarray:
    index = np.asarray(getattr(result, "index", result))
    if index.shape != shape:
        raise VostoolError(f"the engine returned a {index.shape} mask for {where}, expected {shape}")
    return index


def run_sequences(
    sequences: Sequence[SequenceSpec],
    out_dir: str | os.PathLike[str],
    propagator: PropagatorLike,
    *,
    binary: bool,
    progress: Callable[[str, int], None] | None = None,
    max_frames: int | None = None,
) -> RunStats:
    """Propagate the first ground-truth mask of each sequence and save every frame's ids.

    binary: DAVIS-2016, the first mask is binarised to object 1; otherwise its ids are kept
    and void (255) becomes background. ``progress(name, frames)`` is called after each
    sequence. Writes ``<out_dir>/<seq>/<frame>.png`` for every frame from the first annotated
    one on (frame 0 included, as the given mask); with ``max_frames``, only that many frames
    of each sequence (training's quick validation).
    """
    from vostool.io.masks import save_index_png  # the same PNG writer as `vostool segment`

    out_dir = Path(out_dir)
    frames_done = 0
    model_seconds = 0.0
    wall_start = time.perf_counter()
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="vostool-eval-writer") as writer:

        def write(path: Path, index: np.ndarray) -> None:
            while len(pending) >= 32:  # bound the memory held by unwritten frames
                pending.popleft().result()
            pending.append(writer.submit(save_index_png, path, index.copy()))

        for spec in sequences:
            paths = _frame_paths(spec)[:max_frames]
            mask = _first_mask(spec, binary)
            seq_out = out_dir / spec.name
            try:
                seq_out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VostoolError(f"cannot create {seq_out}: {exc}") from None
            for t, path in enumerate(paths):
                image = read_frame(path)
                if image.shape[:2] != mask.shape:
                    raise VostoolError(
                        f"frame {path} is {image.shape[1]}x{image.shape[0]} but the first mask "
                        f"of sequence {spec.name} is {mask.shape[1]}x{mask.shape[0]}"
                    )
                t0 = time.perf_counter()
                result = propagator.start(image, mask) if t == 0 else propagator.step(image)
                model_seconds += time.perf_counter() - t0
                write(seq_out / f"{path.stem}.png", _index_of(result, mask.shape, str(path)))
                frames_done += 1
            if progress is not None:
                progress(spec.name, len(paths))
        while pending:
            pending.popleft().result()
    adaptation = getattr(propagator, "adaptation", None)
    adapt_seconds = adaptation.total_seconds if adaptation is not None else None
    return RunStats(
        frames=frames_done,
        model_seconds=model_seconds - (adapt_seconds or 0.0),
        adapt_seconds=adapt_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        device=getattr(propagator, "device_name", None),
        precision=getattr(propagator, "precision", None),
    )
