"""The in-memory metric sink (imports the OTel SDK): ``otel_sparse.testing`` re-exports it."""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
)

from otel_sparse.exporters.extras import LocalExporter

__all__ = ["InMemoryMetricExporter"]


class InMemoryMetricExporter(MetricExporter, LocalExporter):
    """Keeps every exported MetricsData; ``flush()`` on the logger exports to it at once."""

    is_local = True
    """``flush()`` waits for local exporters (never for the network)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self.exports: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Keep the data."""
        with self._lock:
            self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""

    def points(self, metric: str) -> list[HistogramDataPoint | NumberDataPoint]:
        """Data points of ``metric`` in the latest export that has it."""
        with self._lock:
            exports = list(self.exports)
        for data in reversed(exports):
            found = [
                point
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
                if m.name == metric
                for point in m.data.data_points
            ]
            if found:
                return found  # type: ignore[return-value]
        return []

    def histogram(self, metric: str, /, **attributes: Any) -> HistogramDataPoint:
        """The latest histogram point of ``metric`` whose attributes include ``attributes``."""
        for point in self.points(metric):
            if isinstance(point, HistogramDataPoint) and all(
                (point.attributes or {}).get(k) == v for k, v in attributes.items()
            ):
                return point
        raise KeyError(f"no histogram point of {metric!r} with {attributes}")

    def value(self, metric: str, /, **attributes: Any) -> float:
        """The latest counter/gauge value of ``metric`` with ``attributes``."""
        for point in self.points(metric):
            if isinstance(point, NumberDataPoint) and all(
                (point.attributes or {}).get(k) == v for k, v in attributes.items()
            ):
                return float(point.value)
        raise KeyError(f"no number point of {metric!r} with {attributes}")
