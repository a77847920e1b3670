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

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from otel_sparse._instruments import EXPONENTIAL_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

_logger = logging.getLogger("otel_sparse.analysis")

MANIFEST_NAME = "run.json"
EVENT_FILE_RE = re.compile(r"^micro_metrics(?:\.rank(?P<rank>\d+)\.pid(?P<pid>\d+))?\.jsonl$")
POINT_FILE_RE = re.compile(r"^metrics(?:\.rank(?P<rank>\d+)\.pid(?P<pid>\d+))?\.jsonl$")
OTLP_DIR = "otlp"

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
_LAYER_KEYS = ("layer", "layer_idx")
_HEAD_KEYS = ("head", "head_idx")

STATS = ("count", "mean", "min", "max", "p50", "p95")
"""Statistics ``summarize`` computes, in column order."""

HEATMAP_STATS = ("mean", "p50", "p95", "min", "max", "count")
"""Statistics a layer x head heatmap can show."""


class AnalysisError(Exception):
    """A run cannot be read or does not hold what was asked for (message fit for users)."""


class RunNotFoundError(AnalysisError, FileNotFoundError):
    """A path does not exist or holds no run."""


class UnknownMetricError(AnalysisError, LookupError):
    """A metric that the run never logged."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""


# -- finding files ------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    """One JSONL file of a run, with the rank and pid its name carries (None for rank 0)."""

    path: str
    rank: int | None
    pid: int | None


@dataclass
class RunFolder:
    """The files of one run folder."""

    path: str
    name: str
    manifest: dict[str, Any]
    event_files: list[DataFile] = field(default_factory=list)
    point_files: list[DataFile] = field(default_factory=list)
    otlp_files: list[DataFile] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        """The manifest's run id, else the folder name."""
        run_id = self.manifest.get("run_id")
        return str(run_id) if run_id else os.path.basename(os.path.abspath(self.path))

    @property
    def has_files(self) -> bool:
        """Whether any run file is there (an empty folder is not a run)."""
        return bool(self.manifest or self.event_files or self.point_files or self.otlp_files)


def _data_files(folder: str, pattern: re.Pattern[str]) -> list[DataFile]:
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out: list[DataFile] = []
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        rank = match.group("rank")
        pid = match.group("pid")
        out.append(DataFile(path, None if rank is None else int(rank),
                            None if pid is None else int(pid)))
    # rank 0's own file first, then by rank and pid
    out.sort(key=lambda f: (f.rank is not None, f.rank or 0, f.pid or 0))
    return out


def read_manifest(folder: str) -> dict[str, Any]:
    """``run.json`` of a run folder, or {} when missing or unreadable (warned)."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        _logger.warning("otel_sparse: cannot read %s (%s); ignoring it", path, exc)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def scan_run(folder: str) -> RunFolder:
    """The run files of one folder (which may hold none)."""
    return RunFolder(
        path=folder,
        name=os.path.basename(os.path.abspath(folder)),
        manifest=read_manifest(folder),
        event_files=_data_files(folder, EVENT_FILE_RE),
        point_files=_data_files(folder, POINT_FILE_RE),
        otlp_files=_data_files(os.path.join(folder, OTLP_DIR), POINT_FILE_RE),
    )


def find_runs(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[RunFolder]:
    """Run folders named by ``paths``: run folders, files inside them, or parents of runs.

    A folder without run files whose subfolders hold runs is a parent of runs; a folder with
    neither counts as one (empty) run. Raises RunNotFoundError for a path that does not exist.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise RunNotFoundError("no run path given")
    runs: list[RunFolder] = []
    seen: set[str] = set()
    for item in items:
        path = os.fspath(item)
        if not os.path.exists(path):
            raise RunNotFoundError(f"no such file or directory: {path}")
        if os.path.isfile(path):
            path = os.path.dirname(os.path.abspath(path))
        run = scan_run(path)
        found = [run]
        if not run.has_files:
            children = sorted(
                os.path.join(path, name) for name in os.listdir(path)
                if os.path.isdir(os.path.join(path, name))
            )
            nested = [r for r in map(scan_run, children) if r.has_files]
            if nested:
                found = nested
        for r in found:
            key = os.path.realpath(r.path)
            if key not in seen:
                seen.add(key)
                runs.append(r)
    return runs


