"""Step/stage context on events, and timers into histograms in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import read_jsonl

DENSITY = "research_attention_density"


def _logger(cls: type[MicroMetricLogger], path: Path, sink: InMemoryMetricExporter,
            **options: object) -> MicroMetricLogger:
    cls.register_metric(DENSITY, float, **options)  # type: ignore[arg-type]
    return cls(log_path=str(path), enabled_metrics="all", exporters=[sink])


class TestContext:
    """Context lands under a top-level "context" key, only when set."""

    def test_lines_without_context_keep_the_old_format(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """No context: no "context" key, byte-for-byte the old line."""
        logger = _logger(fresh_logger, tmp_path, InMemoryMetricExporter())
        logger.log(DENSITY, 0.5)
        logger.flush()
        (line,) = (tmp_path / "micro_metrics.jsonl").read_text().splitlines()
        assert list(json.loads(line)) == ["timestamp", "metric", "value", "metadata", "location"]

    def test_step_and_stage_scopes(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """with step(i) / context(stage=...) nest, restore on exit, and land on each event."""
        logger = _logger(fresh_logger, tmp_path, InMemoryMetricExporter())
        logger.context(epoch=1)  # without `with`: stays set
        for step in range(2):
            with logger.step(step):
                with logger.context(stage="prefill"):
                    logger.log(DENSITY, 0.25)
                logger.log(DENSITY, 0.5)
        logger.clear_context()
        logger.log(DENSITY, 0.75)
        logger.flush()
        contexts = [e.get("context") for e in read_jsonl(tmp_path / "micro_metrics.jsonl")]
        assert contexts == [
            {"epoch": 1, "step": 0, "stage": "prefill"}, {"epoch": 1, "step": 0},
            {"epoch": 1, "step": 1, "stage": "prefill"}, {"epoch": 1, "step": 1},
            None,
        ]

    def test_declared_context_keys_become_attributes(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A context key declared in register_metric(attributes=...) splits the series."""
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, sink, attributes=["stage"])
        for stage, value in (("prefill", 0.25), ("decode", 0.5), ("decode", 0.125)):
            with logger.context(stage=stage, step=7):
                logger.log(DENSITY, value, {"layer_idx": 0})
        logger.flush()
        name = f"sparse_attention.{DENSITY}"
        assert sink.histogram(name, layer=0, stage="decode").sum == 0.625
        assert sink.histogram(name, layer=0, stage="prefill").count == 1
        assert all("step" not in p.attributes for p in sink.points(name))


class TestTimer:
    """Timers record seconds into a histogram, at the caller's location."""

    def test_timer_records_seconds_with_metadata(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The elapsed time is logged once per block, with layer as attribute."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_timer("attention_time")
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=[sink])
        timers = []
        for layer in range(3):
            with logger.timer("attention_time", layer=layer) as t:
                sum(range(1000))
            timers.append(t)
        logger.flush()
        events = read_jsonl(tmp_path / "micro_metrics.jsonl")
        assert [e["value"] for e in events] == [t.elapsed for t in timers]
        assert all(e["location"].endswith("test_timer_records_seconds_with_metadata")
                   for e in events)
        point = sink.histogram("sparse_attention.attention_time", layer=2)
        assert point.count == 1 and point.sum == timers[2].elapsed > 0
        metric = next(m for rm in sink.exports[-1].resource_metrics for sm in rm.scope_metrics
                      for m in sm.metrics if m.name == "sparse_attention.attention_time")
        assert metric.unit == "s"

    def test_disabled_timer_records_nothing(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A timer for a metric that is not enabled warns once and does nothing."""
        fresh_logger.register_timer("attention_time")
        logger = fresh_logger(log_path=str(tmp_path))
        for _ in range(3):
            with logger.timer("attention_time") as t:
                pass
        assert t.elapsed is None
        assert capsys.readouterr().out.count("which is not enabled") == 1
        assert logger.get_total_records_logged() == 0
