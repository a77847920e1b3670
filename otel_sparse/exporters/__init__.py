"""Every exporter in its own module; this package builds the set a logger uses."""

from __future__ import annotations

import os
import sys
from typing import Any

from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricExporter

from otel_sparse.exporters.jsonl import JsonlMetricExporter
from otel_sparse.exporters.otlp import QuietOtlpExporter, make_otlp_exporter
from otel_sparse.layout import METRICS_FILE_NAME, OTLP_FILE_NAME, process_file_name

__all__ = [
    "JsonlMetricExporter",
    "OtlpJsonFileExporter",
    "build_exporter",
]


def build_exporter(
    name: str, log_path: str, file_suffix: str, otlp_file: str | None = None
) -> MetricExporter:
    """The exporter called ``name`` for a logger writing under ``log_path``."""
    if name == "jsonl":
        return JsonlMetricExporter(
            os.path.join(log_path, process_file_name(METRICS_FILE_NAME, file_suffix))
        )
    if name == "otlp_file":
        # imported here: the OTel proto packages add a tenth of a second to every import
        from otel_sparse.exporters.otlp_json_file import OtlpJsonFileExporter

        # every process its own file, also when OTEL_SPARSE_OTLP_FILE names one for all
        path = otlp_file or os.path.join(log_path, OTLP_FILE_NAME)
        return OtlpJsonFileExporter(process_file_name(path, file_suffix))
    if name == "otlp":
        return QuietOtlpExporter(make_otlp_exporter())  # library log lines: one report
    if name == "console":
        return ConsoleMetricExporter(out=sys.stderr)
    raise ValueError(f"unknown exporter {name!r}")


def __getattr__(name: str) -> Any:
    """``OtlpJsonFileExporter`` on first use (see build_exporter)."""
    if name == "OtlpJsonFileExporter":
        from otel_sparse.exporters.otlp_json_file import OtlpJsonFileExporter

        return OtlpJsonFileExporter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
