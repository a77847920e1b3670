"""OTLP exporter selection and configuration checks (the wire is tested in integration/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpExporter,
)

from otel_sparse.exporters.otlp import OtlpConfigError, make_otlp_exporter, resolve_protocol


class TestProtocol:
    """Argument, then OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, then OTEL_EXPORTER_OTLP_PROTOCOL."""

    def test_default_is_http_protobuf(self) -> None:
        """With nothing set, the OTel specification's default applies."""
        assert resolve_protocol(environ={}) == "http/protobuf"

    def test_signal_specific_variable_wins(self) -> None:
        """The metrics-specific variable beats the general one."""
        env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
               "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}
        assert resolve_protocol(environ=env) == "grpc"

    def test_unknown_protocol_is_a_clear_error(self) -> None:
        """A typo fails at configuration time, naming the variable."""
        with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
            resolve_protocol(environ={"OTEL_EXPORTER_OTLP_PROTOCOL": "grcp"})

    def test_builds_the_matching_exporter(self) -> None:
        """grpc and http/protobuf give the exporter-otlp package's own exporters."""
        assert isinstance(make_otlp_exporter("grpc", environ={}), GrpcExporter)
        assert isinstance(make_otlp_exporter("http/protobuf", environ={}), HttpExporter)


class TestValidation:
    """Endpoints, TLS files and headers that cannot work raise before any export."""

    @pytest.mark.parametrize("endpoint", ["localhost:4317", "ftp://x:1", "http://:4317",
                                          "http://host:99999"])
    def test_bad_endpoint(self, endpoint: str) -> None:
        """An endpoint needs http(s)://host:port."""
        with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
            make_otlp_exporter(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})

    def test_missing_certificate_file(self, tmp_path: Path) -> None:
        """A TLS file that does not exist is named in the error."""
        missing = str(tmp_path / "ca.pem")
        with pytest.raises(OtlpConfigError, match="no such file"):
            make_otlp_exporter(environ={"OTEL_EXPORTER_OTLP_CERTIFICATE": missing})

    def test_bad_header_does_not_echo_its_value(self) -> None:
        """Headers carry tokens: the error names the variable, never the value."""
        secret = "Authorization Bearer-s3cr3t"
        with pytest.raises(OtlpConfigError) as err:
            make_otlp_exporter(environ={"OTEL_EXPORTER_OTLP_HEADERS": secret})
        assert "s3cr3t" not in str(err.value)
