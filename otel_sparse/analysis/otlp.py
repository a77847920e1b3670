"""OTLP/JSON files: the ``otlp_file`` exporter's requests, read back for replay."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from otel_sparse.analysis.errors import AnalysisError
from otel_sparse.analysis.jsonl import BadLines
from otel_sparse.analysis.runs import find_runs

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )



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
