"""End to end: OTel Python SDK -> otelcol-sparse (shipped configs) -> Prometheus -> PromQL.

Histogram values are multiples of 1/8, so sums are exact in binary and compare with ==.
The names and labels asserted here are the ones dashboards use (docs/collector.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from _procs import ManagedProcess, Sample
from conftest import Collector, Prometheus
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

pytestmark = pytest.mark.integration

OTEL_NAME = "sparse_attention.research_attention_density"
PROM_BASE = "sparse_attention_research_attention_density"
SERVICE_NAME = "otel-sparse-smoke"
RANK = 3
BOUNDARIES = (0.25, 0.5, 0.75)
# (layer, head) -> recorded values
POINTS: dict[tuple[int, int], list[float]] = {
    (0, 0): [0.125, 0.25, 0.5, 0.875],
    (1, 2): [0.625, 0.75, 1.0],
}
# Cumulative bucket counts by `le`, for one round of POINTS (OTel buckets are (lo, hi]).
BUCKETS: dict[tuple[int, int], dict[str, float]] = {
    (0, 0): {"0.25": 2, "0.5": 3, "0.75": 3, "+Inf": 4},
    (1, 2): {"0.25": 0, "0.5": 0, "0.75": 2, "+Inf": 3},
}
# Labels of every user series in Prometheus: data point attributes, resource attributes
# (resource_to_telemetry_conversion), job/instance (service.name/.instance.id), and the
# instrumentation scope (otel_scope_*: only through the prometheus exporter; remote write
# at v0.145.0 sends none, later trains do).
SERIES_LABELS = {
    "__name__",
    "job",
    "instance",
    "service_name",
    "service_instance_id",
    "telemetry_sdk_language",
    "telemetry_sdk_name",
    "telemetry_sdk_version",
    "run_id",
    "rank",
    "layer",
    "head",
    "otel_scope_name",
    "otel_scope_version",
}
SCOPE = ("otel_sparse.smoke", "0.1.0")
SCOPE_LABELS = {"otel_scope_name", "otel_scope_version"}
# Prometheus names of: counter otel_sparse.events.dropped (unit 1), histogram
# sparse_attention.step_time (unit s), gauge sparse_attention.density_last (unit 1).
TRANSLATED_NAMES = {
    "otel_sparse_events_dropped_total",
    "sparse_attention_step_time_seconds_bucket",
    "sparse_attention_step_time_seconds_sum",
    "sparse_attention_step_time_seconds_count",
    "sparse_attention_density_last_ratio",
}

ExporterFactory = Callable[[Collector, AggregationTemporality], MetricExporter]


def _grpc_exporter(collector: Collector, temporality: AggregationTemporality) -> MetricExporter:
    return GrpcMetricExporter(
        endpoint=collector.grpc_endpoint,
        insecure=True,
        preferred_temporality={Histogram: temporality},
    )


def _http_exporter(collector: Collector, temporality: AggregationTemporality) -> MetricExporter:
    return HttpMetricExporter(
        endpoint=f"{collector.http_endpoint}/v1/metrics",
        preferred_temporality={Histogram: temporality},
    )


EXPORTERS: dict[str, ExporterFactory] = {"grpc": _grpc_exporter, "http": _http_exporter}


def record_and_export(
    exporter: MetricExporter, run_id: str, instance_id: str, rounds: int = 1
) -> None:
    """Record POINTS `rounds` times, exporting (force_flush) after each round."""
    resource = Resource.create(
        {
            "service.name": SERVICE_NAME,
            "service.instance.id": instance_id,
            "run.id": run_id,
            "rank": RANK,
        }
    )
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    view = View(
        instrument_name=OTEL_NAME,
        aggregation=ExplicitBucketHistogramAggregation(boundaries=BOUNDARIES),
    )
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=[view])
    try:
        histogram = provider.get_meter(*SCOPE).create_histogram(
            OTEL_NAME, unit="1", description="fraction of attention entries computed"
        )
        for _ in range(rounds):
            for (layer, head), values in POINTS.items():
                for value in values:
                    histogram.record(value, {"layer": layer, "head": head})
            assert provider.force_flush(timeout_millis=15_000), "export failed"
    finally:
        provider.shutdown(timeout_millis=15_000)


def by_layer_head(samples: list[Sample]) -> dict[tuple[int, int], float]:
    """{(layer, head): value}, checking each pair appears once."""
    out: dict[tuple[int, int], float] = {}
    for labels, value in samples:
        key = (int(labels["layer"]), int(labels["head"]))
        assert key not in out, f"two series for {key}: {samples}"
        out[key] = value
    return out


def assert_histogram(
    prom: Prometheus,
    run_id: str,
    instance_id: str,
    rounds: int = 1,
    procs: tuple[ManagedProcess, ...] = (),
    scope_labels: bool = True,
) -> list[Sample]:
    """Wait for the run's series, then assert names, labels, counts, sums and buckets.

    scope_labels: whether the series carry otel_scope_name/_version (the prometheus
    exporter: yes; remote write at v0.145.0: no).
    """
    sel = f'{{run_id="{run_id}"}}'
    want_count = {k: float(len(v) * rounds) for k, v in POINTS.items()}
    counts = prom.wait_for_query(
        f"{PROM_BASE}_count{sel}",
        lambda r: by_layer_head(r) == want_count if len(r) == len(POINTS) else False,
        timeout=45,
        procs=procs,
    )

    series = prom.query(f'{{__name__=~"{PROM_BASE}.*",run_id="{run_id}"}}')
    names = {labels["__name__"] for labels, _ in series}
    assert names == {f"{PROM_BASE}_bucket", f"{PROM_BASE}_sum", f"{PROM_BASE}_count"}

    sums = by_layer_head(prom.query(f"{PROM_BASE}_sum{sel}"))
    assert sums == {k: sum(v) * rounds for k, v in POINTS.items()}

    buckets: dict[tuple[int, int], dict[str, float]] = {}
    for labels, value in prom.query(f"{PROM_BASE}_bucket{sel}"):
        key = (int(labels["layer"]), int(labels["head"]))
        buckets.setdefault(key, {})[labels["le"]] = value
    assert buckets == {k: {le: n * rounds for le, n in v.items()} for k, v in BUCKETS.items()}

    want_labels = SERIES_LABELS if scope_labels else SERIES_LABELS - SCOPE_LABELS
    for labels, _ in counts:
        assert set(labels) == want_labels, labels
        assert labels["run_id"] == run_id
        assert labels["rank"] == str(RANK)
        assert labels["job"] == SERVICE_NAME
        assert labels["service_name"] == SERVICE_NAME
        assert labels["instance"] == instance_id
        assert labels["service_instance_id"] == instance_id
        if scope_labels:
            assert (labels["otel_scope_name"], labels["otel_scope_version"]) == SCOPE
    return counts


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_single_exports_histogram_to_prometheus(
    transport: str,
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """single.yaml: OTLP over gRPC / HTTP in, exact histogram out of a Prometheus scrape."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    run_id, instance_id = f"smoke-{transport}-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    record_and_export(
        EXPORTERS[transport](collector, AggregationTemporality.CUMULATIVE), run_id, instance_id
    )

    assert_histogram(prom, run_id, instance_id, procs=(collector.process,))


