"""Read run folders back into pandas (events, metric points, manifests), and the CLI's numbers.

A run folder holds ``micro_metrics.jsonl`` (one line per ``log()`` call), ``metrics.jsonl``
(flat OTel points), optional ``otlp/metrics.jsonl`` and ``run.json``; other ranks and forked
workers write ``<name>.rank<r>.pid<pid>.jsonl`` beside them. ``read_run`` merges them all.

pandas, numpy-heavy code and matplotlib are imported inside functions: importing this module
costs nothing, and ``import otel_sparse`` never imports it.

Example:
    >>> from otel_sparse.analysis import read_run, summarize     # doctest: +SKIP
    >>> run = read_run("otel_sparse_runs/20261124-235959-1a2b3c")  # doctest: +SKIP
    >>> summarize(run.events, by_head=True)                        # doctest: +SKIP
"""

from otel_sparse.analysis.errors import AnalysisError, RunNotFoundError, UnknownMetricError
from otel_sparse.analysis.follow import EventFollower
from otel_sparse.analysis.frames import (
    EVENT_COLUMNS,
    POINT_COLUMNS,
    RunData,
    read_run,
    totals,
)
from otel_sparse.analysis.jsonl import BadLines, iter_json_lines
from otel_sparse.analysis.otlp import (
    count_data_points,
    otlp_files,
    parse_otlp_line,
    read_otlp_requests,
)
from otel_sparse.analysis.plots import plot_heatmap
from otel_sparse.analysis.runs import (
    DataFile,
    RunFolder,
    data_files,
    find_runs,
    latest_run,
    read_manifest,
    scan_run,
)
from otel_sparse.analysis.stats import (
    HEATMAP_STATS,
    STATS,
    layer_head_matrix,
    resolve_metric,
    summarize,
)

__all__ = [
    "EVENT_COLUMNS",
    "HEATMAP_STATS",
    "POINT_COLUMNS",
    "STATS",
    "AnalysisError",
    "BadLines",
    "DataFile",
    "EventFollower",
    "RunData",
    "RunFolder",
    "RunNotFoundError",
    "UnknownMetricError",
    "count_data_points",
    "data_files",
    "find_runs",
    "iter_json_lines",
    "latest_run",
    "layer_head_matrix",
    "otlp_files",
    "parse_otlp_line",
    "plot_heatmap",
    "read_manifest",
    "read_otlp_requests",
    "read_run",
    "resolve_metric",
    "scan_run",
    "summarize",
    "totals",
]
