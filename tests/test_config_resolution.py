"""One home for configuration: argument, then OTEL_SPARSE_* or OTEL_* variable, then default.

Every module (exporters, resource, run, the lifecycle's SIGTERM switch, the CLI) resolves its
settings through ``otel_sparse.config``; these tests pin the order and the one warning a bad
value gets.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import otel_sparse
from otel_sparse import config
from otel_sparse.exporters.otlp import OtlpConfigError, resolve_protocol
from otel_sparse.resource import ProcessIdentity

PACKAGE = Path(otel_sparse.__file__).parent
DOCS = PACKAGE.parent / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    config._warned_env.clear()


class TestOtlp:
    """OTLP settings: argument, then the _METRICS_ variable, then the general one, then default."""

    def test_protocol_order(self) -> None:
        env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": " HTTP/Protobuf "}
        assert config.otlp_protocol("GRPC", env) == ("argument", "grpc")
        assert config.otlp_protocol(None, env) == (
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        assert config.otlp_protocol(None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == (
            "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        assert config.otlp_protocol(None, {}) == ("default", "http/protobuf")

    def test_exporter_resolves_through_config(self) -> None:
        """The exporter's protocol check reads the same order and names the source."""
        assert resolve_protocol(None, {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
        with pytest.raises(OtlpConfigError, match="OTEL_EXPORTER_OTLP_METRICS_PROTOCOL='udp'"):
            resolve_protocol(None, {"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "udp"})
        with pytest.raises(OtlpConfigError, match="protocol argument='udp'"):
            resolve_protocol("udp", {})

    def test_endpoint_and_headers(self) -> None:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
               "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://b:4318",
               "OTEL_EXPORTER_OTLP_HEADERS": "k=v"}
        assert config.otlp_endpoint(None, env) == "http://b:4318"
        assert config.otlp_endpoint("http://c:4317", env) == "http://c:4317"
        assert config.otlp_endpoint(None, {}) is None
        assert config.otlp_headers(None, env) == "k=v"
        assert config.otlp_setting("certificate", None, {
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem"}) == (
            "OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem")

    def test_exporters_source(self) -> None:
        assert config.sparse_exporters_source({"OTEL_METRICS_EXPORTER": "otlp"}) == (
            "OTEL_METRICS_EXPORTER")
        assert config.sparse_exporters_source({}) == "default"


class TestProcess:
    """Rank variables: a bad value is warned about once, never silently replaced."""

    def test_bad_rank_warns_and_takes_the_default(self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            identity = ProcessIdentity.current({"RANK": "two", "WORLD_SIZE": "0",
                                                "LOCAL_RANK": "-1"})
            ProcessIdentity.current({"RANK": "two"})
        assert (identity.rank, identity.world_size, identity.local_rank) == (0, 1, 0)
        assert caplog.text.count("ignoring RANK='two'") == 1
        assert "WORLD_SIZE='0'" in caplog.text and "LOCAL_RANK='-1'" in caplog.text

    def test_good_ranks(self) -> None:
        identity = ProcessIdentity.current({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
        assert (identity.rank, identity.world_size, identity.local_rank) == (3, 8, 1)


class TestSwitches:
    """true/false switches: one parser, a warning for anything else."""

    def test_sigterm_switch(self, caplog: pytest.LogCaptureFixture) -> None:
        assert not config.sigterm_handler_enabled({"OTEL_SPARSE_SIGTERM_HANDLER": " OFF"})
        assert config.sigterm_handler_enabled({})
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            assert config.sigterm_handler_enabled({"OTEL_SPARSE_SIGTERM_HANDLER": "maybe"})
        assert "OTEL_SPARSE_SIGTERM_HANDLER='maybe'" in caplog.text

    def test_line_cache_switch(self, caplog: pytest.LogCaptureFixture) -> None:
        assert config.Settings.from_env({}).line_cache
        assert not config.Settings.from_env({"OTEL_SPARSE_LINE_CACHE": "false"}).line_cache
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            assert config.Settings.from_env({"OTEL_SPARSE_LINE_CACHE": "fast"}).line_cache
        assert "OTEL_SPARSE_LINE_CACHE='fast'" in caplog.text

    def test_runs_dir(self) -> None:
        assert config.runs_dir({}) == "otel_sparse_runs"
        assert config.runs_dir({"OTEL_SPARSE_RUN_DIR": " /data/runs "}) == "/data/runs"


def test_every_variable_is_documented() -> None:
    """Each variable constant of config.py appears in docs/configuration.md."""
    text = DOCS.read_text()
    names = [v for k, v in vars(config).items() if isinstance(v, str) and k == v]
    assert len(names) > 20
    assert [n for n in names if f"`{n}`" not in text] == []


def test_only_config_reads_the_environment() -> None:
    """Outside config.py, the CLI and the analysis packages, no module reads os.environ or
    getenv for a setting (they take an ``environ`` mapping at most)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ("config.py", "otlp_send.py", "cli.py", "analysis.py") or \
                relative.startswith(("cli/", "analysis/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in (
                    "getenv", "get") and "environ" in ast.unparse(node.func):
                offenders.append(f"{relative}:{node.lineno}")
            if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
                offenders.append(f"{relative}:{node.lineno}")
    assert offenders == []
