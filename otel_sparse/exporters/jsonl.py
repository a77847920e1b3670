"""JSONL metric exporter: one flat row per data point, for ``pandas.read_json(path, lines=True)``.

Rows are strict JSON (non-finite numbers become null). Each row carries the cumulative (or
delta) state of one series at one export; a series that did not change since the previous
export is not written again, so a long run does not repeat thousands of idle series every
few seconds. The latest row per (metric, layer, head, rank) holds the totals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import orjson
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from otel_sparse.exporters._files import AppendOnlyFile

_logger = logging.getLogger("otel_sparse")

METRICS_FILE_NAME = "metrics.jsonl"

# Resource attributes promoted to their own short columns; the rest keep their dotted name
# with dots turned into underscores.
_RESOURCE_COLUMNS = {
    "run.id": "run_id",
    "rank": "rank",
    "world.size": "world_size",
    "local.rank": "local_rank",
    "host.name": "host_name",
    "process.pid": "pid",
    "service.name": "service_name",
    "service.instance.id": "service_instance_id",
}

RESOURCE_PREFIX = "resource_"
"""Column prefix of a resource attribute whose column name is one of a row's own fields
(``OTEL_RESOURCE_ATTRIBUTES=type=training`` becomes ``resource_type``): the row's fields win."""

_ROW_FIELDS = frozenset({
    "timestamp", "start_time", "temporality", "metric", "type", "unit", "layer", "head",
    "count", "sum", "min", "max", "bucket_bounds", "bucket_counts", "value", "attributes",
})
"""Every field a row sets itself, whatever the resource says."""

_TEMPORALITY = {
    AggregationTemporality.CUMULATIVE: "cumulative",
    AggregationTemporality.DELTA: "delta",
}


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).isoformat(timespec="microseconds")


def _resource_columns(attributes: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if key.startswith("telemetry.sdk."):
            continue
        column = _RESOURCE_COLUMNS.get(key) or key.replace(".", "_")
        if column in _ROW_FIELDS:
            column = RESOURCE_PREFIX + column
        out[column] = value
    return out


def metrics_rows(
    metrics_data: MetricsData, last_seen: dict[tuple[Any, ...], tuple[Any, ...]] | None = None
) -> list[dict[str, Any]]:
    """Flatten OTel MetricsData into rows; with ``last_seen``, skip series that did not change."""
    rows: list[dict[str, Any]] = []
    for rm in metrics_data.resource_metrics:
        resource = _resource_columns(rm.resource.attributes)
        instance = resource.get("service_instance_id")
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                data = metric.data
                kind: str
                if isinstance(data, Histogram):
                    kind = "histogram"
                elif isinstance(data, Sum):
                    kind = "counter" if data.is_monotonic else "up_down_counter"
                elif isinstance(data, Gauge):
                    kind = "gauge"
                else:
                    continue
                temporality = (
                    "none" if isinstance(data, Gauge)
                    else _TEMPORALITY.get(data.aggregation_temporality, "none")
                )
                for point in data.data_points:
                    attrs = dict(point.attributes or {})
                    if isinstance(point, HistogramDataPoint):
                        state: tuple[Any, ...] = (point.count, point.sum)
                    else:
                        assert isinstance(point, NumberDataPoint)
                        state = (point.value, point.time_unix_nano if kind == "gauge" else 0)
                    if last_seen is not None and temporality != "delta":
                        series = (instance, metric.name, tuple(sorted(attrs.items())))
                        if last_seen.get(series) == state:
                            continue
                        last_seen[series] = state
                    row: dict[str, Any] = {
                        "timestamp": _utc(point.time_unix_nano),
                        "start_time": _utc(point.start_time_unix_nano),
                        "temporality": temporality,
                        "metric": metric.name,
                        "type": kind,
                        "unit": metric.unit,
                        "layer": attrs.pop("layer", None),
                        "head": attrs.pop("head", None),
                    }
                    if isinstance(point, HistogramDataPoint):
                        row.update(
                            count=point.count,
                            sum=point.sum,
                            min=point.min,
                            max=point.max,
                            bucket_bounds=list(point.explicit_bounds),
                            bucket_counts=list(point.bucket_counts),
                            value=None,
                        )
                    else:
                        row.update(count=None, sum=None, min=None, max=None,
                                   bucket_bounds=None, bucket_counts=None, value=point.value)
                    row["attributes"] = attrs
                    row.update(resource)
                    rows.append(row)
    return rows


class JsonlMetricExporter(MetricExporter):
    """Write metric points to a local JSONL file, one flat row per data point.

    Example:
        >>> import pandas as pd                                  # doctest: +SKIP
        >>> df = pd.read_json("otel_sparse_runs/<run>/metrics.jsonl", lines=True)  # doctest: +SKIP
    """

    is_local = True
    """``flush()`` waits for local exporters (never for the network)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._file = AppendOnlyFile(path)
        self._last_seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._warned = False

    @property
    def path(self) -> str:
        """Where the rows go."""
        return self._file.path

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Append the rows of one collection; FAILURE (logged once) if the disk refuses."""
        seen = dict(self._last_seen)
        rows = metrics_rows(metrics_data, seen)
        try:
            self._file.append_lines(
                [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in rows]
            )
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _logger.warning("otel_sparse: cannot write %s (%s); will retry", self.path, exc)
            return MetricExportResult.FAILURE
        self._last_seen = seen
        self._warned = False
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered: every export is written before it returns."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release: the file is opened per export."""
