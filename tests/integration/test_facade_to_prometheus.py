"""The facade end to end: log() -> OTLP (gRPC and HTTP) -> our collector -> Prometheus.

Values are multiples of 1/8, so sums are exact in binary floating point and "exact" means
equal. Each test reads the numbers back with PromQL from a real Prometheus.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Collector, Prometheus

from otel_sparse import MicroMetricLogger
from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

pytestmark = pytest.mark.integration

DENSITY = "research_attention_density"
PROM = "sparse_attention_research_attention_density"
LAYERS, HEADS, STEPS = 4, 4, 6


def _value(step: int, layer: int, head: int) -> float:
    return ((step + layer + head) % 9) / 8  # 0 .. 1, multiples of 1/8


def _log_known_values(
    cls: type[MicroMetricLogger], path: Path, monkeypatch: pytest.MonkeyPatch,
    collector: Collector, protocol: str, run_id: str, rank: int = 2,
) -> None:
    endpoint = (collector.http_endpoint if protocol == "http/protobuf"
                else f"http://{collector.grpc_endpoint}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SPARSE_EXPORT_INTERVAL", "500")
    monkeypatch.setenv("OTEL_SPARSE_RUN_ID", run_id)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "4")
    cls.register_metric(DENSITY, float)
    logger = cls(log_path=str(path), enabled_metrics="all", exporters=["otlp", "jsonl"])
    for step in range(STEPS):
        for layer in range(LAYERS):
            for head in range(HEADS):
                logger.log(DENSITY, _value(step, layer, head),
                           {"layer_idx": layer, "head_idx": head})
    logger.close()


def _by_layer_head(samples: list[tuple[dict[str, str], float]]) -> dict[tuple[int, int], float]:
    return {(int(s["layer"]), int(s["head"])): v for s, v in samples}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_exact_counts_sums_and_buckets_in_prometheus(
    fresh_logger: type[MicroMetricLogger],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    protocol: str,
) -> None:
    """_count, _sum and every bucket per (layer, head) equal what was logged."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    run_id = f"it-{uuid.uuid4().hex[:8]}"
    _log_known_values(fresh_logger, tmp_path, monkeypatch, collector, protocol, run_id)

    selector = f'{{run_id="{run_id}"}}'
    counts = prom.wait_for_query(
        f"{PROM}_count{selector}",
        lambda r: len(r) == LAYERS * HEADS and all(v == STEPS for _, v in r),
        procs=[collector.process],
    )
    assert _by_layer_head(counts) == {(layer, h): STEPS for layer in range(LAYERS) for h in range(HEADS)}
    sums = _by_layer_head(prom.query(f"{PROM}_sum{selector}"))
    assert sums == {
        (layer, h): sum(_value(s, layer, h) for s in range(STEPS))
        for layer in range(LAYERS) for h in range(HEADS)
    }
    for le in (0.25, 0.5, 1.0):
        buckets = _by_layer_head(prom.query(f'{PROM}_bucket{{run_id="{run_id}",le="{le:g}"}}'))
        assert le in DEFAULT_FLOAT_BOUNDARIES
        assert buckets == {
            (layer, h): sum(_value(s, layer, h) <= le for s in range(STEPS))
            for layer in range(LAYERS) for h in range(HEADS)
        }, le
    inf = _by_layer_head(prom.query(f'{PROM}_bucket{{run_id="{run_id}",le="+Inf"}}'))
    assert set(inf.values()) == {STEPS}


def test_resource_labels_and_library_counters(
    fresh_logger: type[MicroMetricLogger],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """run_id, rank, world_size, host and service labels arrive; own counters are exact."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    run_id = f"it-{uuid.uuid4().hex[:8]}"
    _log_known_values(fresh_logger, tmp_path, monkeypatch, collector, "grpc", run_id, rank=3)
    (sample,) = prom.wait_for_query(
        f'{PROM}_count{{run_id="{run_id}",layer="1",head="2"}}', procs=[collector.process]
    )
    labels = sample[0]
    assert labels["rank"] == "3" and labels["world_size"] == "4"
    assert labels["job"] == "otel-sparse" and labels["instance"]
    assert labels["host_name"]
    logged = prom.wait_for_query(
        f'otel_sparse_events_logged_total{{run_id="{run_id}"}}', procs=[collector.process]
    )
    assert [(s["metric"], v) for s, v in logged] == [(DENSITY, LAYERS * HEADS * STEPS)]
