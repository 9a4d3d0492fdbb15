"""``vostool bench``: speed and memory of the models, with the conditions stated.

- :func:`benchmark` times one model (model alone and end to end) -> :class:`BenchResult`.
- :func:`baseline_resnet50` times a plain ResNet-50 trunk (fp32 eager, NCHW), the
  reference of the speed targets.
- :func:`results_table` / :func:`conditions_lines` render results for the terminal.
"""

from vostool.bench.memory import current_mb, peak_mb, peak_rss_mb, reset_peak_rss, rss_mb
from vostool.bench.report import conditions_lines, results_table
from vostool.bench.runner import (
    BaselineResult,
    BenchResult,
    baseline_resnet50,
    benchmark,
    machine_summary,
    make_model,
)
from vostool.bench.synthetic import SyntheticClip, clip_size, write_video

__all__ = [
    "BaselineResult", "BenchResult", "SyntheticClip", "baseline_resnet50", "benchmark", "clip_size",
    "conditions_lines", "current_mb", "machine_summary", "make_model", "peak_mb", "peak_rss_mb",
    "reset_peak_rss", "results_table", "rss_mb", "write_video",
]
