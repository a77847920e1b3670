"""OTLP export over gRPC or HTTP/protobuf, set up by the standard OTEL_EXPORTER_OTLP_* variables.

The exporters are opentelemetry-exporter-otlp's own; this module only picks the protocol
(argument, then ``OTEL_EXPORTER_OTLP_METRICS_PROTOCOL``, then ``OTEL_EXPORTER_OTLP_PROTOCOL``,
then ``http/protobuf`` as the OTel specification asks) and checks the configuration up front,
so that a typo fails at configuration time rather than as a stream of export errors.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlparse

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_sparse._safety import mask_text, mask_url
from otel_sparse.config import OTLP_PROTOCOLS, OTLP_SETTINGS, otlp_protocol, otlp_setting
from otel_sparse.exporters.extras import ExplainsFailure, LocalExporter

_logger = logging.getLogger("otel_sparse")

PROTOCOLS = OTLP_PROTOCOLS
_ENV_ENDPOINT = OTLP_SETTINGS["endpoint"]
_ENV_HEADERS = OTLP_SETTINGS["headers"]


class OtlpConfigError(ValueError):
    """The OTLP configuration cannot work (bad protocol, endpoint, TLS file or header)."""


def resolve_protocol(protocol: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The OTLP protocol to use (``config.otlp_protocol``); raises OtlpConfigError for an
    unknown one."""
    source, protocol = otlp_protocol(protocol, environ)
    if source == "argument":
        source = "protocol argument"
    if protocol not in PROTOCOLS:
        raise OtlpConfigError(f"{source}={protocol!r}: OTLP protocol must be one of {PROTOCOLS}")
    return protocol


