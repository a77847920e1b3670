"""OTLP-JSON lines file, in the format the collector's ``file`` exporter writes.

Each export is one line holding an ``ExportMetricsServiceRequest`` in OTLP/JSON (camelCase
fields, enums as integers, 64-bit integers as strings), encoded by the OTel proto packages.
An offline run written this way can be replayed into a collector later by its
``otlpjsonfile`` receiver or by ``otel-sparse replay``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_sparse.exporters._files import AppendOnlyFile
from otel_sparse.exporters.extras import LocalExporter
from otel_sparse.layout import OTLP_FILE_NAME

_logger = logging.getLogger("otel_sparse")

__all__ = ["OTLP_FILE_NAME", "OtlpJsonFileExporter", "otlp_json_line"]


def otlp_json_line(metrics_data: MetricsData) -> bytes:
    """One OTLP/JSON ``ExportMetricsServiceRequest`` line (no newline)."""
    request = encode_metrics(metrics_data)
    as_dict = MessageToDict(request, use_integers_for_enums=True)
    return orjson.dumps(as_dict)


class OtlpJsonFileExporter(MetricExporter, LocalExporter):
    """Append each collection to a file as one OTLP/JSON line."""

    is_local = True
    """``flush()`` waits for local exporters (never for the network)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._file = AppendOnlyFile(path)
        self._warned = False

    @property
    def path(self) -> str:
        """Where the lines go."""
        return self._file.path

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Append one line; FAILURE (logged once) if the disk refuses it."""
        if not any(sm.metrics for rm in metrics_data.resource_metrics for sm in rm.scope_metrics):
            return MetricExportResult.SUCCESS
        try:
            self._file.append_lines([otlp_json_line(metrics_data)])
        except OSError as exc:
            if not self._warned:
                self._warned = True
                _logger.warning("otel_sparse: cannot write %s (%s); will retry", self.path, exc)
            return MetricExportResult.FAILURE
        self._warned = False
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Nothing is buffered."""
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release."""