def test_single_turns_delta_into_cumulative(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """single.yaml's deltatocumulative: two delta exports add up in Prometheus."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    run_id, instance_id = f"smoke-delta-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    record_and_export(
        _grpc_exporter(collector, AggregationTemporality.DELTA), run_id, instance_id, rounds=2
    )

    assert_histogram(prom, run_id, instance_id, rounds=2, procs=(collector.process,))


def test_gateway_scrape_and_remote_write(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """gateway.yaml: the same histogram in a scraping and in a remote-write Prometheus."""
    remote = prometheus_factory(remote_write_receiver=True, name="prometheus-remote-write")
    gateway = collector_factory(
        "gateway.yaml", env={"OTEL_SPARSE_REMOTE_WRITE_URL": remote.remote_write_url}
    )
    scraper = prometheus_factory([gateway.prometheus_target], name="prometheus-scrape")
    run_id, instance_id = f"smoke-gw-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    record_and_export(
        _grpc_exporter(gateway, AggregationTemporality.CUMULATIVE), run_id, instance_id
    )

    assert_histogram(scraper, run_id, instance_id, procs=(gateway.process,))
    assert_histogram(remote, run_id, instance_id, procs=(gateway.process,), scope_labels=False)
    # Remote write also carries the resource as target_info (job + instance identify it).
    info = remote.wait_for_query(
        f'target_info{{job="{SERVICE_NAME}",instance="{instance_id}"}}', timeout=30
    )
    assert len(info) == 1
    assert info[0][0]["run_id"] == run_id
    assert info[0][0]["rank"] == str(RANK)


def test_agent_forwards_to_gateway(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """agent.yaml -> gateway.yaml -> remote write: what the agent receives arrives intact."""
    remote = prometheus_factory(remote_write_receiver=True)
    gateway = collector_factory(
        "gateway.yaml", env={"OTEL_SPARSE_REMOTE_WRITE_URL": remote.remote_write_url}
    )
    agent = collector_factory(
        "agent.yaml", env={"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint}
    )
    run_id, instance_id = f"smoke-agent-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    record_and_export(_http_exporter(agent, AggregationTemporality.CUMULATIVE), run_id, instance_id)

    assert_histogram(
        remote, run_id, instance_id, procs=(gateway.process, agent.process), scope_labels=False
    )


def test_collector_self_telemetry_counts_points(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """The collector's own metrics (telemetry port) count the points it accepted and sent."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory({"otelcol": [collector.telemetry_target]})
    run_id, instance_id = f"smoke-tel-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    record_and_export(
        _grpc_exporter(collector, AggregationTemporality.CUMULATIVE), run_id, instance_id
    )

    # force_flush and shutdown each export both data points: 4 accepted in all.
    accepted = prom.wait_for_query(
        'otelcol_receiver_accepted_metric_points{receiver="otlp",transport="grpc"}',
        lambda r: len(r) == 1 and r[0][1] == 4,
        procs=(collector.process,),
    )
    assert accepted[0][0]["job"] == "otelcol"
    refused = prom.query('otelcol_receiver_refused_metric_points{receiver="otlp"}')
    assert [v for _, v in refused] in ([], [0.0])
    prom.wait_for_query(
        'otelcol_exporter_sent_metric_points{exporter="prometheus"}',
        lambda r: len(r) == 1 and r[0][1] == 4,
    )


