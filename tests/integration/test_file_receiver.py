"""otel_sparse's ``otlp_file`` exporter -> OTLP-JSON lines file -> the collector's
``otlpjsonfile`` receiver (tests/integration/configs/replay.yaml) -> Prometheus.

Values are multiples of 1/8, so sums are exact in binary floating point and "exact" means
equal. The collector reads the file either after it was written (``start_at: beginning``)
or while the logger is still appending to it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Collector, Prometheus

from otel_sparse import MicroMetricLogger
from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

pytestmark = pytest.mark.integration

REPLAY_CONFIG = Path(__file__).resolve().parent / "configs" / "replay.yaml"
DENSITY = "research_attention_density"
PROM = "sparse_attention_research_attention_density"
LAYERS, HEADS, STEPS = 3, 4, 5
RANK, WORLD_SIZE = 1, 2


def _value(step: int, layer: int, head: int) -> float:
    return ((step + 2 * layer + head) % 9) / 8  # 0 .. 1, multiples of 1/8


def _write_otlp_file(
    cls: type[MicroMetricLogger], log_dir: Path, otlp_file: Path,
    monkeypatch: pytest.MonkeyPatch, run_id: str,
) -> None:
    """Log the known values with exporter otlp_file only, then close (final export)."""
    monkeypatch.setenv("OTEL_SPARSE_OTLP_FILE", str(otlp_file))
    monkeypatch.setenv("OTEL_SPARSE_EXPORT_INTERVAL", "300")
    monkeypatch.setenv("OTEL_SPARSE_RUN_ID", run_id)
    monkeypatch.setenv("RANK", str(RANK))
    monkeypatch.setenv("WORLD_SIZE", str(WORLD_SIZE))
    cls.register_metric(DENSITY, float)
    logger = cls(log_path=str(log_dir), enabled_metrics="all", exporters=["otlp_file"])
    for step in range(STEPS):
        for layer in range(LAYERS):
            for head in range(HEADS):
                logger.log(DENSITY, _value(step, layer, head),
                           {"layer_idx": layer, "head_idx": head})
        logger.flush()
        time.sleep(0.5)  # > the export interval: the file gets a line per step or so
    logger.close()


def _metrics_in_lines(path: Path) -> int:
    """Metrics (not data points) in all the file's lines, each one ExportMetricsServiceRequest."""
    total = 0
    for line in path.read_text().splitlines():
        request = json.loads(line)
        for rm in request["resourceMetrics"]:
            for sm in rm.get("scopeMetrics", []):
                total += len(sm.get("metrics", []))
    return total


def _by_layer_head(samples: list[tuple[dict[str, str], float]]) -> dict[tuple[int, int], float]:
    return {(int(s["layer"]), int(s["head"])): v for s, v in samples}


@pytest.mark.parametrize("when", ["before_start", "while_running"])
def test_otlp_file_read_by_collector_exact_in_prometheus(
    fresh_logger: type[MicroMetricLogger],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    when: str,
) -> None:
    """_count, _sum, every bucket and the library's counter equal what was logged."""
    run_id = f"file-{uuid.uuid4().hex[:8]}"
    otlp_dir = tmp_path / "otlp"
    # The exporter may make the name per process (metrics.rank1.pid123.jsonl): the
    # collector reads whatever *.jsonl appears in the folder.
    otlp_path = otlp_dir / "metrics.jsonl"
    env = {"OTEL_SPARSE_REPLAY_INCLUDE": str(otlp_dir / "*.jsonl")}

    if when == "before_start":
        _write_otlp_file(fresh_logger, tmp_path / "run", otlp_path, monkeypatch, run_id)
        collector = collector_factory(REPLAY_CONFIG, env=env, name="otlpjsonfile")
    else:
        otlp_dir.mkdir()
        collector = collector_factory(REPLAY_CONFIG, env=env, name="otlpjsonfile")
        _write_otlp_file(fresh_logger, tmp_path / "run", otlp_path, monkeypatch, run_id)

    written = sorted(otlp_dir.glob("*.jsonl"))
    assert len(written) == 1, written
    otlp_file = written[0]
    lines = otlp_file.read_text().splitlines()
    # Several cumulative snapshots: the collector must end at the last one.
    assert len(lines) >= 2, f"expected several exports, got {len(lines)} line(s)"
    prom = prometheus_factory({
        "otelcol": [collector.prometheus_target],
        "otelcol-self": [collector.telemetry_target],
    })
    procs = [collector.process]
    selector = f'{{run_id="{run_id}"}}'

    counts = prom.wait_for_query(
        f"{PROM}_count{selector}",
        lambda r: len(r) == LAYERS * HEADS and all(v == STEPS for _, v in r),
        procs=procs,
    )
    assert _by_layer_head(counts) == {(la, h): STEPS for la in range(LAYERS) for h in range(HEADS)}
    sums = _by_layer_head(prom.query(f"{PROM}_sum{selector}"))
    assert sums == {
        (la, h): sum(_value(s, la, h) for s in range(STEPS))
        for la in range(LAYERS) for h in range(HEADS)
    }
    for le in (0.25, 0.5, 1.0):
        assert le in DEFAULT_FLOAT_BOUNDARIES
        buckets = _by_layer_head(prom.query(f'{PROM}_bucket{{run_id="{run_id}",le="{le:g}"}}'))
        assert buckets == {
            (la, h): sum(_value(s, la, h) <= le for s in range(STEPS))
            for la in range(LAYERS) for h in range(HEADS)
        }, le
    inf = _by_layer_head(prom.query(f'{PROM}_bucket{{run_id="{run_id}",le="+Inf"}}'))
    assert set(inf.values()) == {STEPS}

    # Resource attributes of the writing process became labels, as over OTLP.
    (sample,) = prom.query(f'{PROM}_count{{run_id="{run_id}",layer="1",head="2"}}')
    assert sample[0]["rank"] == str(RANK) and sample[0]["world_size"] == str(WORLD_SIZE)
    logged = prom.wait_for_query(
        f'otel_sparse_events_logged_total{selector}', procs=procs
    )
    assert [(s["metric"], v) for s, v in logged] == [(DENSITY, LAYERS * HEADS * STEPS)]

    # Every line was read whole, and once. At v0.145.0 the otlpjsonfile receiver counts
    # METRICS, not data points, in otelcol_receiver_accepted_metric_points (its
    # EndMetricsOp gets md.MetricCount(); the otlp receiver counts data points).
    metrics = float(_metrics_in_lines(otlp_file))
    accepted = prom.wait_for_query(
        'sum(otelcol_receiver_accepted_metric_points{receiver="otlpjsonfile"})',
        lambda r: bool(r) and r[0][1] == metrics,
        procs=procs,
    )
    assert accepted[0][1] == metrics
    failed = prom.query('sum(otelcol_receiver_failed_metric_points{receiver="otlpjsonfile"})')
    assert not failed or failed[0][1] == 0
