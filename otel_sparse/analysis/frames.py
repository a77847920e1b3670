"""Reading frames: run folders into pandas (events, metric points, manifests)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from otel_sparse.analysis.jsonl import BadLines, iter_json_lines
from otel_sparse.analysis.runs import RunFolder, find_runs
from otel_sparse.layout import EXPONENTIAL_COLUMNS, HEAD_KEYS, LAYER_KEYS

if TYPE_CHECKING:
    import pandas as pd



EVENT_COLUMNS = (
    "timestamp", "metric", "value", "layer", "head", "location", "rank", "pid", "file", "run",
    "metadata",
)
"""Columns of ``RunData.events``, in order."""

POINT_COLUMNS = (
    "time", "start_time", "temporality", "metric", "type", "unit", "layer", "head", "count",
    "sum", "min", "max", "bucket_bounds", "bucket_counts", "value", "attributes", "run_id",
    "rank", "world_size", "local_rank", "host_name", "pid", "service_name",
    "service_instance_id", "file", "run", *EXPONENTIAL_COLUMNS,
)
"""Columns of ``RunData.points``, in order (extra resource attributes follow). The
exponential-histogram columns are empty on every other row."""

_POINT_INTS = ("layer", "head", "count", "rank", "world_size", "local_rank", "pid", "scale",
               "zero_count", "positive_offset", "negative_offset")
_POINT_FLOATS = ("sum", "min", "max", "value")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _first_key(metadata: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if key in metadata:
            return _as_int(metadata[key])
    return None


def _as_float(value: Any) -> float:
    if isinstance(value, (int, float)):  # bool included: True -> 1.0
        return float(value)
    return math.nan


class _EventColumns:
    """Columns that ``read_run`` fills: per event (repeated at the end) and per scalar."""

    def __init__(self) -> None:
        # one entry per event (line)
        self.timestamp: list[Any] = []
        self.metric: list[Any] = []
        self.location: list[Any] = []
        self.rank: list[int | None] = []
        self.pid: list[int | None] = []
        self.file: list[str] = []
        self.run: list[str] = []
        self.metadata: list[dict[str, Any]] = []
        self.rows: list[int] = []
        # one entry per scalar (row)
        self.value: list[float] = []
        self.layer: list[int | None] = []
        self.head: list[int | None] = []
        self.non_numeric = 0

    def add_record(
        self, record: dict[str, Any], rank: int | None, pid: int | None, file: str, run: str
    ) -> None:
        """Add one event-file record, exploding per-head lists into one row per value."""
        metadata = record.get("metadata")
        if not isinstance(metadata, dict):
            metadata = {}
        value = record.get("value")
        layer = _first_key(metadata, LAYER_KEYS)
        if isinstance(value, list):
            if value and isinstance(value[0], list):  # [layers, heads]
                n = 0
                for li, row in enumerate(value):
                    cells = row if isinstance(row, list) else [row]
                    self.value.extend(_as_float(c) for c in cells)
                    self.layer.extend([li] * len(cells))
                    self.head.extend(range(len(cells)))
                    n += len(cells)
            else:  # [heads], layer from metadata
                n = len(value)
                try:
                    floats = list(map(float, value))  # the usual case: every cell a number
                except (TypeError, ValueError):
                    floats = [_as_float(c) for c in value]
                self.value.extend(floats)
                self.layer.extend([layer] * n)
                self.head.extend(range(n))
        elif isinstance(value, (int, float)):
            n = 1
            self.value.append(float(value))
            self.layer.append(layer)
            self.head.append(_first_key(metadata, HEAD_KEYS))
        else:
            self.non_numeric += 1  # strings, None: kept in the file, not a number to average
            return
        if n == 0:
            return
        self.timestamp.append(record.get("timestamp"))
        self.metric.append(record.get("metric"))
        self.location.append(record.get("location"))
        self.rank.append(rank)
        self.pid.append(pid)
        self.file.append(file)
        self.run.append(run)
        self.metadata.append(metadata)
        self.rows.append(n)

    def frame(self) -> pd.DataFrame:
        """The events DataFrame, sorted by timestamp (stable: file order breaks ties)."""
        import pandas as pd

        rows = self.rows

        def per_row(values: list[Any], dtype: str | None = None) -> Any:
            series = pd.Series(values, dtype=dtype or object)
            return series.repeat(rows).reset_index(drop=True)

        timestamps = pd.to_datetime(pd.Series(self.timestamp, dtype=object), format="ISO8601",
                                    errors="coerce")
        frame = pd.DataFrame({
            "timestamp": timestamps.repeat(rows).reset_index(drop=True),
            "metric": per_row(self.metric).astype(str),
            "value": pd.Series(self.value, dtype="float64"),
            "layer": pd.array(self.layer, dtype="Int64"),
            "head": pd.array(self.head, dtype="Int64"),
            "location": per_row(self.location),
            "rank": per_row(self.rank, "Int64"),
            "pid": per_row(self.pid, "Int64"),
            "file": per_row(self.file).astype(str),
            "run": per_row(self.run).astype(str),
            "metadata": per_row(self.metadata),
        })
        if len(frame):
            frame = frame.sort_values("timestamp", kind="stable", ignore_index=True)
        return frame


# -- points -------------------------------------------------------------------------------


def _points_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for column in POINT_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    for column in ("time", "start_time"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601",
                                       errors="coerce")
    for column in _POINT_INTS:
        ints: list[Any] = [_as_int(v) for v in frame[column].tolist()]
        frame[column] = pd.array(ints, dtype="Int64")
    for column in _POINT_FLOATS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    extra = [c for c in frame.columns if c not in POINT_COLUMNS]
    return frame[list(POINT_COLUMNS) + extra]


def _sum_buckets(series: pd.Series) -> list[int] | None:
    import numpy as np

    lists = [np.asarray(c) for c in series if isinstance(c, list)]
    return np.sum(lists, axis=0).astype(int).tolist() if lists else None


def totals(points: pd.DataFrame) -> pd.DataFrame:
    """One row per series (metric, layer, head, attributes, process) holding its totals.

    Cumulative series: their last row. Delta series: their rows summed (min of min, max of
    max, bucket counts added up).
    """
    import numpy as np
    import pandas as pd

    if points.empty:
        return points.copy()
    frame = points.assign(
        _attrs=points["attributes"].map(lambda a: json.dumps(a, sort_keys=True, default=str)),
        _order=np.arange(len(points)),
    )
    keys = ["metric", "layer", "head", "_attrs", "service_instance_id"]
    cumulative = frame[frame["temporality"] != "delta"]
    last = cumulative.groupby(keys, dropna=False, sort=False).tail(1)
    delta = frame[frame["temporality"] == "delta"]
    parts = [last]
    if len(delta):
        grouped = delta.groupby(keys, dropna=False, sort=False)
        summed = grouped.tail(1).set_index(keys)
        agg = grouped.agg(count=("count", "sum"), sum=("sum", "sum"), min=("min", "min"),
                          max=("max", "max"), value=("value", "sum"))
        for column in agg.columns:
            summed[column] = agg[column]
        summed["bucket_counts"] = grouped["bucket_counts"].agg(_sum_buckets)
        summed["start_time"] = grouped["start_time"].min()
        parts.append(summed.reset_index())
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else last
    return out.sort_values("_order", kind="stable").drop(columns=["_attrs", "_order"]) \
        .reset_index(drop=True)


# -- the run ------------------------------------------------------------------------------


@dataclass
class RunData:
    """Everything read from one or more run folders.

    Attributes:
        runs: the folders read.
        events: one row per logged scalar (per-head lists exploded), all ranks merged,
            sorted by timestamp; columns ``EVENT_COLUMNS``.
        points: every ``metrics*.jsonl`` row, typed; columns ``POINT_COLUMNS``.
        manifests: run id -> ``run.json`` content ({} without a manifest).
        non_numeric: events whose value is not a number or a list of numbers (not in ``events``).
    """

    runs: list[RunFolder]
    events: pd.DataFrame
    points: pd.DataFrame
    manifests: dict[str, dict[str, Any]]
    non_numeric: int = 0

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest of the (first) run."""
        return next(iter(self.manifests.values()), {})

    @property
    def run_ids(self) -> list[str]:
        """Run ids of the folders read, in order."""
        return list(self.manifests)

    @property
    def metrics(self) -> list[str]:
        """Identifiers that have numeric events, sorted."""
        return sorted(set(self.events["metric"].tolist()))

    def totals(self) -> pd.DataFrame:
        """Per-series totals of ``points`` (see ``totals``)."""
        return totals(self.points)


