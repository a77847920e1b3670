"""Credentials never printed or written; run ids and file names stay inside their folders.

An endpoint like ``http://user:password@host`` is masked by one helper wherever it could
appear: ``otel-sparse doctor``, ``replay``, exporter warnings, run.json's command line.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from pathlib import Path

import pytest

import otel_sparse
from otel_sparse import MicroMetricLogger
from tests._helpers import cli_runner

PASSWORD = "pa55w0rd-x9"
USER = "alice-tok3n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _secret_url(port: int) -> str:
    return f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"


class TestMasking:
    """The one masking helper."""

    @pytest.mark.parametrize(("url", "masked"), [
        ("http://user:pw@host:4318/v1", "http://***:***@host:4318/v1"),
        ("https://token@host", "https://***@host"),
        ("http://host:4318", "http://host:4318"),
        ("host:4317", "host:4317"),
        ("http://h/?api_key=abc&x=1", "http://h/?api_key=***&x=1"),
    ])
    def test_mask_url(self, url: str, masked: str) -> None:
        """User info and secret-looking query values become ***; the rest stays."""
        from otel_sparse._safety import mask_url

        assert mask_url(url) == masked

    def test_mask_text_finds_urls_anywhere(self) -> None:
        """URLs inside a message or a command line are masked in place."""
        from otel_sparse._safety import mask_text

        text = f"failed to export to {_secret_url(9)}/v1/metrics: refused"
        assert mask_text(text) == "failed to export to http://***:***@127.0.0.1:9/v1/metrics: refused"
        assert mask_text("--endpoint=grpc://u:p@h:1") == "--endpoint=grpc://***:***@h:1"


class TestCli:
    """doctor and replay print endpoints masked."""

    def test_doctor_masks_the_endpoint_password(
        self, fresh_logger: type[MicroMetricLogger], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Neither the password nor the user appears; the host does."""
        from otel_sparse.cli import app

        port = _closed_port()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", _secret_url(port))
        monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl,otlp")
        result = cli_runner().invoke(app, ["doctor", "--timeout", "0.2"])
        assert PASSWORD not in result.output and USER not in result.output
        assert f"127.0.0.1:{port}" in result.output and "***" in result.output

    def test_replay_masks_the_endpoint_password(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The refused-request message names the host, never the credentials."""
        from otel_sparse.cli import app

        fresh_logger.register_metric("loss", float)
        logger = otel_sparse.start_run(str(tmp_path / "run"), exporters=["otlp_file"])
        logger.log("loss", 0.5)
        otel_sparse.end_run(logger)
        port = _closed_port()
        result = cli_runner().invoke(app, ["replay", str(tmp_path / "run"), "--endpoint",
                                          _secret_url(port), "--timeout", "2"])
        assert result.exit_code == 1
        said = result.stdout + result.stderr  # (click 8.1, on 3.9, keeps them apart in .output)
        assert PASSWORD not in said and USER not in said
        assert f"127.0.0.1:{port}" in said


class TestWrittenFiles:
    """run.json and the library's warnings."""

    def test_run_json_masks_the_command_line(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """argv with an endpoint is recorded masked."""
        monkeypatch.setattr(sys, "argv", ["train.py", "--endpoint", _secret_url(1),
                                          f"--otlp={_secret_url(2)}"])
        logger = otel_sparse.start_run(str(tmp_path / "run"), exporters=["none"])
        otel_sparse.end_run(logger)
        text = (tmp_path / "run" / "run.json").read_text()
        assert PASSWORD not in text and USER not in text
        argv = json.loads(text)["ranks"]["0"]["argv"]
        assert argv == ["train.py", "--endpoint", "http://***:***@127.0.0.1:1",
                        "--otlp=http://***:***@127.0.0.1:2"]

    def test_exporter_warning_masks_the_endpoint(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An unreachable collector is reported without the URL's credentials."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", _secret_url(_closed_port()))
        monkeypatch.setenv("OTEL_SPARSE_EXPORT_TIMEOUT", "1")
        fresh_logger.register_metric("loss", float)
        with caplog.at_level(logging.DEBUG, logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                                  exporters=["otlp"])
            logger.log("loss", 0.5)
            logger.close()
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "exporter otlp" in text or "collector" in text, text
        assert PASSWORD not in text and USER not in text


class TestRunIds:
    """A run id or name used as a file name cannot leave its folder."""

    @pytest.mark.parametrize("run_id", ["../escaped", "a/b", "..", "a\\b", "x/../../y"])
    def test_run_id_with_path_parts_stays_inside_the_runs_folder(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, run_id: str,
    ) -> None:
        """The run folder is a direct child of OTEL_SPARSE_RUN_DIR; one warning says why."""
        runs = tmp_path / "runs"
        monkeypatch.setenv("OTEL_SPARSE_RUN_DIR", str(runs))
        monkeypatch.setenv("OTEL_SPARSE_RUN_ID", run_id)
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger = otel_sparse.start_run(exporters=["jsonl"])
            logger.log("anything", 1.0)
            path = Path(logger.log_path or "")
            otel_sparse.end_run(logger)
        assert path.parent == runs
        assert [p.parent for p in tmp_path.rglob("run.json")] == [path]
        assert not (tmp_path / "escaped").exists()
        warned = [r.getMessage() for r in caplog.records if "OTEL_SPARSE_RUN_ID" in r.getMessage()]
        assert len(warned) == 1
        manifest = json.loads((path / "run.json").read_text())
        assert manifest["run_id"] == path.name