def latest_run(parent: str | os.PathLike[str]) -> RunFolder:
    """The most recently modified run under ``parent`` (or ``parent`` itself if it is a run)."""
    runs = find_runs(parent)

    def mtime(run: RunFolder) -> float:
        files = [f.path for f in run.event_files + run.point_files]
        files.append(os.path.join(run.path, MANIFEST_NAME))
        return max((os.path.getmtime(p) for p in files if os.path.exists(p)), default=0.0)

    return max(runs, key=mtime)


# -- reading JSONL ------------------------------------------------------------------------


@dataclass
class BadLines:
    """Lines skipped while reading, reported in one warning per read."""

    where: list[tuple[str, int | None, bool]] = field(default_factory=list)

    def add(self, path: str, lineno: int | None, truncated: bool) -> None:
        """Remember one skipped line (``truncated``: the last line, without its newline)."""
        self.where.append((path, lineno, truncated))

    def report(self) -> None:
        """Log one warning naming the skipped lines, if any."""
        if not self.where:
            return
        shown = ", ".join(
            f"{path}{'' if lineno is None else f':{lineno}'}"
            f"{' (truncated last line)' if truncated else ''}"
            for path, lineno, truncated in self.where[:5]
        )
        more = f" and {len(self.where) - 5} more" if len(self.where) > 5 else ""
        _logger.warning("otel_sparse: skipped %d unreadable line(s): %s%s",
                        len(self.where), shown, more)
        self.where.clear()


