"""Cluster-wide series summed over ranks before storage, by vmagent stream aggregation.

    ranks --OTLP--> gateway.yaml --prometheusremotewrite--> vmagent (aggregation.yaml)
        --remote write--> Prometheus

Every histogram series of a run is stored once per (run_id, layer, head[, le]), whatever the
number of ranks, under its own name (keep_metric_names). The tests check the documented
behaviour of vmagent's ``total`` output (docs/cluster.md, "Aggregating over ranks"):

* stored count, sum and buckets equal the totals logged over all ranks, exactly (values are
  multiples of 1/8), for two runs at once, a rank that exits early included;
* per rank only the library's own counters pass (liveness, events logged);
* vmagent restarted mid-run: its state is in memory. With ``ignore_first_sample_interval: 0s``
  it counts each series' first sample after the restart in full, so the stored totals are
  exact again for every rank that still exports; a rank that finished before the restart is
  lost from them (asserted exactly: the documented loss);
* gateway restarted mid-run: nothing is counted twice (the ranks' cumulative points resume
  the same series within the staleness interval);
* a delayed (older) or duplicated export changes nothing;
* the two-run, early-exit, restart and delayed/duplicated cases hold for both ways the
  gateway sends to vmagent (PROTOCOLS: prometheusremotewrite, or OTLP with
  otlp-to-vmagent.yaml);
* ``_sum`` series of metrics listed in OTEL_SPARSE_AGGR_SIGNED_SUMS (values that can be
  negative, so sums that go down, which ``total`` would read as resets) stay per rank and
  are summed exactly at query time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from _procs import Sample
from _ranks import METRICS, RankGroup, expected_totals
from conftest import PROTOCOLS, REPO_ROOT, AggregatedPath, Collector, Prometheus, Vmagent
from dashboards import panel_queries

from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

pytestmark = pytest.mark.integration

PROMS = tuple(f"sparse_attention_{m}" for m in METRICS)
LAYERS, HEADS, STEPS = 2, 2, 3
SETTLE_S = 90.0
N_BUCKETS = len(DEFAULT_FLOAT_BOUNDARIES) + 1
RANK_ARGS = ["--layers", str(LAYERS), "--heads", str(HEADS), "--steps", str(STEPS),
             "--metrics", "2"]


def keyed(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.get("layer", ""), s.get("head", "")): v for s, v in samples}


def cells(totals: Mapping[tuple[int, int], tuple[int, float]], index: int
          ) -> dict[tuple[str, str], float]:
    return {(str(layer), str(head)): float(t[index]) for (layer, head), t in totals.items()}


class Tier:
    """Prometheus <- vmagent <- gateway, and helpers to wait for exact totals."""

    def __init__(self, prom: Prometheus, vmagent: Vmagent, gateway: Collector) -> None:
        self.prom = prom
        self.vmagent = vmagent
        self.gateway = gateway

    def rank_env(self) -> dict[str, str]:
        return {"OTEL_SPARSE_EXPORTERS": "otlp", "OTEL_SPARSE_EXPORT_INTERVAL": "300",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.gateway.grpc_endpoint}"}

    def wait_exact(self, run_id: str, plan: Mapping[int, range], metric: int = 0) -> None:
        """Stored _count and _sum of run_id == the totals of ``plan``, one series per cell."""
        totals = expected_totals(plan, STEPS, LAYERS, HEADS, metric)
        for suffix, index in (("_count", 0), ("_sum", 1)):
            want = cells(totals, index)
            got = self.prom.wait_for_query(
                f'{PROMS[metric]}{suffix}{{run_id="{run_id}"}}',
                lambda r, w=want: len(r) == len(w) and keyed(r) == w,
                timeout=SETTLE_S, procs=[self.vmagent.process, self.gateway.process])
            assert keyed(got) == want, (suffix, run_id)
            assert all("rank" not in s and "instance" not in s for s, _ in got)


@pytest.fixture
def tier(aggregated_path_factory: Callable[..., AggregatedPath],
         request: pytest.FixtureRequest) -> Tier:
    """The tier; indirect parametrization picks the gateway's protocol (PROTOCOLS)."""
    path = aggregated_path_factory(protocol=getattr(request, "param", "prw"))
    return Tier(path.prom, path.vmagent, path.gateway)