def _run_names(runs: list[RunFolder]) -> list[str]:
    names = [r.run_id for r in runs]
    counts = {n: names.count(n) for n in names}
    return [n if counts[n] == 1 else f"{n} ({r.path})" for n, r in zip(names, runs, strict=True)]


def read_run(path_or_paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> RunData:
    """Read run folders (or a parent folder of runs) into one ``RunData``, ranks merged.

    Args:
        path_or_paths: a run folder, a file inside one, several of these, or a folder of runs.

    Raises:
        RunNotFoundError: a path does not exist.

    A line that cannot be parsed (a last line cut mid-write, say) is skipped; the skipped
    lines are reported in one warning through ``logging``.
    """
    runs = find_runs(path_or_paths)
    bad = BadLines()
    columns = _EventColumns()
    point_rows: list[dict[str, Any]] = []
    manifests: dict[str, dict[str, Any]] = {}
    for run, name in zip(runs, _run_names(runs), strict=True):
        manifests[name] = run.manifest
        rank0 = run.manifest.get("ranks", {}).get("0", {}) if run.manifest else {}
        for data_file in run.event_files:
            rank = 0 if data_file.rank is None else data_file.rank
            pid = data_file.pid if data_file.rank is not None else _as_int(rank0.get("pid"))
            for record in iter_json_lines(data_file.path, bad):
                columns.add_record(record, rank, pid, data_file.path, name)
        for data_file in run.point_files:
            for row in iter_json_lines(data_file.path, bad):
                row["file"] = data_file.path
                row["run"] = name
                point_rows.append(row)
    bad.report()
    return RunData(runs=runs, events=columns.frame(), points=_points_frame(point_rows),
                   manifests=manifests, non_numeric=columns.non_numeric)