def validate_otlp_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise OtlpConfigError for an endpoint, TLS file or header value that cannot work."""
    found = otlp_setting("endpoint", None, environ)
    if found:
        name, endpoint = found
        parsed = urlparse(endpoint)
        endpoint = mask_url(endpoint)  # credentials in the URL: never echoed
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise OtlpConfigError(
                f"{name}={endpoint!r}: expected http://host:port or https://host:port"
            )
        try:
            _ = parsed.port
        except ValueError as exc:
            raise OtlpConfigError(f"{name}={endpoint!r}: {exc}") from None
    for setting in ("certificate", "client_key", "client_certificate"):
        found = otlp_setting(setting, None, environ)
        if found:
            _check_pem_file(*found)
    found = otlp_setting("headers", None, environ)
    if found:
        for n, entry in enumerate(_HEADER_DELIMITER.split(found[1].strip()), 1):
            if entry and not _HEADER_ENTRY.fullmatch(entry):
                # Never echo the entry: headers carry tokens. (The OTel parser would log it
                # whole in a warning and drop it.)
                raise OtlpConfigError(
                    f"{found[0]}: every entry must be key=value with a printable ASCII value "
                    f"(entry {n} is not; values are never shown)"
                )


# The OTel header grammar, in the "liberal" form the OTLP exporters parse with (raw spaces
# allowed in values): opentelemetry.util.re. An entry outside it would be logged verbatim.
_HEADER_DELIMITER = re.compile(r"[ \t]*,[ \t]*")
_HEADER_ENTRY = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
    r"[ \t]*[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*[ \t]*"
)


def _check_pem_file(name: str, path: str) -> None:
    """Raise OtlpConfigError unless ``path`` is a readable file holding a PEM block."""
    if not os.path.isfile(path):
        raise OtlpConfigError(f"{name}={path!r}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError as exc:
        raise OtlpConfigError(f"{name}={path!r}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in head:
        raise OtlpConfigError(f"{name}={path!r}: not a PEM file (no '-----BEGIN' line)")


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

    if "session" not in kwargs and otlp_setting("certificate", None, environ):
        kwargs["session"] = _configured_ca_session()
    return HttpExporter(**kwargs)


def _configured_ca_session() -> Any:
    """A requests Session that verifies against the CA the exporter sets on it.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` replace ``Session.verify`` on every
    request (psf/requests#3829), so on machines that set them OTEL_EXPORTER_OTLP_CERTIFICATE
    would be ignored and the collector's certificate refused. Proxies from the environment
    still apply.
    """
    import requests

    class _ConfiguredCaSession(requests.Session):
        def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                       cert: Any) -> Any:
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None:  # not set per request: the session's (the configured CA)
                settings["verify"] = self.verify
            return settings

    return _ConfiguredCaSession()


# -- one report per outage instead of the OTLP library's line per failed attempt ------------

_LIBRARY_LOGGER_PREFIX = "opentelemetry.exporter.otlp"
_LIBRARY_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.common.http",
)
_REFUSED_MARKS = ("UNAUTHENTICATED", "PERMISSION_DENIED", "code: 401", "code: 403")
_inside = threading.local()
"""``_inside.exporter``: the QuietOtlpExporter whose call is running on this thread."""


class _LibraryLogFilter(logging.Filter):
    """Drops (and counts) the OTLP library's warnings and errors inside a QuietOtlpExporter call.

    Records from other threads, such as a user's own OTel exporters, pass untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        owner = getattr(_inside, "exporter", None)
        if owner is None or record.levelno < logging.WARNING:  # debug lines: asked for
            return True
        owner._suppress(record)
        return False


_FILTER = _LibraryLogFilter()
_filter_lock = threading.Lock()


def _install_library_filter() -> None:
    with _filter_lock:
        names = {n for n in list(logging.root.manager.loggerDict)
                 if n.startswith(_LIBRARY_LOGGER_PREFIX)}
        for name in sorted(names.union(_LIBRARY_LOGGERS)):
            library_logger = logging.getLogger(name)
            if _FILTER not in library_logger.filters:
                # first: the grpc exporter's own DuplicateFilter would hide lines from us
                library_logger.filters.insert(0, _FILTER)


def _header_secrets(env: Mapping[str, str]) -> list[str]:
    """Header values (and their words) and endpoint passwords: never in a log line."""
    secrets: set[str] = set()
    for name in _ENV_ENDPOINT:
        try:
            password = urlparse(env.get(name, "")).password
        except ValueError:
            password = None
        if password:
            secrets.add(password)
        try:
            user = urlparse(env.get(name, "")).username
        except ValueError:
            user = None
        if user and len(user) >= 4:  # a token passed as the user name
            secrets.add(user)
    for name in _ENV_HEADERS:
        for entry in env.get(name, "").split(","):
            _, _, value = entry.partition("=")
            for text in (value.strip(), unquote(value).strip()):
                if len(text) >= 4:
                    secrets.add(text)
                secrets.update(word for word in text.split() if len(word) >= 6)
    return sorted(secrets, key=len, reverse=True)


class QuietOtlpExporter(MetricExporter, LocalExporter, ExplainsFailure):
    """An OTLP exporter whose failures make one report per outage, not a line per retry.

    The opentelemetry-exporter-otlp exporters log a warning per retry and an error per
    failed export. While this wrapper's calls run, those records are dropped and counted
    (on the exporting thread only); the first one becomes ``last_error``, which the export
    worker reports once, and the end of the outage (recovery or shutdown) logs
    "collector unreachable, N further messages suppressed". Header values never appear.

    Example:
        >>> exporter = QuietOtlpExporter(make_otlp_exporter())  # doctest: +SKIP
    """

    is_local = False
    """``flush()`` never waits for the network."""

    def __init__(self, inner: MetricExporter, environ: Mapping[str, str] | None = None) -> None:
        """Args:
            inner: the OTLP exporter doing the work (``make_otlp_exporter()``).
            environ: where the headers to keep out of messages come from (os.environ).
        """
        super().__init__()
        self.inner = inner
        self._secrets = _header_secrets(os.environ if environ is None else environ)
        self._lock = threading.Lock()
        self._first: str | None = None
        self._unreported = 0
        self._failing = False
        self.suppressed = 0
        """Library log records dropped so far (WARNING and above)."""
        self.last_error: str | None = None
        """What the current outage looks like, for the export worker's one report."""
        _install_library_filter()

    def _suppress(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.suppressed += 1
            self._unreported += 1
            if self._first is None:
                self._first = self._redact(record.getMessage())

    def _redact(self, text: str) -> str:
        text = mask_text(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text if len(text) <= 400 else text[:400] + "..."

    def _what(self) -> str:
        first = self._first or ""
        if any(mark in first for mark in _REFUSED_MARKS):
            return "collector refused the export (authentication)"
        return "collector unreachable"

    def _report(self) -> None:
        """Log the end of an outage, once: how many library lines were suppressed."""
        with self._lock:
            further, what = max(0, self._unreported - 1), self._what()
            self._unreported = 0
        if further:
            _logger.warning(
                "otel_sparse: otlp exporter: %s, %d further messages suppressed "
                "(from %s.*; failures counted in otel_sparse.export.failures)",
                what, further, _LIBRARY_LOGGER_PREFIX,
            )

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        """Export through the inner exporter with its log records suppressed and counted."""
        _inside.exporter = self
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        finally:
            _inside.exporter = None
        if result is MetricExportResult.SUCCESS:
            if self._failing:
                self._failing = False
                self._report()
            with self._lock:  # the outage is over (or was only a transient retry)
                self._unreported, self._first = 0, None
            return result
        if not self._failing:
            self._failing = True
            with self._lock:
                first = self._first
                self.last_error = f"{self._what()}: {first or 'no detail from the exporter'}"
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """The inner exporter's force_flush."""
        return self.inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down (ending its retries); report an outage in progress."""
        _inside.exporter = self
        try:
            self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        finally:
            _inside.exporter = None
        if self._failing or self._unreported:
            self._report()
