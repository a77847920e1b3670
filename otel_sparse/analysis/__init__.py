"""Read run folders back into pandas (events, metric points, manifests), and the CLI's numbers.

A run folder holds ``micro_metrics.jsonl`` (one line per ``log()`` call), ``metrics.jsonl``
(flat OTel points), optional ``otlp/metrics.jsonl`` and ``run.json``; other ranks and forked
workers write ``<name>.rank<r>.pid<pid>.jsonl`` beside them. ``read_run`` merges them all.

pandas, numpy-heavy code and matplotlib are imported inside functions: importing this module
costs nothing, and ``import otel_sparse`` never imports it.

Modules: ``runs`` (finding run folders), ``jsonl`` and ``frames`` (reading them into pandas),
``select`` (``--where``/``--by``), ``stats`` (tables), ``plots`` (figures), ``follow`` (a live
run), ``otlp`` (OTLP/JSON files).

Example:
    >>> from otel_sparse.analysis import read_run, summarize     # doctest: +SKIP
    >>> run = read_run("otel_sparse_runs/20261124-235959-1a2b3c")  # doctest: +SKIP
    >>> summarize(run.events, by_head=True)                        # doctest: +SKIP
"""

from otel_sparse.analysis.errors import AnalysisError, RunNotFoundError, UnknownMetricError
from otel_sparse.analysis.follow import EventFollower
from otel_sparse.analysis.frames import (
    CONTEXT_PREFIX,
    EVENT_COLUMNS,
    METADATA_PREFIX,
    PARAM_PREFIX,
    POINT_COLUMNS,
    RunData,
    read_run,
    run_params,
    totals,
)
from otel_sparse.analysis.jsonl import BadLines, iter_json_lines
from otel_sparse.analysis.otlp import (
    count_data_points,
    otlp_files,
    parse_otlp_line,
    read_otlp_requests,
)
from otel_sparse.analysis.plots import (
    layer_head_frame,
    layer_head_panels,
    metric_over_steps,
    plot_heatmap,
    plot_heatmaps,
    plot_over_steps,
)
from otel_sparse.analysis.runs import (
    DataFile,
    RunFolder,
    data_files,
    find_runs,
    latest_run,
    read_manifest,
    scan_run,
)
from otel_sparse.analysis.select import (
    filter_events,
    parse_where,
    selectable_keys,
)
from otel_sparse.analysis.stats import (
    COMPARE_STATS,
    HEATMAP_STATS,
    STATS,
    compare,
    layer_head_matrix,
    resolve_metric,
    run_labels,
    summarize,
)

__all__ = [
    "COMPARE_STATS",
    "CONTEXT_PREFIX",
    "EVENT_COLUMNS",
    "HEATMAP_STATS",
    "METADATA_PREFIX",
    "PARAM_PREFIX",
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
    "compare",
    "count_data_points",
    "data_files",
    "filter_events",
    "find_runs",
    "iter_json_lines",
    "latest_run",
    "layer_head_frame",
    "layer_head_matrix",
    "layer_head_panels",
    "metric_over_steps",
    "otlp_files",
    "parse_otlp_line",
    "parse_where",
    "plot_heatmap",
    "plot_heatmaps",
    "plot_over_steps",
    "read_manifest",
    "read_otlp_requests",
    "read_run",
    "resolve_metric",
    "run_labels",
    "run_params",
    "scan_run",
    "selectable_keys",
    "summarize",
    "totals",
]