@pytest.mark.parametrize("tier", PROTOCOLS, indirect=True)
def test_two_runs_exact_rank_independent_series_early_exit(tier: Tier, tmp_path: Path) -> None:
    """Run A (3 ranks, rank 2 exits after phase 1) and run B (2 ranks) through one vmagent."""
    run_a = RankGroup(tmp_path / "a", f"agg-a-{uuid.uuid4().hex[:8]}", 3)
    run_b = RankGroup(tmp_path / "b", f"agg-b-{uuid.uuid4().hex[:8]}", 2)
    try:
        for rank in range(3):
            extra = ["--phases", "1", "--exit-after-last"] if rank == 2 else ["--phases", "2"]
            run_a.start(rank, tier.rank_env(), RANK_ARGS + extra)
        for rank in range(2):
            run_b.start(rank, tier.rank_env(), [*RANK_ARGS, "--phases", "2"])
        for group in (run_a, run_b):
            group.wait_ready()
            group.go(1)
        for group in (run_a, run_b):
            group.wait_done(1)
        assert run_a.wait_exited(2) == 0
        for group in (run_a, run_b):
            group.go(2)
            group.wait_done(2)
        for group in (run_a, run_b):
            for metric in range(2):
                tier.wait_exact(group.run_id, group.plan(), metric)
        prom = tier.prom
        for group in (run_a, run_b):
            run = f'run_id="{group.run_id}"'
            # the stored (layer, head) views do not depend on the number of ranks
            stored = prom.query(f'count({{__name__=~"sparse_attention_.+", {run}}})')
            assert stored[0][1] == len(PROMS) * LAYERS * HEADS * (N_BUCKETS + 2)
            inf = prom.query(f'{PROMS[0]}_bucket{{{run},le="+Inf"}}')
            totals = expected_totals(group.plan(), STEPS, LAYERS, HEADS)
            assert keyed(inf) == cells(totals, 0)
            # per rank: only the library's counters (liveness, events logged), every rank's,
            # the exited one's too (last_over_time: its series is no longer fresh)
            per_rank = STEPS * LAYERS * HEADS
            want = {(m, str(r)): float(per_rank * len(phases))
                    for r, phases in group.plan().items() for m in METRICS}
            prom.wait_for_query(
                f"last_over_time(otel_sparse_events_logged_total{{{run}}}[1h])",
                lambda r, w=want: {(s["metric"], s["rank"]): v for s, v in r} == w,
                timeout=SETTLE_S)
    finally:
        for group in (run_a, run_b):
            group.kill_all()


def check_dashboard_means(prom: Prometheus, group: RankGroup) -> None:
    """The attention dashboard's whole-run mean panels and the recording rules' mean
    expression give sum/count of the logged values exactly, from the aggregated series."""
    import json

    import yaml

    dashboard = json.loads((REPO_ROOT / "docker" / "grafana" / "dashboards"
                            / "otel-sparse-attention.json").read_text())
    queries = dict(panel_queries(dashboard, {"run_id": group.run_id}))
    rules = yaml.safe_load((REPO_ROOT / "docker" / "prometheus" / "rules"
                            / "recording.yml").read_text())
    recorded = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    for metric, title in ((0, "Mean attention density, layer \u00d7 head (whole run)"),
                          (1, "Mean attention output error, layer \u00d7 head (whole run)")):
        totals = expected_totals(group.plan(), STEPS, LAYERS, HEADS, metric)
        want = {(str(layer), str(head)): s / c for (layer, head), (c, s) in totals.items()}
        assert keyed(prom.query(queries[title])) == want, title
        rule = recorded[f"sparse_attention:{METRICS[metric]}:mean_by_layer_head"]
        got = [(lb, v) for lb, v in prom.query(rule) if lb.get("run_id") == group.run_id]
        assert keyed(got) == want, rule


