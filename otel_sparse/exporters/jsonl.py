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
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    Sum,
)

from otel_sparse._exponential import flat_buckets
from otel_sparse.exporters._files import AppendOnlyFile
from otel_sparse.exporters.extras import LocalExporter
from otel_sparse.layout import (
    EXPONENTIAL_COLUMNS,
    METRICS_COLUMNS,
    METRICS_FILE_NAME,
    RESOURCE_COLUMNS,
    RESOURCE_PREFIX,
)

_logger = logging.getLogger("otel_sparse")

__all__ = ["METRICS_FILE_NAME", "JsonlMetricExporter", "metrics_rows"]

_warned_types: set[str] = set()

_ROW_FIELDS = frozenset(METRICS_COLUMNS + EXPONENTIAL_COLUMNS)
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
        column = RESOURCE_COLUMNS.get(key) or key.replace(".", "_")
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
                kind = _kind(metric.name, data)
                if kind is None:
                    continue
                temporality = (
                    "none" if isinstance(data, Gauge)
                    else _TEMPORALITY.get(data.aggregation_temporality, "none")
                )
                for point in data.data_points:
                    attrs = dict(point.attributes or {})
                    if isinstance(point, (HistogramDataPoint, ExponentialHistogramDataPoint)):
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
                    row.update(_value_columns(point))
                    row["attributes"] = attrs
                    row.update(resource)
                    rows.append(row)
    return rows


def _kind(name: str, data: Any) -> str | None:
    """The ``type`` column of a metric's data; None (warned once) for an unknown kind."""
    if isinstance(data, (Histogram, ExponentialHistogram)):
        return "histogram"
    if isinstance(data, Sum):
        return "counter" if data.is_monotonic else "up_down_counter"
    if isinstance(data, Gauge):
        return "gauge"
    _warn_unknown(name, data)
    return None


def _value_columns(point: Any) -> dict[str, Any]:
    """count/sum/min/max/buckets of a histogram point, or the value of a number point."""
    if isinstance(point, HistogramDataPoint):
        return dict(count=point.count, sum=point.sum, min=point.min, max=point.max,
                    bucket_bounds=list(point.explicit_bounds),
                    bucket_counts=list(point.bucket_counts), value=None)
    if isinstance(point, ExponentialHistogramDataPoint):
        bounds, counts = flat_buckets(point.scale, point.zero_count,
                                      point.positive, point.negative)
        columns = dict(count=point.count, sum=point.sum, min=point.min, max=point.max,
                       bucket_bounds=bounds, bucket_counts=counts, value=None)
        columns.update(zip(EXPONENTIAL_COLUMNS, (
            point.scale, point.zero_count,
            point.positive.offset, list(point.positive.bucket_counts),
            point.negative.offset, list(point.negative.bucket_counts),
        )))
        return columns
    return dict(count=None, sum=None, min=None, max=None, bucket_bounds=None,
                bucket_counts=None, value=point.value)


def _warn_unknown(name: str, data: Any) -> None:
    kind = type(data).__name__
    if kind not in _warned_types:
        _warned_types.add(kind)
        _logger.warning("otel_sparse: metrics.jsonl has no rows for %s points (metric %s); "
                        "they reach the other exporters only", kind, name)


class JsonlMetricExporter(MetricExporter, LocalExporter):
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
