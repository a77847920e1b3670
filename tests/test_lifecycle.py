"""The lifecycle module, the protocols between the pieces, and the event's context.

``otel_sparse.lifecycle`` closes whatever registered with it, by the ``ManagedLogger``
protocol, and never imports the facade; the writer asks its logger only through
``QueueOwner``; exporters describe themselves through ``exporters.extras``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

import otel_sparse
from otel_sparse import MicroMetricLogger, lifecycle
from otel_sparse.event import EventContext, LogEvent
from otel_sparse.exporters.extras import ExplainsFailure, LocalExporter, is_local, last_error
from otel_sparse.exporters.jsonl import JsonlMetricExporter
from otel_sparse.exporters.otlp import QuietOtlpExporter
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import read_jsonl

DENSITY = "research_attention_density"
PACKAGE = Path(otel_sparse.__file__).parent


class _Recorder:
    """A ManagedLogger that remembers what the hooks asked of it."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def close(self) -> None:
        self.calls.append("close")
        if self.fail:
            raise RuntimeError("disk gone")

    def after_fork_in_child(self) -> None:
        self.calls.append("fork")

    def close_timeout_s(self) -> float | None:
        return 0.5


class TestLifecycle:
    """Registered loggers are closed by every exit path the module handles."""

    def test_close_all_closes_every_registered_logger_despite_failures(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A logger whose close raises is logged; the next one still closes."""
        broken, fine = _Recorder(fail=True), _Recorder()
        lifecycle.register(broken)
        lifecycle.register(fine)
        lifecycle.close_all()
        assert broken.calls == ["close"] and fine.calls == ["close"]
        assert "final flush failed" in caplog.text

    def test_loggers_are_held_weakly(self) -> None:
        """A dropped logger leaves the registry (garbage collection still finalises it)."""
        recorder = _Recorder()
        lifecycle.register(recorder)
        assert any(lg is recorder for lg in lifecycle.live_loggers())
        del recorder
        assert not any(isinstance(lg, _Recorder) for lg in lifecycle.live_loggers())

    def test_close_quietly_never_raises(self) -> None:
        """The finaliser path swallows what close() raises."""
        broken = _Recorder(fail=True)
        lifecycle.close_quietly(broken)
        assert broken.calls == ["close"]

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
    def test_fork_child_hook_reaches_registered_loggers(self, tmp_path: Path) -> None:
        """After os.fork() the child's registered loggers are told before anything runs."""
        recorder = _Recorder()
        lifecycle.register(recorder)
        marker = tmp_path / "child"
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            marker.write_text(",".join(recorder.calls))
            os._exit(0)
        os.waitpid(pid, 0)
        assert marker.read_text() == "fork"
        assert recorder.calls == []  # the parent is not told

    def test_facade_logger_is_registered(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A MicroMetricLogger registers itself and reports its pipeline's close bound."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger()
        assert any(lg is logger for lg in lifecycle.live_loggers())
        assert logger.close_timeout_s() is None  # no writer yet
        logger.configure_logging(str(tmp_path), "all")
        assert logger.close_timeout_s() == 3.0

    def test_lifecycle_does_not_import_the_facade(self) -> None:
        """Data flows one way: the facade uses lifecycle, never the reverse."""
        tree = ast.parse((PACKAGE / "lifecycle.py").read_text())
        imported = {node.module for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m.startswith("otel_sparse.facade") for m in imported)


class TestQueueOwner:
    """The writer takes stale events through the documented protocol method."""

    def test_writer_takes_a_stale_queue(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """An event older than the write delay comes back from take_stale_queue, in order."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10**6)
        pipeline = logger._pipeline
        assert pipeline is not None
        assert logger.take_stale_queue(60.0) is None  # nothing queued
        logger.log(DENSITY, 0.5)
        assert logger.take_stale_queue(60.0) is None  # not old enough
        assert len(logger.log_queue) == 1
        assert logger.take_stale_queue(0.0) is None  # submitted to the pipeline instead
        assert len(logger.log_queue) == 0
        pipeline.write_now()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [0.5]


class _Plain(MetricExporter):
    """An exporter that declares nothing beyond the SDK's interface."""

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class _DuckLocal(_Plain):
    """A user's exporter that says it is local without naming the protocol."""

    is_local = True


class TestExporterExtras:
    """is_local / last_error are read through the documented protocols."""

    def test_our_exporters_declare_the_protocols(self, tmp_path: Path) -> None:
        """Local files and the in-memory sink are local; OTLP is remote and explains failures."""
        assert is_local(JsonlMetricExporter(str(tmp_path / "m.jsonl")))
        assert is_local(InMemoryMetricExporter())
        assert {LocalExporter, ExplainsFailure} <= set(QuietOtlpExporter.__mro__)
        quiet = QuietOtlpExporter(_Plain())
        assert not is_local(quiet)
        assert last_error(quiet) is None
        quiet.last_error = "collector unreachable: refused"
        assert last_error(quiet) == "collector unreachable: refused"

    def test_exporters_that_say_nothing(self) -> None:
        """Without the attributes: remote, no explanation; a duck-typed is_local still counts."""
        assert not is_local(_Plain())
        assert last_error(_Plain()) is None
        assert not is_local(ConsoleMetricExporter())
        assert is_local(_DuckLocal())


class TestEventContext:
    """The context travels on the event without becoming a field."""

    def test_log_event_keeps_the_contract_fields(self) -> None:
        """fields(), asdict() and equality see exactly the five contract fields."""
        plain = LogEvent(datetime(2026, 1, 1), DENSITY, 0.5, {"layer_idx": 1}, "m.f")
        scoped = LogEvent(datetime(2026, 1, 1), DENSITY, 0.5, {"layer_idx": 1}, "m.f")
        scoped.context = EventContext({"step": 3})
        assert [f.name for f in dataclasses.fields(LogEvent)] == [
            "timestamp", "metric", "value", "metadata", "location"]
        assert list(dataclasses.asdict(scoped)) == [
            "timestamp", "metric", "value", "metadata", "location"]
        assert plain.context is None
        assert scoped == plain

    def test_logged_events_carry_their_context(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """log() under a context sets event.context to the shared snapshot."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10**6)
        logger.log(DENSITY, 0.25)
        with logger.step(7):
            logger.log(DENSITY, 0.5)
            logger.log(DENSITY, 0.75)
        first, second, third = logger.log_queue
        assert first.context is None
        assert second.context is not None and second.context.values == {"step": 7}
        assert third.context is second.context


def test_no_module_imports_the_package_init() -> None:
    """``from otel_sparse import x`` inside the package depends on import order; modules
    import the module they need (the CLI is being restructured by issue 10)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in {"__init__.py", "cli.py"} or relative.startswith("cli/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "otel_sparse":
                offenders.append(relative)
            if isinstance(node, ast.Import) and any(a.name == "otel_sparse" for a in node.names):
                offenders.append(relative)
    assert offenders == []