@pytest.mark.parametrize("tier", PROTOCOLS, indirect=True)
def test_aggregator_and_gateway_restarts(tier: Tier, tmp_path: Path) -> None:
    """vmagent restart: exact again for live ranks, an exited rank's share is the loss;
    gateway restart: nothing counted twice."""
    group = RankGroup(tmp_path / "job", f"agg-r-{uuid.uuid4().hex[:8]}", 3)
    try:
        for rank in range(3):
            extra = ["--phases", "1", "--exit-after-last"] if rank == 2 else ["--phases", "3"]
            group.start(rank, tier.rank_env(), RANK_ARGS + extra)
        group.wait_ready()
        group.go(1)
        group.wait_done(1)
        assert group.wait_exited(2) == 0
        tier.wait_exact(group.run_id, {r: range(1, 2) for r in range(3)})  # rank 2 included
        tier.vmagent.restart()
        live = {r: p for r, p in group.plan().items() if r != 2}
        # documented loss: what rank 2 logged before the restart is no longer in the total
        tier.wait_exact(group.run_id, {r: range(1, 2) for r in live})
        group.go(2)
        group.wait_done(2)
        tier.wait_exact(group.run_id, {r: range(1, 3) for r in live})
        tier.gateway.restart()
        group.go(3)
        group.wait_done(3)
        tier.wait_exact(group.run_id, live)
        time.sleep(3)  # a few more flushes: still exact, nothing counted twice
        tier.wait_exact(group.run_id, live)
    finally:
        group.kill_all()


def _sender(endpoint: str, run_id: str, rank: int) -> tuple[Callable[..., None], Callable[[], object]]:
    """(record(metric, value), snapshot() -> MetricsData) of one fake rank: our Aggregator and
    resource, sent as the SDK's OTLP exporter sends them."""
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from otel_sparse._instruments import make_spec
    from otel_sparse.aggregator import Aggregator

    aggregator = Aggregator(start_ns=time.time_ns())
    specs = {m: make_spec(m, float) for m in ("research_attention_density", "signed_error")}
    resource = Resource({"run.id": run_id, "rank": rank, "world.size": 2,
                         "service.name": "otel-sparse",
                         "service.instance.id": f"{run_id}-{rank}"})

    def record(metric: str, value: float) -> None:
        aggregator.record(f"sparse_attention.{metric}", specs[metric],
                          (("head", 0), ("layer", 0)), value)

    def snapshot() -> object:
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=resource, schema_url="",
            scope_metrics=[ScopeMetrics(scope=InstrumentationScope("otel_sparse"),
                                        metrics=aggregator.collect(time.time_ns()),
                                        schema_url="")])])

    return record, snapshot


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_delayed_duplicated_exports_and_signed_sums(
    aggregated_path_factory: Callable[..., AggregatedPath], protocol: str,
) -> None:
    """An older export after a newer one and an export sent twice change nothing; a sum that
    goes down (negative values) stays per rank when listed and sums exactly at query time."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    path = aggregated_path_factory(
        vmagent_env={"OTEL_SPARSE_AGGR_SIGNED_SUMS": "sparse_attention_signed_error_sum"},
        protocol=protocol)
    prom, vmagent, gateway = path.prom, path.vmagent, path.gateway
    exporter = OTLPMetricExporter(endpoint=gateway.grpc_endpoint, insecure=True)
    run_id = f"agg-d-{uuid.uuid4().hex[:8]}"
    run = f'run_id="{run_id}"'
    record0, snapshot0 = _sender(gateway.grpc_endpoint, run_id, 0)
    record1, snapshot1 = _sender(gateway.grpc_endpoint, run_id, 1)
    for v in (0.25, 0.5, 0.75, 1.0):
        record0("research_attention_density", v)
    record0("signed_error", 2.0)
    first = snapshot0()
    time.sleep(0.05)
    for v in (0.125, 0.125, 0.125, 0.125):
        record0("research_attention_density", v)
    record0("signed_error", -5.0)  # the cumulative sum goes from 2 down to -3
    second = snapshot0()
    record1("research_attention_density", 0.5)
    record1("signed_error", -1.5)
    other = snapshot1()
    procs = [vmagent.process, gateway.process]
    try:
        for data in (first, other):
            assert exporter.export(data).name == "SUCCESS"
        prom.wait_for_query(f"sparse_attention_research_attention_density_count{{{run}}}",
                            lambda r: [v for _, v in r] == [5.0], timeout=SETTLE_S, procs=procs)
        for data in (second, first, second):  # then a delayed older one, then a duplicate
            assert exporter.export(data).name == "SUCCESS"
            time.sleep(1.5)  # past one aggregation interval each
        want = {"sparse_attention_research_attention_density_count": 9.0,
                "sparse_attention_research_attention_density_sum": 3.5,
                "sparse_attention_signed_error_count": 3.0}
        for name, value in want.items():
            got = prom.wait_for_query(f"{name}{{{run}}}", lambda r, v=value: [x for _, x in r]
                                      == [v], timeout=SETTLE_S, procs=procs)
            assert "rank" not in got[0][0], name
        time.sleep(3)
        for name, value in want.items():
            assert [x for _, x in prom.query(f"{name}{{{run}}}")] == [value], name
        signed = prom.wait_for_query(
            f"sparse_attention_signed_error_sum{{{run}}}",
            lambda r: {s["rank"]: v for s, v in r} == {"0": -3.0, "1": -1.5},
            timeout=SETTLE_S, procs=procs)
        assert len(signed) == 2  # per rank
        total = prom.query(f"sum by (layer, head) (sparse_attention_signed_error_sum{{{run}}})")
        assert [v for _, v in total] == [-4.5]
    finally:
        exporter.shutdown()


def test_raw_per_rank_series_opt_in(
    aggregated_path_factory: Callable[..., AggregatedPath],
) -> None:
    """keep_input: the aggregated series and the raw per-rank ones, both (debugging)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    path = aggregated_path_factory(keep_input=True)
    prom, vmagent, gateway = path.prom, path.vmagent, path.gateway
    exporter = OTLPMetricExporter(endpoint=gateway.grpc_endpoint, insecure=True)
    run_id = f"agg-k-{uuid.uuid4().hex[:8]}"
    try:
        for rank in (0, 1):
            record, snapshot = _sender(gateway.grpc_endpoint, run_id, rank)
            record("research_attention_density", 0.5 * (rank + 1))
            assert exporter.export(snapshot()).name == "SUCCESS"
        got = prom.wait_for_query(
            f'sparse_attention_research_attention_density_count{{run_id="{run_id}"}}',
            lambda r: sorted(s.get("rank", "all") for s, _ in r) == ["0", "1", "all"],
            timeout=SETTLE_S, procs=[vmagent.process, gateway.process])
        assert {s.get("rank", "all"): v for s, v in got} == {"0": 1.0, "1": 1.0, "all": 2.0}
    finally:
        exporter.shutdown()


