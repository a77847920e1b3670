"""``otel-sparse replay``: send a run's OTLP/JSON lines to a collector."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from otel_sparse._safety import mask_text, mask_url
from otel_sparse.analysis import (
    AnalysisError,
)
from otel_sparse.cli._common import (
    EXIT_FAILED,
    analysis_errors,
    app,
    console,
    fail,
)
from otel_sparse.otlp_send import (
    GrpcSender,
    HttpSender,
    SendError,
    env_headers,
    parse_headers,
    resolve_endpoint,
)

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )



class Protocol(str, enum.Enum):
    """OTLP transport for ``replay``."""

    grpc = "grpc"
    http = "http/protobuf"


@app.command()
def replay(
    run: Annotated[Path, typer.Argument(
        help="A run folder (its otlp/metrics*.jsonl), a folder of runs, or an OTLP/JSON file.",
        show_default=False)],
    endpoint: Annotated[Optional[str], typer.Option(
        help="Collector URL, e.g. http://localhost:4318. Default: OTEL_EXPORTER_OTLP_"
             "[METRICS_]ENDPOINT, else localhost:4318 (http) / :4317 (grpc).",
        show_default=False)] = None,
    protocol: Annotated[Optional[Protocol], typer.Option(
        help="Default: OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL, else http/protobuf.",
        show_default=False)] = None,
    header: Annotated[Optional[list[str]], typer.Option(
        "--header", "-H", help="Extra header key=value (repeatable). Default: "
                               "OTEL_EXPORTER_OTLP_[METRICS_]HEADERS.", show_default=False)]
    = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
) -> None:
    """Send a run's OTLP/JSON lines (exporter otlp_file) to a collector over OTLP."""
    from otel_sparse.analysis import count_data_points, otlp_files, read_otlp_requests
    from otel_sparse.exporters.otlp import OtlpConfigError, resolve_protocol

    try:
        files = otlp_files(str(run))
    except AnalysisError as exc:
        fail(str(exc))
    if not files:
        fail(f"no OTLP/JSON file in {run}: log with exporters jsonl,otlp_file "
              "(OTEL_SPARSE_EXPORTERS=jsonl,otlp_file) to write otlp/metrics.jsonl")
    requests: list[ExportMetricsServiceRequest] = []
    with analysis_errors():
        for path in files:
            requests.extend(read_otlp_requests(path))
    if not requests:
        fail(f"no OTLP requests in {', '.join(files)}: the file is empty")
    try:
        resolved = resolve_protocol(None if protocol is None else protocol.value)
        headers = parse_headers(header if header else env_headers())
    except (OtlpConfigError, ValueError) as exc:
        fail(str(exc))
    url = resolve_endpoint(endpoint, resolved)
    sender: HttpSender | GrpcSender
    try:
        sender = GrpcSender(url, headers, timeout) if resolved == "grpc" \
            else HttpSender(url, headers, timeout)
    except SendError as exc:
        fail(mask_text(str(exc)))
    shown = mask_url(url)  # printed: never the URL's credentials
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = console(stderr=True)
    sent_points = 0
    rejected = 0
    failure: str | None = None
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"replaying to {shown}", total=len(requests))
            for i, request in enumerate(requests, 1):
                try:
                    rejected += sender.send(request)
                except SendError as exc:
                    failure = (f"collector at {shown} ({resolved}) refused request "
                               f"{i}/{len(requests)}: {mask_text(str(exc))}")
                    break
                sent_points += count_data_points(request)
                progress.update(task, completed=i)
    finally:
        sender.close()
    if failure is not None:
        fail(failure, EXIT_FAILED)
    console().print(f"replayed {len(requests)} request(s), {sent_points} data points, from "
                     f"{len(files)} file(s) to {escape(shown)} ({resolved})", soft_wrap=True)
    if rejected:
        fail(f"the collector rejected {rejected} data point(s) (partial success)", EXIT_FAILED)
