"""Sending OTLP requests to a collector (``otel-sparse replay``): over HTTP or gRPC, one by one.

The library's own export goes through the OTel SDK exporters; this module sends requests that
were written to disk earlier (the ``otlp_file`` exporter), keeping their timestamps.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from otel_sparse._safety import mask_url
from otel_sparse.config import OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, otlp_headers, otlp_setting

if TYPE_CHECKING:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )



_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}


class SendError(Exception):
    """The collector did not take a request (message fit for users)."""


def resolve_endpoint(endpoint: str | None, protocol: str,
                     environ: Mapping[str, str] | None = None) -> str:
    """Where ``replay`` sends: the argument, else OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT
    (``config.otlp_setting``), else localhost. For HTTP the result is the full URL,
    ``/v1/metrics`` included (a metrics-only endpoint variable is used as is, as OTel says)."""
    found = otlp_setting("endpoint", endpoint, environ)
    per_signal = found is not None and found[0] == OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
    endpoint = found[1] if found is not None else _DEFAULT_ENDPOINTS[protocol]
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if protocol == "http/protobuf" and not per_signal:
        parsed = urllib.parse.urlparse(endpoint)
        if not parsed.path.rstrip("/").endswith("/v1/metrics"):
            endpoint = endpoint.rstrip("/") + "/v1/metrics"
    return endpoint


def parse_headers(raw: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (comma-separated lists too) as a dict; values URL-decoded."""
    headers: dict[str, str] = {}
    for item in raw:
        for pair in item.split(","):
            if not pair.strip():
                continue
            if "=" not in pair:
                raise ValueError("every header must be key=value")  # never echo: tokens
            key, value = pair.split("=", 1)
            headers[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return headers


def env_headers(environ: Mapping[str, str] | None = None) -> list[str]:
    """OTEL_EXPORTER_OTLP_[METRICS_]HEADERS (``config.otlp_headers``) as one raw item, or none."""
    raw = otlp_headers(None, environ)
    return [raw] if raw else []


class HttpSender:
    """POSTs protobuf requests to an OTLP/HTTP endpoint."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        self.url = url
        self.headers = {"Content-Type": "application/x-protobuf", **headers}
        self.timeout_s = timeout_s

    def send(self, request: ExportMetricsServiceRequest) -> int:
        """Send one request; returns the data points the collector rejected."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )

        body = request.SerializeToString()
        http_request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                              method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                payload = response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").strip()
            raise SendError(f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
                            ) from None
        except urllib.error.URLError as exc:
            raise SendError(f"cannot connect: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise SendError(f"cannot connect: {exc}") from None
        if payload and "protobuf" in content_type:
            answer = ExportMetricsServiceResponse()
            try:
                answer.ParseFromString(payload)
            except Exception:  # a proxy's odd body: the status code already said OK
                return 0
            return int(answer.partial_success.rejected_data_points)
        return 0

    def close(self) -> None:
        """Nothing to release."""


class GrpcSender:
    """Calls MetricsService/Export on an OTLP/gRPC endpoint."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        import grpc  # type: ignore[import-untyped, unused-ignore]
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
            MetricsServiceStub,
        )

        parsed = urllib.parse.urlparse(url)
        if not parsed.hostname:
            raise SendError(f"cannot read host and port from {mask_url(url)!r}")
        target = f"{parsed.hostname}:{parsed.port or 4317}"
        if parsed.scheme == "https":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = MetricsServiceStub(self.channel)  # type: ignore[no-untyped-call, unused-ignore]
        self.metadata = list(headers.items())
        self.timeout_s = timeout_s
        self._grpc = grpc

    def send(self, request: ExportMetricsServiceRequest) -> int:
        """Send one request; returns the data points the collector rejected."""
        try:
            answer = self.stub.Export(request, timeout=self.timeout_s,
                                      metadata=self.metadata or None)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "error"
            raise SendError(f"gRPC {name}: {details}") from None
        return int(answer.partial_success.rejected_data_points)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
