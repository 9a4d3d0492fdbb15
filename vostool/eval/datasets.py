"""Where the masks to score live: DAVIS-2016/2017 roots and plain pairs of folders.

The layout, the ImageSets, the sequence type and the mask reader are the data layer's
(:mod:`vostool.data.davis`, :mod:`vostool.data.masks`), shared with ``vostool train``; this
module keeps the names ``vostool.eval`` has always exported. Results are index PNGs in
``<results>/<seq>/<frame>.png``, one per ground-truth frame.
"""

from __future__ import annotations

from vostool.data.davis import (
    SequenceSpec,
    davis_sequences,
    davis_split_sequences,
    folder_sequences,
    list_frames,
)
from vostool.data.files import natural_key as frame_key
from vostool.data.masks import INDEX_MODES, VOID_ID
from vostool.data.masks import read_index_mask as read_index_png

__all__ = [
    "INDEX_MODES",
    "VOID_ID",
    "SequenceSpec",
    "davis_sequences",
    "davis_split_sequences",
    "folder_sequences",
    "frame_key",
    "list_frames",
    "read_index_png",
]
