"""OTLP export over gRPC or HTTP/protobuf, set up by the standard OTEL_EXPORTER_OTLP_* variables.

The exporters are opentelemetry-exporter-otlp's own; this module only picks the protocol
(argument, then ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``, then ``OTEL_EXPORTER_OTLP_PROTOCOL``,
then ``http/protobuf`` as the OTel specification asks) and checks the configuration up front,
so that a typo fails at configuration time rather than as a stream of export errors.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse

from opentelemetry.sdk.metrics.export import MetricExporter

PROTOCOLS = ("grpc", "http/protobuf")

_ENV_PROTOCOL = ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
_ENV_ENDPOINT = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_ENV_CERTIFICATE = ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE")
_ENV_CLIENT_KEY = ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY")
_ENV_CLIENT_CERT = (
    "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
)
_ENV_HEADERS = ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")


class OtlpConfigError(ValueError):
    """The OTLP configuration cannot work (bad protocol, endpoint, TLS file or header)."""


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def resolve_protocol(protocol: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol to use; raises OtlpConfigError for an unknown one."""
    env = os.environ if environ is None else environ
    source = "protocol argument"
    if protocol is None:
        found = _first(env, _ENV_PROTOCOL)
        source, protocol = found if found else ("default", "http/protobuf")
    protocol = protocol.strip().lower()
    if protocol not in PROTOCOLS:
        raise OtlpConfigError(f"{source}={protocol!r}: OTLP protocol must be one of {PROTOCOLS}")
    return protocol


def validate_otlp_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise OtlpConfigError for an endpoint, TLS file or header value that cannot work."""
    env = os.environ if environ is None else environ
    found = _first(env, _ENV_ENDPOINT)
    if found:
        name, endpoint = found
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise OtlpConfigError(
                f"{name}={endpoint!r}: expected http://host:port or https://host:port"
            )
        try:
            _ = parsed.port
        except ValueError as exc:
            raise OtlpConfigError(f"{name}={endpoint!r}: {exc}") from None
    for names in (_ENV_CERTIFICATE, _ENV_CLIENT_KEY, _ENV_CLIENT_CERT):
        found = _first(env, names)
        if found and not os.path.isfile(found[1]):
            raise OtlpConfigError(f"{found[0]}={found[1]!r}: no such file")
    found = _first(env, _ENV_HEADERS)
    if found:
        for pair in found[1].split(","):
            if pair.strip() and "=" not in pair:
                # never echo the value: headers carry tokens
                raise OtlpConfigError(f"{found[0]}: every entry must be key=value")


def make_otlp_exporter(
    protocol: str | None = None, environ: Mapping[str, str] | None = None, **kwargs: Any
) -> MetricExporter:
    """An OTLP metric exporter for the resolved protocol; OtlpConfigError if misconfigured."""
    resolved = resolve_protocol(protocol, environ)
    validate_otlp_environment(environ)
    if resolved == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcExporter,
        )

        return GrpcExporter(**kwargs)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    return HttpExporter(**kwargs)
