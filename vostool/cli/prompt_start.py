"""``segment --box/--point/--neg-point/--at/--save-mask``: the first mask made from prompts.

Glue between the options, :mod:`vostool.io.prompts` (parsing, checks, GrabCut) and
:mod:`vostool.engine.prompting` (refinement by the model). Everything a user can get wrong
is checked before any output is created: the text (:meth:`PromptStart.from_options`), and
the geometry against each input's frame size (:meth:`PromptStart.check_source`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vostool.engine.prompting import mask_from_prompts
from vostool.engine.propagator import Propagator
from vostool.errors import VostoolError
from vostool.io.prompts import Prompts, check_prompts, parse_prompts
from vostool.types import Frame


@dataclass
class PromptStart:
    """Prompts for one frame (``at``) of every input, and where to save the made mask."""

    prompts: Prompts
    at: int = 0
    save_mask: Path | None = None

    @classmethod
    def from_options(
        cls, boxes: list[str], points: list[str], neg_points: list[str], at: int | None,
        save_mask: Path | None, mask: Path | None, mask_at: Iterable[int] = (),
    ) -> PromptStart | None:
        """Parse the options (None when no prompt is given).

        Raises:
            VostoolError: malformed prompts, ids that clash with ``mask``, ``--at`` or
                ``--save-mask`` without prompts, ``--at`` > 0 without ``mask``, ``--at`` at a
                ``--mask-at`` frame.
        """
        if not (boxes or points or neg_points):
            if at is not None:
                raise VostoolError("--at needs --box or --point (it says which frame they are on)")
            if save_mask is not None:
                raise VostoolError("--save-mask needs --box or --point (it saves the mask they make)")
            return None
        frame = 0 if at is None else at
        if frame < 0:
            raise VostoolError(f"--at must be a frame number >= 0, got {frame}")
        taken: set[int] = set()
        if mask is not None and mask.is_file():
            from vostool.io.masks import read_mask

            taken = set(read_mask(mask).object_ids)
        if frame > 0 and mask is None:
            raise VostoolError(f"--at {frame} needs --mask for the first frame (or put the prompts on frame 0)")
        if frame in set(mask_at):
            raise VostoolError(f"--at {frame} and --mask-at {frame}: give one of them for a frame")
        return cls(parse_prompts(boxes, points, neg_points, taken=taken), frame, save_mask)

    def check_source(self, width: int, height: int, num_frames: int | None, name: str) -> None:
        """Check the prompts against one input (frame size and length).

        Raises:
            VostoolError: a box or click outside the frame, or ``--at`` past the last frame.
        """
        try:
            check_prompts(self.prompts, width, height)
        except VostoolError as exc:
            raise VostoolError(f"{name}: {exc}") from None
        if num_frames is not None and self.at >= num_frames:
            raise VostoolError(f"{name}: --at {self.at} is past the last frame ({num_frames - 1})")

    def save_path(self, stem: str, several: bool) -> Path | None:
        """Where the made mask of input ``stem`` goes (``NAME.<stem>.png`` with several inputs)."""
        if self.save_mask is None:
            return None
        if not several:
            return self.save_mask
        return self.save_mask.with_name(f"{self.save_mask.stem}.{stem}{self.save_mask.suffix or '.png'}")

    def frames(
        self, source: Iterable[Frame], first: np.ndarray | None, extra: dict[int, np.ndarray],
        prop: Propagator, new_prop: Callable[[], Propagator], save_to: Path | None,
    ) -> tuple[Iterator[Frame], np.ndarray | None, dict[int, np.ndarray], list[bool]]:
        """Frames to propagate, with the prompted objects added on frame ``at``.

        Frame 0: the frame is read first and the made mask is returned as the first mask
        (laid under ``first``'s objects, if any). A later frame: the mask is made when
        that frame is reached and put into ``extra`` (which ``propagate`` reads then).

        Args:
            source: the input's frames.
            first: the ``--mask`` ids (``H x W``) or None.
            extra: ``--mask-at`` masks by frame (the returned dict holds them too).
            prop: the video's propagator, used to refine a frame-0 mask before the video starts.
            new_prop: makes a scratch propagator to refine a mask mid-video (``prop`` is busy).
            save_to: where to save the made mask (None: nowhere).

        Returns:
            (frames, first mask, masks by frame, used): pass all but ``used`` to ``propagate``;
            ``used[0]`` becomes True once the prompts were applied.
        """
        used = [False]
        extra = _Filled(extra)

        def made(frame: Frame, base: np.ndarray | None, mid_video: bool) -> np.ndarray:
            ids = mask_from_prompts(frame.image, self.prompts, new_prop() if mid_video else prop)
            if base is not None:
                ids = np.where(base != 0, base, ids).astype(np.result_type(base, ids))
            if save_to is not None:
                from vostool.io.masks import save_index_png

                save_index_png(save_to, ids)
            used[0] = True
            return ids

        it = iter(source)
        if self.at == 0:
            head = next(it, None)
            if head is None:
                return iter(()), first, extra, used
            return itertools.chain([head], it), made(head, first, False), extra, used

        def later() -> Iterator[Frame]:
            for frame in it:
                if frame.index == self.at:
                    extra[frame.index] = made(frame, None, True)
                yield frame

        return later(), first, extra, used


class _Filled(dict):
    """Masks by frame, filled while the frames are read: never falsy, so that ``propagate``
    looks into this very dict (it replaces an empty one by its own)."""

    def __bool__(self) -> bool:
        return True
