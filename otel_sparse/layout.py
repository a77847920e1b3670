"""The run folder's layout: every file name, per-process suffix and column name, defined once.

A run folder holds ``micro_metrics.jsonl`` (one line per ``log()`` call), ``metrics.jsonl``
(flat OTel points), optionally ``otlp/metrics.jsonl`` (OTLP/JSON requests) and ``run.json``
(the manifest). Ranks other than 0 and forked workers write ``<name>.rank<r>.pid<pid>.jsonl``
beside rank 0's files, so no two processes ever share a file. Writers build names with
``process_file_name``; readers recognise them with ``process_file_pattern``.

Example:
    >>> process_file_name(METRICS_FILE_NAME, rank_pid_suffix(3, 4242))
    'metrics.rank3.pid4242.jsonl'
    >>> process_file_pattern(EVENT_FILE_NAME).match("micro_metrics.rank3.pid4242.jsonl")["rank"]
    '3'
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

# -- file names -----------------------------------------------------------------------------

EVENT_FILE_NAME = "micro_metrics.jsonl"
"""The old API's event file: one ``LogEvent`` a line."""

METRICS_FILE_NAME = "metrics.jsonl"
"""Flat OTel points, one row per data point (``pandas.read_json(path, lines=True)``)."""

MANIFEST_NAME = "run.json"
"""The run's manifest (``start_run``): run id, parameters, ranks, start/end times."""

OTLP_DIR = "otlp"
"""Subfolder of a run holding OTLP/JSON request lines (``otlp_file`` exporter)."""

OTLP_FILE_NAME = f"{OTLP_DIR}/{METRICS_FILE_NAME}"
"""Default OTLP/JSON file, relative to the run folder."""


# -- per-process suffixes ----------------------------------------------------------------------

def rank_pid_suffix(rank: int, pid: int) -> str:
    """``.rank<r>.pid<pid>``: what a process other than rank 0's own inserts in its file names."""
    return f".rank{rank}.pid{pid}"


def process_file_name(name: str, suffix: str) -> str:
    """``name`` with ``suffix`` inserted before its extension (``''``: ``name`` unchanged)."""
    base, ext = os.path.splitext(name)
    return base + suffix + ext


def process_file_pattern(name: str) -> re.Pattern[str]:
    """Matches ``name`` and its per-process variants; groups ``rank`` and ``pid`` (or None)."""
    base, ext = os.path.splitext(os.path.basename(name))
    return re.compile(
        rf"^{re.escape(base)}(?:\.rank(?P<rank>\d+)\.pid(?P<pid>\d+))?{re.escape(ext)}$"
    )


EVENT_FILE_RE = process_file_pattern(EVENT_FILE_NAME)
POINT_FILE_RE = process_file_pattern(METRICS_FILE_NAME)
OTLP_FILE_RE = process_file_pattern(OTLP_FILE_NAME)


# -- layer / head metadata ----------------------------------------------------------------------

LAYER = "layer"
"""The attribute (and column) naming a layer."""

HEAD = "head"
"""The attribute (and column) naming a head."""

ATTRIBUTE_ALIASES: Mapping[str, str] = {
    "layer": LAYER,
    "layer_idx": LAYER,
    "head": HEAD,
    "head_idx": HEAD,
}
"""Metadata keys researchers already use, mapped to the attribute every dashboard groups by."""

LAYER_KEYS: tuple[str, ...] = tuple(k for k, v in ATTRIBUTE_ALIASES.items() if v == LAYER)
"""Metadata keys that name a layer, preferred first."""

HEAD_KEYS: tuple[str, ...] = tuple(k for k, v in ATTRIBUTE_ALIASES.items() if v == HEAD)
"""Metadata keys that name a head, preferred first."""


# -- metrics.jsonl columns -------------------------------------------------------------------

POINT_TIME_COLUMN = "timestamp"
"""Column of ``metrics.jsonl`` holding a point's time (UTC ISO 8601)."""

POINT_START_COLUMN = "start_time"
"""Column of ``metrics.jsonl`` holding the start of a point's aggregation window."""

METRICS_COLUMNS: tuple[str, ...] = (
    POINT_TIME_COLUMN, POINT_START_COLUMN, "temporality", "metric", "type", "unit", LAYER, HEAD,
    "count", "sum", "min", "max", "bucket_bounds", "bucket_counts", "value", "attributes",
)
"""Columns of a ``metrics.jsonl`` row, before the resource columns."""

EXPONENTIAL_COLUMNS: tuple[str, ...] = (
    "scale", "zero_count", "positive_offset", "positive_counts", "negative_offset",
    "negative_counts",
)
"""``metrics.jsonl`` columns with the raw OTel exponential-histogram fields, on exponential
histogram rows only (their derived ``bucket_bounds``/``bucket_counts`` have the same shape as
an explicit histogram's)."""

RESOURCE_COLUMNS: Mapping[str, str] = {
    "run.id": "run_id",
    "rank": "rank",
    "world.size": "world_size",
    "local.rank": "local_rank",
    "host.name": "host_name",
    "process.pid": "pid",
    "service.name": "service_name",
    "service.instance.id": "service_instance_id",
}
"""Resource attributes promoted to short ``metrics.jsonl`` columns; the rest keep their dotted
name with dots turned into underscores."""

RESOURCE_PREFIX = "resource_"
"""Prefix of a resource attribute's column where its name is one of a row's own columns
(``OTEL_RESOURCE_ATTRIBUTES=type=training`` gives ``resource_type``): a row's own fields win."""
