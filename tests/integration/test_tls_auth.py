"""Security: OTLP over TLS with a bearer token to the real collector, and what is never logged.

The test makes its own CA and server certificate (``cryptography``), runs
``configs/tls_bearer.yaml`` (otlp receiver with TLS and the ``bearertokenauth`` extension,
a ``file`` exporter dumping what it accepted), and configures the facade only through the
standard variables: ``OTEL_EXPORTER_OTLP_CERTIFICATE`` and
``OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer <token>"``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import logging
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Collector
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import otel_sparse
from otel_sparse import MicroMetricLogger
from otel_sparse.exporters.otlp import OtlpConfigError
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import wait_for

CONFIG = Path(__file__).parent / "configs" / "tls_bearer.yaml"
DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
PROTOCOLS = ["grpc", "http/protobuf"]


@dataclass(frozen=True)
class Tls:
    """PEM files: the CA the client trusts, the server's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_tls(folder: Path) -> Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost, signed by it."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "otel-sparse test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
        ]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    tls = Tls(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(_pem_key(key))
    return tls


@dataclass
class SecureCollector:
    """The TLS + bearer-token collector, the token it accepts and its output file."""

    collector: Collector
    tls: Tls
    token: str
    out: Path

    def endpoint(self, protocol: str) -> str:
        """https URL of the OTLP receiver for ``protocol``."""
        port = self.collector.ports["grpc" if protocol == "grpc" else "http"]
        return f"https://127.0.0.1:{port}"

    def env(self, protocol: str, token: str | None) -> dict[str, str]:
        """The standard OTLP variables a user sets; ``token=None``: no header at all."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint(protocol),
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(self.tls.ca),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5",  # seconds in Python's OTLP exporters
            "OTEL_SPARSE_EXPORT_INTERVAL": "200",
        }
        if token is not None:
            env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization=Bearer {token}"
        return env

    def received_count(self) -> int:
        """The largest histogram count of our metric in what the collector wrote out."""
        if not self.out.exists():
            return 0
        best = 0
        for line in self.out.read_text().splitlines():
            try:
                request = json.loads(line)
            except ValueError:
                continue  # the exporter's current last line, half written
            for rm in request.get("resourceMetrics", []):
                for sm in rm.get("scopeMetrics", []):
                    for metric in sm.get("metrics", []):
                        if metric.get("name") == NAME:
                            for point in metric["histogram"]["dataPoints"]:
                                best = max(best, int(point.get("count", 0)))
        return best


@pytest.fixture
def secure_collector(
    collector_factory: Callable[..., Collector], tmp_path: Path
) -> SecureCollector:
    """The collector of configs/tls_bearer.yaml with a fresh CA, certificate and token."""
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    tls = make_tls(tls_dir)
    token = secrets.token_urlsafe(24)
    out = tmp_path / "received.jsonl"
    collector = collector_factory(CONFIG, env={
        "OTEL_SPARSE_TEST_TLS_CERT": str(tls.cert),
        "OTEL_SPARSE_TEST_TLS_KEY": str(tls.key),
        "OTEL_SPARSE_TEST_BEARER_TOKEN": token,
        "OTEL_SPARSE_TEST_FILE_OUT": str(out),
    }, name="otelcol-tls")
    return SecureCollector(collector, tls, token, out)


def _set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def _files_text(folder: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace")
                     for p in folder.rglob("*") if p.is_file())


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_data_arrives_over_tls_with_the_token(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    secure_collector: SecureCollector, protocol: str,
) -> None:
    """CA + bearer token from the standard variables: every value reaches the collector."""
    _set_env(monkeypatch, secure_collector.env(protocol, secure_collector.token))
    fresh_logger.register_metric(DENSITY, float)
    logger = fresh_logger(log_path=str(tmp_path / "run"), enabled_metrics="all",
                          exporters=["otlp", "jsonl"])
    for i in range(24):
        logger.log(DENSITY, (i % 8) / 8)
    logger.flush()
    wait_for(lambda: secure_collector.received_count() == 24, timeout=30,
             what="24 values in the collector's file exporter")
    otlp = next(w for w in logger._pipeline.workers if w.name == "otlp")  # type: ignore[union-attr]
    assert otlp.failures == 0
    logger.close()


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong-token", "no-token"])
def test_refused_token_is_counted_reported_once_and_never_logged(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, secure_collector: SecureCollector, protocol: str,
    token: str | None,
) -> None:
    """The collector refuses; failures are counted, one report is made, the token is nowhere."""
    sent = None if token is None else f"wrong-{secrets.token_urlsafe(18)}"
    _set_env(monkeypatch, secure_collector.env(protocol, sent))
    sink = InMemoryMetricExporter()
    run = tmp_path / "run"
    fresh_logger.register_metric(DENSITY, float)
    with caplog.at_level(logging.DEBUG):
        logger = fresh_logger(log_path=str(run), enabled_metrics="all",
                              exporters=["otlp", "jsonl", "otlp_file", sink])
        otlp = next(w for w in logger._pipeline.workers if w.name == "otlp")  # type: ignore[union-attr]
        for round_ in range(3):
            logger.log(DENSITY, 0.5)
            logger.flush()
            wait_for(lambda r=round_: otlp.failures > r, timeout=30, what="a refused export")
        logger.flush()
        assert sink.value("otel_sparse.export.failures", exporter="otlp") >= 3
        logger.close()
    assert secure_collector.received_count() == 0
    failed = [r.getMessage() for r in caplog.records if "exporter otlp failed" in r.getMessage()]
    assert len(failed) == 1 and "refused" in failed[0], failed
    summary = [r.getMessage() for r in caplog.records if "further messages suppressed" in
               r.getMessage()]
    assert len(summary) <= 1
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry.exporter.otlp")
                and r.levelno >= logging.WARNING]
    for secret in filter(None, [sent, secure_collector.token]):
        assert secret not in caplog.text
        assert secret not in _files_text(run)


_REFUSED_RUN = """
    import logging, sys, time
    logging.basicConfig(level=logging.INFO)  # every logger, INFO and up, to stderr
    from otel_sparse import MicroMetricLogger
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                               exporters=["otlp", "jsonl", "otlp_file"])
    otlp = next(w for w in logger._pipeline.workers if w.name == "otlp")
    for _ in range(3):
        logger.log("research_attention_density", 0.5)
        logger.flush()
        deadline = time.monotonic() + 30
        failures = otlp.failures
        while otlp.failures == failures and time.monotonic() < deadline:
            time.sleep(0.05)
    print("failures", otlp.failures, flush=True)
