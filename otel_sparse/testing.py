"""Helpers for researchers' own tests: an in-memory metric sink to assert on.

Example:
    >>> from otel_sparse import MicroMetricLogger
    >>> from otel_sparse.testing import InMemoryMetricExporter
    >>> sink = InMemoryMetricExporter()
    >>> MicroMetricLogger.register_metric("density", float)
    >>> logger = MicroMetricLogger(log_path="/tmp/x", enabled_metrics="all",
    ...                            exporters=[sink])                  # doctest: +SKIP
    >>> logger.log("density", 0.5, {"layer_idx": 0}); logger.flush()  # doctest: +SKIP
    >>> sink.histogram("sparse_attention.density", layer=0).sum       # doctest: +SKIP
    0.5
"""

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


class HostSyncError(AssertionError):
    """A tensor was read back to the host inside ``forbid_host_reads()``."""


def forbid_host_reads() -> Any:
    """A torch function mode that fails on every tensor read back to the host.

    ``.item()``, ``.tolist()``, ``float()``, ``int()``, ``bool()``, ``operator.index``,
    ``.cpu()`` and ``.numpy()`` of a tensor raise ``HostSyncError``: on a GPU each would
    synchronise. Proves, on a CPU-only machine, that code such as ``log()`` never forces a
    sync. Imports torch when called.

    Example:
        >>> with forbid_host_reads():                            # doctest: +SKIP
        ...     logger.log("density", per_head, {"layer_idx": 0})
    """
    import torch
    from torch.overrides import TorchFunctionMode

    host_reads = {
        torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
        torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy,
    }

    class ForbidHostReads(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
        ) -> Any:
            if func in host_reads:
                raise HostSyncError(f"a tensor was read back to the host via {func.__name__}")
            return func(*args, **(kwargs or {}))

    return ForbidHostReads()
