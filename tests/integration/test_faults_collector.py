"""Collector faults: down for the whole run, killed and restarted mid-run, slow to answer.

Training must never wait on the collector, the process must never be held at exit by the
OTLP exporter's retries, and the OTLP library's line-per-retry logging becomes one report.
A "dead" collector is a loopback port nothing listens on; a "black hole" accepts connections
and never answers; a "slow" one is a tiny HTTP server that holds each request until the test
lets it go. The restart test runs the real collector and reads totals back from Prometheus.
Assertions are about mechanisms (threads, counts, what was written), never durations, except
"the process exits at all" within a limit twenty times what it needs.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _procs import LOOPBACK, free_port
from conftest import Collector, Prometheus
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpExporter,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData

from otel_sparse import MicroMetricLogger
from otel_sparse.exporters.otlp import QuietOtlpExporter
from otel_sparse.pipeline import ExportWorker
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import latest_points, read_jsonl, wait_for

pytestmark = pytest.mark.integration

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
PROM = "sparse_attention_research_attention_density"
PROTOCOLS = ["grpc", "http/protobuf"]
EXIT_LIMIT_S = 60.0
"""A subprocess that needs ~3 s must exit within this; only a hang should ever reach it."""


def _otlp_env(monkeypatch: pytest.MonkeyPatch, endpoint: str, protocol: str,
              **extra: str) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


def _otlp_worker(logger: MicroMetricLogger) -> ExportWorker:
    pipeline = logger._pipeline
    assert pipeline is not None
    return next(w for w in pipeline.workers if w.name == "otlp")


def _record_export_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads on which the OTLP library's export() ran (both protocols)."""
    names: list[str] = []
    for cls in (GrpcExporter, HttpExporter):
        original = cls.export

        def export(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            names.append(threading.current_thread().name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "export", export)
    return names


class BlackHole:
    """Accepts TCP connections on a loopback port and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        """Stop accepting and drop every connection."""
        self._sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """A BlackHole, closed after the test."""
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


class SlowCollector:
    """An OTLP/HTTP endpoint that holds each request until ``release()`` (or 60 s)."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.completed = 0
        self.released = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.in_flight += 1
                owner.released.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()
                owner.in_flight -= 1
                owner.completed += 1

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Let every held request go and stop serving."""
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_collector() -> Iterator[SlowCollector]:
    """A SlowCollector, released and stopped after the test."""
    slow = SlowCollector()
    try:
        yield slow
    finally:
        slow.close()


# -- (a) collector down for the whole run -------------------------------------------------


class TestCollectorDown:
    """Nothing listens on the OTLP endpoint, from the first export to the last."""

    @pytest.mark.parametrize("protocol", PROTOCOLS)
    def test_one_report_no_work_on_the_callers_thread(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str,
    ) -> None:
        """log()/flush() never raise or export; library lines become one report, counted."""
        _otlp_env(monkeypatch, f"http://{LOOPBACK}:{free_port()}", protocol,
                  OTEL_EXPORTER_OTLP_TIMEOUT="2.5", OTEL_SPARSE_EXPORT_INTERVAL="200")
        threads = _record_export_threads(monkeypatch)
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        with caplog.at_level(logging.DEBUG):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                                  exporters=["otlp", "jsonl", sink])
            otlp = _otlp_worker(logger)
            logged = 0
            while otlp.failures < 3:  # each failed export retried for 2.5 s inside
                for i in range(100):
                    logger.log(DENSITY, (i % 8) / 8, {"layer_idx": i % 4})
                logged += 100
                logger.flush()
                wait_for(lambda n=otlp.failures: otlp.failures > n, timeout=EXIT_LIMIT_S,
                         what="another failed export")
            logger.flush()
            failures = sink.value("otel_sparse.export.failures", exporter="otlp")
            logger.close()
        suppressed = otlp.exporter.suppressed  # type: ignore[attr-defined]
        caller = threading.current_thread().name
        assert threads and caller not in threads
        assert set(threads) == {"otel-sparse-export-otlp"}
        assert failures >= 3
        assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == logged
        assert sum(r["count"] for r in latest_points(tmp_path / "metrics.jsonl", NAME).values()
                   ) == logged
        library = [r for r in caplog.records
                   if r.name.startswith("opentelemetry.exporter.otlp")
                   and r.levelno >= logging.WARNING]
        assert library == []
        failed = [r.getMessage() for r in caplog.records
                  if "exporter otlp failed" in r.getMessage()]
        assert len(failed) == 1 and "collector unreachable" in failed[0]
        summary = [r.getMessage() for r in caplog.records
                   if "further messages suppressed" in r.getMessage()]
        assert len(summary) == 1 and "collector unreachable" in summary[0]
        further = int(re.search(r"(\d+) further", summary[0]).group(1))  # type: ignore[union-attr]
        assert 2 <= further <= suppressed - 1

    def test_filter_is_scoped_to_our_calls_and_redacts_headers(
        self, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Library lines of other threads pass; the quoted line never holds a header value."""
        secret = "s3cr3t-Bearer-token"
        env = {"OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer {secret},x-team=ml"}
        library = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")

        class Failing(InMemoryMetricExporter):
            def export(self, metrics_data: Any, timeout_millis: float = 10_000,
                       **kwargs: Any) -> Any:
                library.warning("Transient error sending with authorization=Bearer %s", secret)
                library.error("Failed to export metrics, error code: UNAVAILABLE")
                return MetricExportResult.FAILURE

        quiet = QuietOtlpExporter(Failing(), environ=env)
        with caplog.at_level(logging.WARNING):
            assert quiet.export(MetricsData(resource_metrics=[])) is MetricExportResult.FAILURE
            other = threading.Thread(target=library.warning, args=("a user's own exporter",))
            other.start()
            other.join()
            quiet.shutdown()
        assert quiet.suppressed == 2
        assert quiet.last_error is not None and secret not in quiet.last_error
        assert quiet.last_error.startswith("collector unreachable: Transient error")
        assert [r.getMessage() for r in caplog.records if r.name == library.name] == [
            "a user's own exporter"]
        assert secret not in caplog.text
        assert "collector unreachable, 1 further messages suppressed" in caplog.text

    @pytest.mark.parametrize("temporality", ["cumulative", "delta"])
    def test_export_queue_is_bounded_and_drops_counted(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, black_hole: BlackHole, temporality: str,
    ) -> None:
        """An export stuck on the network: later snapshots queue up to a bound, then drop."""
        _otlp_env(monkeypatch, f"http://{LOOPBACK}:{black_hole.port}", "http/protobuf",
                  OTEL_EXPORTER_OTLP_TIMEOUT="300", OTEL_SPARSE_EXPORT_INTERVAL="3600000",
                  OTEL_SPARSE_TEMPORALITY=temporality, OTEL_SPARSE_SHUTDOWN_TIMEOUT="200")
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              exporters=["otlp", sink])
        otlp = _otlp_worker(logger)
        logger.log(DENSITY, 0.5)
        logger.flush()  # the first snapshot goes out and hangs in the black hole
        wait_for(lambda: black_hole.accepted, timeout=EXIT_LIMIT_S, what="a connection")
        offered = 100
        for _ in range(offered):
            logger.log(DENSITY, 0.5)
            logger.flush()
        queued = len(otlp._slot)
        # the pipeline's own count: the sink's latest snapshot predates the last offer's drop
        counts = logger._pipeline.drops.snapshot()  # type: ignore[union-attr]
        queue_full = [n for (reason, _), n in counts.items() if reason == "export_queue_full"]
        if temporality == "cumulative":  # a newer snapshot supersedes: nothing is lost
            assert queued == 1 and queue_full == []
        else:  # every delta snapshot matters: bounded queue, overflow counted
            assert queued == 64
            assert queue_full == [offered - 64]
        assert sink.histogram(NAME).count in (offered + 1, 1)  # cumulative total / last delta
        logger.close()

    @pytest.mark.parametrize("target", ["dead-grpc", "dead-http", "black-hole-grpc",
                                        "black-hole-http"])
    def test_process_exit_is_not_held_up_by_retries(
        self, tmp_path: Path, black_hole: BlackHole, target: str,
    ) -> None:
        """Exit without close(): the atexit flush gives the exporter the shutdown timeout only.

        The exporter may retry for 300 s (OTEL_EXPORTER_OTLP_TIMEOUT, which Python's OTLP
        exporters read in seconds, not the specification's milliseconds); the process exits
        within EXIT_LIMIT_S, with every event written and the stderr report made once.
        """
        port = black_hole.port if target.startswith("black-hole") else free_port()
        script = """
            import sys, time
            from otel_sparse import MicroMetricLogger
            MicroMetricLogger.register_metric("research_attention_density", float)
            logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                                       exporters=["otlp", "jsonl"])
            for step in range(5):
                for i in range(200):
                    logger.log("research_attention_density", (i % 8) / 8)
                time.sleep(0.2)
            # no close(): interpreter exit runs the final flush
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update({
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{LOOPBACK}:{port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if target.endswith("grpc") else "http/protobuf",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "300",  # seconds, in Python's OTLP exporters
            "OTEL_SPARSE_EXPORT_INTERVAL": "200",
            "OTEL_SPARSE_SHUTDOWN_TIMEOUT": "500",
        })
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
                              env=env, capture_output=True, text=True, timeout=EXIT_LIMIT_S,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == 1000
        lines = done.stderr.splitlines()  # logging's last-resort handler: message only
        assert all(line.startswith("otel_sparse: ") for line in lines), done.stderr
        assert sum("exporter otlp failed" in line for line in lines) <= 1, done.stderr
        assert len(lines) <= 2, done.stderr  # the failure, and the suppressed-lines count


# -- (b) collector killed and restarted mid-run -------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_totals_survive_a_collector_restart(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    collector_factory: Callable[..., Collector], prometheus_factory: Callable[..., Prometheus],
    protocol: str,
) -> None:
    """Kill -9 the collector mid-run, start it again: Prometheus totals equal what was logged.

    Cumulative temporality makes this work: every export carries the totals since the start,
    so the first export after the restart brings the new collector up to date.
    """
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    endpoint = (collector.http_endpoint if protocol == "http/protobuf"
                else f"http://{collector.grpc_endpoint}")
    run_id = f"restart-{uuid.uuid4().hex[:8]}"
    _otlp_env(monkeypatch, endpoint, protocol, OTEL_EXPORTER_OTLP_TIMEOUT="2",
              OTEL_SPARSE_EXPORT_INTERVAL="300", OTEL_SPARSE_RUN_ID=run_id)
    fresh_logger.register_metric(DENSITY, float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                          exporters=["otlp", "jsonl"])
    otlp = _otlp_worker(logger)
    logged: list[float] = []

    def log_phase(n: int) -> None:
        for i in range(n):
            value = (len(logged) % 9) / 8  # multiples of 1/8: sums are exact
            logger.log(DENSITY, value, {"layer_idx": i % 2})
            logged.append(value)
        logger.flush()

    def prom_total(what: str) -> float:
        return sum(v for _, v in prom.query(f'sum({PROM}_{what}{{run_id="{run_id}"}})'))

    log_phase(40)
    prom.wait_for_query(f'sum({PROM}_count{{run_id="{run_id}"}})',
                        lambda r: bool(r) and r[0][1] == 40, procs=[collector.process])

    collector.process._proc.kill()  # type: ignore[union-attr]  # kill -9, no goodbye
    collector.process._proc.wait(timeout=30)  # type: ignore[union-attr]
    log_phase(40)
    wait_for(lambda: otlp.failures >= 2, timeout=EXIT_LIMIT_S, what="failed exports")
    log_phase(40)
    collector.start()
    log_phase(40)

    prom.wait_for_query(f'sum({PROM}_count{{run_id="{run_id}"}})',
                        lambda r: bool(r) and r[0][1] == len(logged),
                        timeout=60, procs=[collector.process])
    assert prom_total("sum") == sum(logged)
    failures = prom.wait_for_query(
        f'otel_sparse_export_failures_total{{run_id="{run_id}",exporter="otlp"}}',
        procs=[collector.process])
    assert failures[0][1] >= 2
    logged_total = prom.wait_for_query(
        f'otel_sparse_events_logged_total{{run_id="{run_id}"}}',
        lambda r: bool(r) and r[0][1] == len(logged), procs=[collector.process])
    assert logged_total
    logger.close()
    rows = latest_points(tmp_path / "metrics.jsonl", NAME)
    assert sum(r["count"] for r in rows.values()) == len(logged)


# -- (c) slow collector -------------------------------------------------------------------


def test_training_never_waits_for_a_slow_collector(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    slow_collector: SlowCollector,
) -> None:
    """With an export held by the collector, log(), flush() and close() all return anyway.

    Mechanism: each call returns while the collector still holds the request (it answers
    only when the test lets it), and flush() has written the event and metrics files.
    """
    _otlp_env(monkeypatch, slow_collector.url, "http/protobuf",
              OTEL_EXPORTER_OTLP_TIMEOUT="120", OTEL_SPARSE_EXPORT_INTERVAL="100",
              OTEL_SPARSE_SHUTDOWN_TIMEOUT="300")
    fresh_logger.register_metric(DENSITY, float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                          exporters=["otlp", "jsonl"])
    logger.log(DENSITY, 0.5)
    wait_for(lambda: slow_collector.in_flight >= 1, timeout=EXIT_LIMIT_S,
             what="an export held by the slow collector")
    for i in range(1000):
        logger.log(DENSITY, (i % 8) / 8)
    logger.flush()
    assert slow_collector.completed == 0 and slow_collector.in_flight >= 1
    assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == 1001
    rows = latest_points(tmp_path / "metrics.jsonl", NAME)
    assert sum(r["count"] for r in rows.values()) == 1001
    logger.close()
    assert slow_collector.completed == 0  # close() gave up on it after the shutdown timeout
    slow_collector.released.set()
    wait_for(lambda: slow_collector.completed >= 1, timeout=EXIT_LIMIT_S,
             what="the held request to finish")
    assert json.loads((tmp_path / "micro_metrics.jsonl").read_text().splitlines()[0])[
        "value"] == 0.5
