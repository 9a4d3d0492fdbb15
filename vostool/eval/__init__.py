"""DAVIS-exact evaluation: metrics, datasets, parallel scoring, model runs and reports.

The figures are those of the official DAVIS toolkit (``shared/docs/davis-metrics.md``), bit for
bit, computed faster (windowed boundaries and dilations, one process per core)::

    vostool eval davis16 --davis-root DAVIS --model crvos            # run a model, then score
    vostool eval davis17 --davis-root DAVIS --results my_results     # score existing PNGs
    vostool eval folders --gt my_gt --pred my_pred --json            # any pair of folders

Importing this package does not import torch; only running a model does.
"""

from vostool.eval.api import EvalReport, evaluate_davis, evaluate_folders
from vostool.eval.datasets import (
    SequenceSpec,
    davis_sequences,
    davis_split_sequences,
    folder_sequences,
    read_index_png,
)
from vostool.eval.metrics import (
    BOUND_TH,
    bound_pixels,
    boundary_map,
    boundary_map_batch,
    contour_accuracy,
    contour_accuracy_batch,
    disk_kernel,
    region_similarity,
    region_similarity_batch,
    statistics,
)
from vostool.eval.report import csv_paths, json_payload, render_tables, write_csvs
from vostool.eval.runner import RunStats, build_propagator, run_sequences
from vostool.eval.scoring import (
    GLOBAL_COLUMNS,
    EvalResult,
    ObjectRow,
    SequenceScore,
    score_results,
    score_sequence,
    summarise,
)

__all__ = [
    "BOUND_TH",
    "GLOBAL_COLUMNS",
    "EvalReport",
    "EvalResult",
    "ObjectRow",
    "RunStats",
    "SequenceScore",
    "SequenceSpec",
    "bound_pixels",
    "boundary_map",
    "boundary_map_batch",
    "build_propagator",
    "contour_accuracy",
    "contour_accuracy_batch",
    "csv_paths",
    "davis_sequences",
    "davis_split_sequences",
    "disk_kernel",
    "evaluate_davis",
    "evaluate_folders",
    "folder_sequences",
    "json_payload",
    "read_index_png",
    "region_similarity",
    "region_similarity_batch",
    "render_tables",
    "run_sequences",
    "score_results",
    "score_sequence",
    "statistics",
    "summarise",
    "write_csvs",
]
