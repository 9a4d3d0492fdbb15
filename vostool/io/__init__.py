"""Streaming input (videos, image folders), mask parsing and output writers."""

from vostool.io.masks import (
    DAVIS_PALETTE,
    PALETTE_RGB,
    MaskInfo,
    palette_color,
    read_mask,
    save_gray_png,
    save_index_png,
    save_rgba_png,
)
from vostool.io.outdir import MANIFEST_NAME, check_out_dir, output_targets
from vostool.io.video import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    FrameSource,
    check_output_names,
    expand_inputs,
    natural_key,
    open_source,
    output_stem,
)
from vostool.io.writers import (
    ALPHA_FORMATS,
    VALID_OUTPUTS,
    AsyncWriter,
    OutputWriter,
    parse_outputs,
    prepare_out_dir,
    render_overlay,
)

__all__ = [
    "ALPHA_FORMATS",
    "DAVIS_PALETTE",
    "IMAGE_EXTS",
    "MANIFEST_NAME",
    "PALETTE_RGB",
    "VALID_OUTPUTS",
    "VIDEO_EXTS",
    "AsyncWriter",
    "FrameSource",
    "MaskInfo",
    "OutputWriter",
    "check_out_dir",
    "check_output_names",
    "expand_inputs",
    "natural_key",
    "open_source",
    "output_stem",
    "output_targets",
    "palette_color",
    "parse_outputs",
    "prepare_out_dir",
    "read_mask",
    "render_overlay",
    "save_gray_png",
    "save_index_png",
    "save_rgba_png",
]