def test_shipped_config_validates(vmagent_bin: Path, tmp_path: Path) -> None:
    """vmagent -dryRun accepts aggregation.yaml with its placeholders set, refuses it unset."""
    import os
    import subprocess

    from conftest import AGGREGATION_CONFIG, AGGREGATION_ENV, VMAGENT_OTLP_FLAGS

    # with the OTLP intake's flags (otlp-to-vmagent.yaml): -dryRun checks the relabel file too
    args = [str(vmagent_bin), "-dryRun", "-remoteWrite.url=http://127.0.0.1:9/api/v1/write",
            f"-remoteWrite.streamAggr.config={AGGREGATION_CONFIG}",
            f"-remoteWrite.tmpDataPath={tmp_path}", *VMAGENT_OTLP_FLAGS]
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_SPARSE_AGGR_")}
    ok = subprocess.run(args, env={**base, **AGGREGATION_ENV}, capture_output=True, text=True,
                        check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    # the node level of the two-level layout (docs/cluster.md, "Two-level aggregation")
    node = {**AGGREGATION_ENV, "OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW": "2m",
            "OTEL_SPARSE_AGGR_NODE": "gpu-node-017@1765000000"}
    ok = subprocess.run(args, env={**base, **node}, capture_output=True, text=True,
                        check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
    unset = subprocess.run(args, env=base, capture_output=True, text=True, check=False,
                           timeout=60)
    # an unset %{VAR} stays in the text, which is then no YAML: vmagent refuses to start
    assert unset.returncode != 0 and "aggregation.yaml" in unset.stderr