"""


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_token_never_reaches_stderr_of_a_refused_run(
    tmp_path: Path, secure_collector: SecureCollector, protocol: str
) -> None:
    """A whole process, logging at INFO to stderr, refused three times: no token in output."""
    sent = f"wrong-{secrets.token_urlsafe(18)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(secure_collector.env(protocol, sent))
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_REFUSED_RUN), str(run)],
                          env=env, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    failures = int(done.stdout.split()[-1])
    assert failures >= 3, done.stdout
    assert done.stderr.count("exporter otlp failed") == 1, done.stderr
    assert "refused" in done.stderr
    for secret in (sent, secure_collector.token):
        assert secret not in done.stdout + done.stderr
        assert secret not in _files_text(run)


class TestConfigurationErrors:
    """Wrong endpoints, TLS files or headers fail when logging is configured, clearly."""

    SECRET = "s3cr3t-Tok3n-value"

    def _bad_env(self, tmp_path: Path, case: str) -> dict[str, str]:
        not_pem = tmp_path / "ca.txt"
        not_pem.write_text("this is not a certificate\n")
        return {
            "endpoint": {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"},
            "missing_ca": {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "nope.pem")},
            "not_pem": {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(not_pem)},
            "header_no_equals": {"OTEL_EXPORTER_OTLP_HEADERS": f"Bearer {self.SECRET}"},
            "header_bad_char": {
                "OTEL_EXPORTER_OTLP_HEADERS": f'authorization=Bearer "{self.SECRET}"'},
            "endpoint_password": {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"grpc://user:{self.SECRET}@collector:4317"},
            "protocol": {"OTEL_EXPORTER_OTLP_PROTOCOL": "grcp"},
        }[case]

    @pytest.mark.parametrize("case", ["endpoint", "missing_ca", "not_pem", "header_no_equals",
                                      "header_bad_char", "endpoint_password", "protocol"])
    @pytest.mark.parametrize("entry", ["constructor", "configure_logging", "start_run",
                                       "environment"])
    def test_raises_at_configuration_time(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, case: str,
        entry: str,
    ) -> None:
        """OtlpConfigError from the configuring call; logging stays unconfigured; no secret."""
        _set_env(monkeypatch, self._bad_env(tmp_path, case))
        fresh_logger.register_metric(DENSITY, float)
        path = str(tmp_path / "run")
        calls: dict[str, Callable[[], Any]] = {
            "constructor": lambda: fresh_logger(log_path=path, enabled_metrics="all",
                                                exporters=["otlp"]),
            "configure_logging": lambda: fresh_logger().configure_logging(
                path, "all", exporters=["jsonl", "otlp"]),
            "start_run": lambda: otel_sparse.start_run(path, exporters=["otlp"]),
            "environment": lambda: fresh_logger(log_path=path, enabled_metrics="all"),
        }
        if entry == "environment":
            monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl,otlp")
        with caplog.at_level(logging.DEBUG), pytest.raises(OtlpConfigError) as err:
            calls[entry]()
        assert "OTEL_EXPORTER_OTLP_" in str(err.value)
        assert self.SECRET not in str(err.value) and self.SECRET not in caplog.text
        logger = fresh_logger()
        assert not logger.is_logging_configured()
        logger.log(DENSITY, 0.5)  # the contract's "not configured" path: no raise