def test_restart_keeps_ports(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """restart() brings the collector back on the same ports; new exports arrive."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    ports = dict(collector.ports)
    first_pid = collector.process.pid

    collector.restart()

    assert collector.ports == ports
    assert collector.process.running and collector.process.pid != first_pid
    run_id, instance_id = f"smoke-restart-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    record_and_export(
        _grpc_exporter(collector, AggregationTemporality.CUMULATIVE), run_id, instance_id
    )
    assert_histogram(prom, run_id, instance_id, procs=(collector.process,))


def test_prometheus_names_scrape_and_remote_write(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    """Counter unit 1 -> _total, histogram unit s -> _seconds_*, gauge unit 1 -> _ratio,
    the same through the prometheus exporter and through remote write."""
    remote = prometheus_factory(remote_write_receiver=True, name="prometheus-remote-write")
    gateway = collector_factory(
        "gateway.yaml", env={"OTEL_SPARSE_REMOTE_WRITE_URL": remote.remote_write_url}
    )
    scraper = prometheus_factory([gateway.prometheus_target], name="prometheus-scrape")
    run_id = f"names-{uuid.uuid4().hex[:8]}"

    reader = PeriodicExportingMetricReader(
        _grpc_exporter(gateway, AggregationTemporality.CUMULATIVE), export_interval_millis=3_600_000
    )
    provider = MeterProvider(
        resource=Resource.create({"run.id": run_id, "rank": 0}), metric_readers=[reader]
    )
    try:
        meter = provider.get_meter(*SCOPE)
        meter.create_counter("otel_sparse.events.dropped", unit="1").add(
            3, {"reason": "sampling", "metric": "research_attention_density"}
        )
        meter.create_histogram("sparse_attention.step_time", unit="s").record(0.5)
        meter.create_gauge("sparse_attention.density_last", unit="1").set(0.375)
        assert provider.force_flush(timeout_millis=15_000)
    finally:
        provider.shutdown(timeout_millis=15_000)

    for prom in (scraper, remote):
        series = prom.wait_for_query(
            f'{{run_id="{run_id}",__name__!="target_info"}}',
            lambda r: {labels["__name__"] for labels, _ in r} == TRANSLATED_NAMES,
            procs=(gateway.process,),
        )
        values = {labels["__name__"]: v for labels, v in series if "le" not in labels}
        assert values["otel_sparse_events_dropped_total"] == 3
        assert values["sparse_attention_density_last_ratio"] == 0.375
        assert values["sparse_attention_step_time_seconds_sum"] == 0.5
        dropped = next(
            lbl for lbl, _ in series if lbl["__name__"] == "otel_sparse_events_dropped_total"
        )
        assert (dropped["reason"], dropped["metric"]) == ("sampling", "research_attention_density")