def _loads(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN / Infinity, as Python's json writes them


def iter_json_lines(path: str, bad: BadLines) -> Iterator[dict[str, Any]]:
    """Each JSON object of a JSONL file; an unreadable line is skipped and noted in ``bad``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                record = _loads(text)
            except ValueError:
                bad.add(path, lineno, truncated=not raw.endswith(b"\n"))
                continue
            if isinstance(record, dict):
                yield record
            else:
                bad.add(path, lineno, truncated=False)


# -- events -------------------------------------------------------------------------------


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
        layer = _first_key(metadata, _LAYER_KEYS)
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
            self.head.append(_first_key(metadata, _HEAD_KEYS))
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


# -- numbers for the CLI ------------------------------------------------------------------


def resolve_metric(name: str, available: Iterable[str]) -> str:
    """``name`` as logged; the OTel name (``sparse_attention.<id>``) is accepted too.

    Raises:
        UnknownMetricError: the run has no such metric.
    """
    known = sorted(set(available))
    if name in known:
        return name
    for candidate in known:
        if name.endswith("." + candidate):
            return candidate
    listed = ", ".join(known) if known else "none"
    raise UnknownMetricError(f"unknown metric {name!r}; the run has: {listed}")


def summarize(
    events: pd.DataFrame, by_head: bool = False, metric: str | None = None,
    by_run: bool = False,
) -> pd.DataFrame:
    """Exact count, mean, min, max, p50, p95 per metric x layer (x head) of the event values.

    Percentiles interpolate linearly between values (numpy's default). NaN values are left
    out of every statistic, count included.

    Args:
        events: ``RunData.events``.
        by_head: one row per head too.
        metric: only this metric (identifier or OTel name).
        by_run: one row per run too.

    Raises:
        UnknownMetricError: ``metric`` was never logged.
    """
    import pandas as pd

    if metric is not None:
        metric = resolve_metric(metric, events["metric"].tolist())
        events = events[events["metric"] == metric]
    keys = (["run"] if by_run else []) + ["metric", "layer"] + (["head"] if by_head else [])
    if events.empty:
        return pd.DataFrame(columns=[*keys, *STATS])
    grouped = events.groupby(keys, dropna=False, sort=True)["value"]
    out = grouped.agg(["count", "mean", "min", "max"])
    out["p50"] = grouped.quantile(0.5)
    out["p95"] = grouped.quantile(0.95)
    out = out.reset_index()
    out["count"] = out["count"].astype("int64")
    return out[[*keys, *STATS]]


def layer_head_matrix(
    events: pd.DataFrame, metric: str, stat: str = "mean"
) -> tuple[np.ndarray, list[int], list[int]]:
    """A [layers, heads] array of one statistic of ``metric``, with the layer and head ids.

    Cells without data are NaN. Raises UnknownMetricError for an unknown metric and
    AnalysisError when the metric has no layer and head breakdown.
    """
    import numpy as np

    if stat not in HEATMAP_STATS:
        raise AnalysisError(f"unknown statistic {stat!r}; choose from {', '.join(HEATMAP_STATS)}")
    metric = resolve_metric(metric, events["metric"].tolist())
    rows = events[(events["metric"] == metric)]
    rows = rows[rows["layer"].notna() & rows["head"].notna()]
    if rows.empty:
        raise AnalysisError(
            f"metric {metric!r} has no layer/head breakdown (log a [heads] tensor with "
            "metadata layer_idx, or scalars with layer_idx and head_idx)"
        )
    grouped = rows.groupby(["layer", "head"])["value"]
    if stat == "p50":
        table = grouped.quantile(0.5)
    elif stat == "p95":
        table = grouped.quantile(0.95)
    else:
        table = grouped.agg(stat)
    layers = sorted(int(x) for x in rows["layer"].unique())
    heads = sorted(int(x) for x in rows["head"].unique())
    li = {layer: i for i, layer in enumerate(layers)}
    hi = {head: i for i, head in enumerate(heads)}
    matrix = np.full((len(layers), len(heads)), np.nan)
    for index, value in table.items():
        key: tuple[Any, Any] = index  # type: ignore[assignment]
        matrix[li[int(key[0])], hi[int(key[1])]] = float(value)
    return matrix, layers, heads


def plot_heatmap(
    matrix: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | os.PathLike[str],
    title: str,
    colorbar_label: str,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    annotate: bool | None = None,
) -> None:
    """Save a layer x head heatmap (rows: layers, columns: heads) as an image file.

    Args:
        matrix: [layers, heads] values; NaN cells are drawn grey.
        layers: the layer id of each row.
        heads: the head id of each column.
        path: where to save (the format follows the suffix, ``.png`` usually).
        title: the figure title.
        colorbar_label: the colour bar's label.
        size: (width, height) in inches; default grows with the grid.
        dpi: pixels per inch; the image is ``size * dpi`` pixels.
        annotate: write each cell's value; default for grids of at most 16 x 16.
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    n_layers, n_heads = matrix.shape
    if size is None:
        size = (min(16.0, max(5.0, 0.55 * n_heads + 2.5)),
                min(14.0, max(3.5, 0.4 * n_layers + 1.8)))
    if annotate is None:
        annotate = n_layers <= 16 and n_heads <= 16
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    masked = np.ma.masked_invalid(matrix)
    image = ax.imshow(masked, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    if n_heads <= 32:
        ax.set_xticks(range(n_heads), [str(h) for h in heads])
    if n_layers <= 48:
        ax.set_yticks(range(n_layers), [str(layer) for layer in layers])
    fig.colorbar(image, ax=ax, label=colorbar_label)
    if annotate and masked.count():
        lo, hi = float(masked.min()), float(masked.max())
        mid = (lo + hi) / 2
        for i in range(n_layers):
            for j in range(n_heads):
                value = matrix[i, j]
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                            color="black" if value > mid else "white")
    fig.savefig(os.fspath(path), dpi=dpi)


# -- OTLP/JSON files ----------------------------------------------------------------------


def parse_otlp_line(line: str | bytes) -> ExportMetricsServiceRequest:
    """One OTLP/JSON line (as the ``otlp_file`` exporter or the collector writes) as a request.

    Raises:
        google.protobuf.json_format.ParseError: the line is not an OTLP/JSON request.
    """
    from google.protobuf.json_format import Parse  # type: ignore[import-untyped, unused-ignore]
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    text = line.decode("utf-8") if isinstance(line, bytes) else line
    request = ExportMetricsServiceRequest()
    Parse(text, request, ignore_unknown_fields=True)
    return request


def otlp_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """The OTLP/JSON files of runs (``otlp/metrics*.jsonl``, all ranks); a file path as is.

    Raises:
        RunNotFoundError: a path does not exist.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[str] = []
    for item in items:
        path = os.fspath(item)
        if os.path.isfile(path):
            out.append(path)
        else:
            out.extend(f.path for run in find_runs(path) for f in run.otlp_files)
    return out


def read_otlp_requests(path: str | os.PathLike[str]) -> list[ExportMetricsServiceRequest]:
    """Every request of one OTLP/JSON lines file.

    A last line cut mid-write is skipped with one warning; any other line that does not
    parse raises AnalysisError naming the file and line.
    """
    from google.protobuf.json_format import (  # type: ignore[import-untyped, unused-ignore]
        ParseError,
    )

    requests: list[ExportMetricsServiceRequest] = []
    bad = BadLines()
    with open(path, "rb") as f:
        lines = f.readlines()
    for lineno, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text:
            continue
        try:
            requests.append(parse_otlp_line(text))
        except (ParseError, UnicodeDecodeError) as exc:
            if lineno == len(lines) and not raw.endswith(b"\n"):
                bad.add(os.fspath(path), lineno, truncated=True)
                continue
            raise AnalysisError(f"{os.fspath(path)}:{lineno}: not an OTLP/JSON metrics "
                                f"request ({exc})") from None
    bad.report()
    return requests


def count_data_points(request: ExportMetricsServiceRequest) -> int:
    """Data points in one request, over every metric type."""
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


class EventFollower:
    """Reads the complete lines that a live run's event files (every rank) gain, for ``tail``.

    Example:
        >>> follower = EventFollower("otel_sparse_runs/<run>")   # doctest: +SKIP
        >>> for data_file, event in follower.poll(): ...          # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike[str], last: int | None = None) -> None:
        """Args:
            folder: the run folder.
            last: on the first poll, start about this many lines from each file's end
                (None: from the start).
        """
        self.folder = os.fspath(folder)
        self._last = last
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}
        self._bad = BadLines()
        self._started = False

    def poll(self) -> list[tuple[DataFile, dict[str, Any]]]:
        """Events written since the last poll, in timestamp order; a partial last line waits."""
        found: list[tuple[DataFile, dict[str, Any]]] = []
        window = self._last is not None and not self._started  # files there at the start
        for data_file in _data_files(self.folder, EVENT_FILE_RE):
            path = data_file.path
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            offset = self._offsets.get(path, 0)
            skip_head = False
            if window and self._last is not None:
                offset = max(0, size - 8192 * max(1, self._last))
                skip_head = offset > 0
            if size < offset:  # truncated or replaced: read it again from the start
                offset = 0
                self._partial.pop(path, None)
            if size == offset:
                self._offsets[path] = offset
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            buffer = self._partial.pop(path, b"") + data
            lines = buffer.split(b"\n")
            if skip_head:
                lines = lines[1:]  # started mid-file: the first piece is a line's tail
            rest = lines.pop() if lines else b""
            if rest:
                self._partial[path] = rest
            self._offsets[path] = offset + len(data)
            for line in lines:
                text = line.strip()
                if not text:
                    continue
                try:
                    record = _loads(text)
                except ValueError:
                    self._bad.add(path, None, truncated=False)
                    continue
                if isinstance(record, dict):
                    found.append((data_file, record))
        self._bad.report()
        found.sort(key=lambda item: str(item[1].get("timestamp", "")))
        if window and self._last is not None:
            found = found[-self._last:] if self._last > 0 else []
        self._started = True
        return found
