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
from otel_sparse.layout import (
    ATTRIBUTE_ALIASES,
    EXPONENTIAL_COLUMNS,
    HEAD_KEYS,
    LAYER_KEYS,
    POINT_START_COLUMN,
    POINT_TIME_COLUMN,
)

if TYPE_CHECKING:
    import pandas as pd



EVENT_COLUMNS = (
    "timestamp", "metric", "value", "layer", "head", "location", "rank", "pid", "file", "run",
    "metadata",
)
"""Columns every ``RunData.events`` has, in order; the context, metadata and parameter
columns follow (see ``read_run``)."""

CONTEXT_PREFIX = "context_"
"""Prefix of a context key whose name is already an event column (``context_value``)."""

METADATA_PREFIX = "meta_"
"""Prefix of a metadata key whose name is already taken (``meta_step`` beside context ``step``)."""

PARAM_PREFIX = "param_"
"""Prefix of a run.json parameter whose name is already taken (``param_stage``)."""

POINT_COLUMNS = (
    "time", POINT_START_COLUMN, "temporality", "metric", "type", "unit", "layer", "head",
    "count", "sum", "min", "max", "bucket_bounds", "bucket_counts", "value", "attributes", "run_id",
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
        self.context: list[dict[str, Any]] = []
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
        context = record.get("context")
        self.context.append(context if isinstance(context, dict) else {})
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
        taken = set(frame.columns)
        for name, values in _key_columns(self.context, ()).items():
            column = CONTEXT_PREFIX + name if name in taken else name
            frame[column] = values.repeat(rows).reset_index(drop=True)
            taken.add(column)
        flat = [{k: v for k, v in m.items() if _is_scalar(v)} for m in self.metadata]
        for name, values in _key_columns(flat, tuple(ATTRIBUTE_ALIASES)).items():
            column = METADATA_PREFIX + name if name in taken else name
            frame[column] = values.repeat(rows).reset_index(drop=True)
            taken.add(column)
        return frame


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _typed(values: list[Any]) -> pd.Series:
    """A column of context/metadata/parameter values: Int64, float64, boolean, or object."""
    import pandas as pd

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pd.Series(pd.array(values, dtype="boolean"))
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(pd.array(values, dtype="Int64"))
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in present):
        return pd.Series([math.nan if v is None else float(v) for v in values], dtype="float64")
    return pd.Series(values, dtype=object)


def _key_columns(dicts: list[dict[str, Any]], skip: tuple[str, ...]) -> dict[str, pd.Series]:
    """One typed column per key found in ``dicts`` (None where a dict lacks it), keys sorted."""
    keys = sorted({k for d in dicts for k in d if isinstance(k, str) and k not in skip})
    return {key: _typed([d.get(key) for d in dicts]) for key in keys}


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested run.json parameters as dotted keys (``masker.k``); lists kept as their JSON."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        elif _is_scalar(value):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True, default=str)
    return out


def run_params(manifest: dict[str, Any]) -> dict[str, Any]:
    """The run.json parameters of a run, flattened to dotted keys ({} without any)."""
    params = manifest.get("params") if manifest else None
    return _flatten(params) if isinstance(params, dict) else {}


def _add_params(events: pd.DataFrame, manifests: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One column per run.json parameter (by the event's run), then sorted by timestamp."""
    params = {name: run_params(manifest) for name, manifest in manifests.items()}
    keys = sorted({k for p in params.values() for k in p})
    taken = set(events.columns)
    runs = events["run"].tolist()
    for key in keys:
        column = PARAM_PREFIX + key if key in taken else key
        per_run = {name: p.get(key) for name, p in params.items()}
        events[column] = _typed([per_run.get(r) for r in runs])
        taken.add(column)
    if len(events):
        events = events.sort_values("timestamp", kind="stable", ignore_index=True)
    return events


# -- points -------------------------------------------------------------------------------


def _points_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for column in POINT_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series([None] * len(frame), dtype=object)
    if POINT_TIME_COLUMN in frame.columns:  # metrics.jsonl says "timestamp"; the frame "time"
        frame["time"] = frame.pop(POINT_TIME_COLUMN)
    for column in ("time", POINT_START_COLUMN):
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


def _merge_exponential(summed: pd.DataFrame, groups: Any) -> None:
    """Delta rows of exponential histograms: raw buckets added at their coarsest scale, and
    the derived bucket_bounds/bucket_counts rebuilt (their bounds differ row to row)."""
    from otel_sparse._exponential import flat_buckets, merge_points

    for column in ("bucket_bounds", "bucket_counts", *EXPONENTIAL_COLUMNS):
        summed[column] = summed[column].astype(object)
    for key, rows in groups:
        scale, zero, positive, negative = merge_points([
            (int(r["scale"]), int(r["zero_count"]), int(r["positive_offset"]),
             list(r["positive_counts"]), int(r["negative_offset"]),
             list(r["negative_counts"]))
            for _, r in rows.iterrows()])
        bounds, counts = flat_buckets(scale, zero, positive, negative)
        values = (scale, zero, positive.offset, list(positive.bucket_counts),
                  negative.offset, list(negative.bucket_counts))
        for column, value in (("bucket_bounds", bounds), ("bucket_counts", counts),
                              *zip(EXPONENTIAL_COLUMNS, values)):
            summed.at[key, column] = value


def totals(points: pd.DataFrame) -> pd.DataFrame:
    """One row per series (metric, layer, head, attributes, process) holding its totals.

    Cumulative series: their last row. Delta series: their rows summed (min of min, max of
    max, bucket counts added up; exponential buckets added at the coarsest scale of the
    rows).
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
        exponential = delta["scale"].notna()
        summed["bucket_counts"] = delta[~exponential].groupby(
            keys, dropna=False, sort=False)["bucket_counts"].agg(_sum_buckets)
        if exponential.any():
            _merge_exponential(summed, delta[exponential].groupby(keys, dropna=False,
                                                                  sort=False))
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
            sorted by timestamp; columns ``EVENT_COLUMNS``, then one typed column per context
            key (``step``, ``epoch``, ``stage``...), per scalar metadata key other than the
            layer/head aliases, and per run.json parameter (nested ones dotted:
            ``masker.k``). A name already taken gets ``context_``, ``meta_`` or ``param_``
            in front (``CONTEXT_PREFIX``...): context keys first, then metadata, then
            parameters. Events without a key hold NA there.
        points: every ``metrics*.jsonl`` row, typed; columns ``POINT_COLUMNS`` (the file's
            ``timestamp`` is the UTC datetime column ``time``).
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

    @property
    def params(self) -> dict[str, dict[str, Any]]:
        """Run name -> its run.json parameters, flattened to dotted keys."""
        return {name: run_params(manifest) for name, manifest in self.manifests.items()}

    def totals(self) -> pd.DataFrame:
        """Per-series totals of ``points`` (see ``totals``)."""
        return totals(self.points)


def _run_names(runs: list[RunFolder]) -> list[str]:
    names = [r.run_id for r in runs]
    counts = {n: names.count(n) for n in names}
    return [n if counts[n] == 1 else f"{n} ({r.path})" for n, r in zip(names, runs)]


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
    for run, name in zip(runs, _run_names(runs)):
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
    return RunData(runs=runs, events=_add_params(columns.frame(), manifests),
                   points=_points_frame(point_rows),
                   manifests=manifests, non_numeric=columns.non_numeric)
