"""The gateway's two ways to vmagent store the same series (docs/cluster.md, "OTLP to vmagent").

    ranks --OTLP--> gateway.yaml --prometheusremotewrite--> vmagent --> Prometheus  ("prw")
    ranks --OTLP--> gateway.yaml + otlp-to-vmagent.yaml --OTLP--> vmagent
        (-opentelemetry.usePrometheusNaming, -relabelConfig=vmagent-otlp-relabel.yaml)
        --> Prometheus                                                              ("otlp")

The same OTLP exports (the library's own resource and scope, a per-rank counter, float
histograms) go to both paths at once, each into its own Prometheus, vmagent keeping the raw
per-rank series too (keep_input). Every stored series, the aggregated ones and the raw
per-rank ones, must be the same on both: name, every label and value, and the pass-through
series' source timestamps.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable

import pytest
from _procs import query_matrix
from conftest import REPO_ROOT, AggregatedPath, Prometheus
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_cluster import METRICS, SimulatedRank

from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES
from otel_sparse.resource import ProcessIdentity

pytestmark = pytest.mark.integration

LAYERS, HEADS, STEPS, RANKS = 2, 2, 3, 2
SETTLE_S = 60.0

Key = tuple[tuple[str, str], ...]


def stored(prom: Prometheus, run_id: str) -> dict[Key, list[tuple[float, float]]]:
    """Every series of run_id in ``prom`` (name and labels) -> its samples of the last hour."""
    series = query_matrix(prom.url, f'{{run_id="{run_id}"}}[1h]')
    return {tuple(sorted(labels.items())): points for labels, points in series}


def without_target_info(prw: dict[Key, list[tuple[float, float]]],
                        otlp: dict[Key, list[tuple[float, float]]], ranks: int
                        ) -> dict[Key, list[tuple[float, float]]]:
    """``prw`` without its target_info series (one per rank), each checked redundant: every
    label it carries is on some series of ``otlp`` already."""
    info = {k for k in prw if dict(k)["__name__"] == "target_info"}
    assert len(info) == ranks
    for key in info:
        labels = set(key) - {("__name__", "target_info")}
        assert any(labels <= set(k) for k in otlp), key
    return {k: v for k, v in prw.items() if k not in info}


def names(keys: object) -> list[str]:
    return sorted({dict(k)["__name__"] for k in keys})  # type: ignore[union-attr]


def test_same_series_through_prometheusremotewrite_and_otlp(
    aggregated_path_factory: Callable[..., AggregatedPath],
) -> None:
    """One run through each protocol: the stored series sets are equal, values included."""
    paths = {p: aggregated_path_factory(keep_input=True, protocol=p, name=f"-{p}")
             for p in ("prw", "otlp")}
    exporters = {p: OTLPMetricExporter(endpoint=path.gateway.grpc_endpoint, insecure=True)
                 for p, path in paths.items()}
    run_id = f"same-{uuid.uuid4().hex[:8]}"
    ranks = []
    for rank in range(RANKS):
        sim = SimulatedRank(run_id, rank, RANKS, f"node-{rank}", LAYERS, HEADS)
        sim.resource = ProcessIdentity(
            run_id=run_id, rank=rank, world_size=RANKS, local_rank=rank, pid=1000 + rank,
            instance_id=f"{run_id}-{rank}", host_name=f"node-{rank}").resource()
        ranks.append(sim)
    try:
        for round_ in range(2):
            for sim in ranks:
                sim.log_round(round_, STEPS)
                data = sim.collect()
                for exporter in exporters.values():
                    assert exporter.export(data).name == "SUCCESS"
            time.sleep(1.5)  # past one aggregation interval
        count = 2 * STEPS * RANKS
        for path in paths.values():
            path.prom.wait_for_query(
                f'sparse_attention_research_attention_density_count{{run_id="{run_id}",'
                f'rank=""}}', lambda r, c=count: len(r) == LAYERS * HEADS
                and all(v == c for _, v in r), timeout=SETTLE_S, procs=path.procs)
        time.sleep(3)
        got = {p: stored(path.prom, run_id) for p, path in paths.items()}
        otlp = got["otlp"]
        # target_info: remote write's one series per resource, which vmagent's OTLP intake
        # does not make. Every label it has is on each of that rank's series already.
        prw = without_target_info(got["prw"], otlp, RANKS)
        assert sorted(set(prw) - set(otlp)) == [] and sorted(set(otlp) - set(prw)) == []
        assert names(prw) == sorted(
            ["otel_sparse_events_logged_total",
             *(f"sparse_attention_{m}_{s}" for m in METRICS for s in ("bucket", "count", "sum"))])
        buckets = len(DEFAULT_FLOAT_BOUNDARIES) + 1
        aggregated = [k for k in prw if not dict(k).get("rank")]
        assert len(aggregated) == len(METRICS) * LAYERS * HEADS * (buckets + 2)
        per_rank = [k for k in prw if dict(k).get("rank")]
        assert per_rank
        # the raw per-rank series keep the ranks' timestamps and values on both paths
        assert {k: prw[k] for k in per_rank} == {k: otlp[k] for k in per_rank}
        # the aggregated ones: the same last value (vmagent stamps them at its own flushes)
        assert {k: v[-1][1] for k, v in prw.items()} == {k: v[-1][1] for k, v in otlp.items()}
    finally:
        for exporter in exporters.values():
            exporter.shutdown()


def test_nothing_shipped_reads_target_info() -> None:
    """No dashboard, recording or alert rule uses target_info (absent on the OTLP path)."""
    files = [*(REPO_ROOT / "docker" / "grafana" / "dashboards").glob("*.json"),
             *(REPO_ROOT / "docker" / "prometheus" / "rules").glob("*.yml"),
             *(REPO_ROOT / "docker" / "prometheus" / "rules" / "tests").glob("*.yml")]
    assert len(files) >= 3
    assert [f.name for f in files if "target_info" in f.read_text()] == []


def test_exponential_histograms_the_same_vmrange_series_on_both(
    aggregated_path_factory: Callable[..., AggregatedPath],
) -> None:
    """OTEL_SPARSE_HISTOGRAM=exponential into the aggregated layouts: vmagent stores
    ``vmrange`` buckets (VictoriaMetrics#10743) on both paths (it turns the remote-written
    native histogram into them too), the same series and values; no ``le``. The resource
    has a service.namespace here: ``job`` is "namespace/name" on both paths."""
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from otel_sparse._instruments import make_spec
    from otel_sparse.aggregator import Aggregator

    paths = {p: aggregated_path_factory(keep_input=True, protocol=p, name=f"-{p}")
             for p in ("prw", "otlp")}
    run_id = f"exp-{uuid.uuid4().hex[:8]}"
    spec = make_spec("research_attention_density", float, histogram="exponential")
    agg = Aggregator(start_ns=time.time_ns())
    for v in (0.25, 0.5, 0.75):
        agg.record("sparse_attention.research_attention_density", spec,
                   (("head", 0), ("layer", 0)), v)
    # with a service.namespace: job is "namespace/name" on both paths (the relabel file's
    # second rule)
    resource = ProcessIdentity(run_id=run_id, rank=0, world_size=1, local_rank=0, pid=1,
                               instance_id=f"{run_id}-0", host_name="node-0").resource().merge(
        Resource({"service.namespace": "team-a"}))
    data = MetricsData(resource_metrics=[ResourceMetrics(
        resource=resource, schema_url="", scope_metrics=[ScopeMetrics(
            scope=InstrumentationScope("otel_sparse"), metrics=agg.collect(time.time_ns()),
            schema_url="")])])
    for path in paths.values():
        exporter = OTLPMetricExporter(endpoint=path.gateway.grpc_endpoint, insecure=True)
        try:
            assert exporter.export(data).name == "SUCCESS"
        finally:
            exporter.shutdown()
    name = "sparse_attention_research_attention_density"
    for path in paths.values():
        path.prom.wait_for_query(f'{name}_count{{run_id="{run_id}", rank=""}}',
                                 lambda r: [v for _, v in r] == [3.0], timeout=SETTLE_S,
                                 procs=path.procs)
    time.sleep(2)
    got = {p: stored(path.prom, run_id) for p, path in paths.items()}
    otlp = got["otlp"]
    prw = without_target_info(got["prw"], otlp, 1)
    assert sorted(prw) == sorted(otlp)
    assert {k: v[-1][1] for k, v in prw.items()} == {k: v[-1][1] for k, v in otlp.items()}
    buckets = [dict(k) for k in otlp if dict(k)["__name__"] == f"{name}_bucket"]
    # three values in three buckets, once per rank and once aggregated
    assert len(buckets) == 6 and all("vmrange" in b and "le" not in b for b in buckets)
    assert {dict(k).get("job") for k in otlp} == {"team-a/otel-sparse"}
