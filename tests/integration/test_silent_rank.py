"""The "rank gone silent" alert on the aggregated path, with real processes.

    simulated ranks --OTLP--> agent --> gateway --prometheusremotewrite--> vmagent
        (aggregation.yaml: histograms summed over ranks) --remote write--> Prometheus
        (loads the shipped docker/prometheus/rules/alerts.yml)

vmagent sums the histogram series over ranks before storage and passes the per-rank
``otel_sparse_events_logged_total`` counters (and ``target_info``) through unchanged, with
their own timestamps. ``OtelSparseRankSilent`` reads those counters over 10 minute and
1 hour windows; waiting that long is no test. So the ranks play a simulated clock: every
export is stamped with its simulated time, starting HISTORY_S in the past, one export a
TICK_S (the SDK's default export interval). The pass-through keeps those timestamps (asserted
sample by sample), so Prometheus stores the history of 40 minutes within seconds.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests
import yaml
from _procs import Series, query_matrix
from conftest import PROTOCOLS, REPO_ROOT, AggregatedPath
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_cluster import SimulatedRank

pytestmark = pytest.mark.integration

ALERTS = REPO_ROOT / "docker" / "prometheus" / "rules" / "alerts.yml"
ALERT = "OtelSparseRankSilent"
LAYERS, HEADS, STEPS = 2, 2, 2
TICK_S = 60
# The simulated history. Its start must stay within the alert's 1 h look-back and within
# the 1 h Prometheus' TSDB accepts behind its newest sample (vmagent stamps the aggregated
# series with the flush time: now).
HISTORY_S = 40 * 60
# How long ago the silent rank and the finished run stopped. Must exceed the alert's 10 m
# window plus WINDOW_S, so that the rank is silent at every step of the checked window.
SILENT_FOR_S = 20 * 60
WINDOW_S = 6 * 60
SETTLE_S = 60.0
LOGGED = "otel_sparse_events_logged_total"


@dataclass
class Rank:
    """One simulated rank and the simulated times it exported at."""

    run_id: str
    rank: int
    sim: SimulatedRank
    stop_s: int
    sent: list[int]


@pytest.fixture(params=PROTOCOLS)
def path(aggregated_path_factory: Callable[..., AggregatedPath],
         request: pytest.FixtureRequest) -> AggregatedPath:
    """The aggregation tier behind a node agent, Prometheus without rules yet.

    The out-of-order window spans the whole simulated history: the 40 simulated minutes
    are sent within seconds, and the gateway's two remote-write consumers may deliver two
    batches in either order (in real time they would be a minute apart). Parametrized over
    how the gateway sends to vmagent (conftest.PROTOCOLS).
    """
    return aggregated_path_factory(agent=True, out_of_order_window="1h", protocol=request.param)


@pytest.fixture
def exporter(path: AggregatedPath) -> Iterator[OTLPMetricExporter]:
    out = OTLPMetricExporter(endpoint=path.otlp_endpoint, insecure=True, timeout=30)
    yield out
    out.shutdown()


def play(exporter: OTLPMetricExporter, ranks: list[Rank], start_s: int, end_s: int) -> None:
    """Every TICK_S of simulated time from ``start_s`` to ``end_s``, each rank that has not
    stopped logs one round and exports it stamped with that time, in time order."""
    for tick, now_s in enumerate(range(start_s, end_s + 1, TICK_S)):
        for r in ranks:
            if now_s > r.stop_s:
                continue
            r.sim.log_round(tick, STEPS)
            data = r.sim.collect(now_s * 10**9)
            assert exporter.export(data).name == "SUCCESS"
            r.sent.append(now_s)


def per_rank(series: list[Series]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    return {(s["run_id"], s.get("rank", "")): points for s, points in series}


def test_silent_rank_flagged_after_aggregation(path: AggregatedPath,
                                               exporter: OTLPMetricExporter) -> None:
    """After vmagent, the real alert rule flags exactly the silent rank of a live run.

    Run A (ranks 0-2): rank 1 stopped SILENT_FOR_S ago, ranks 0 and 2 export up to now.
    Run B (ranks 0-1, the same rank numbers): every rank stopped SILENT_FOR_S ago, a run
    that finished as a whole. Checked: the per-rank counters reach Prometheus with their
    source timestamps, every one, while the histograms are summed over ranks (exact
    totals, stamped at vmagent's flush); the alert expression over the last WINDOW_S
    (query_range) returns exactly run A's rank 1 at every step; the rule manager, loading
    alerts.yml as shipped, holds exactly one OtelSparseRankSilent alert, pending, labelled
    run_id A and rank 1. The pending -> firing step after ``for: 5m`` is the rule engine's
    own semantics, covered with synthetic series by promtool
    (docker/prometheus/rules/tests/alerts_test.yml, tests/deploy/test_prometheus_rules.py).
    """
    now = int(time.time())
    start, stopped = now - HISTORY_S, now - SILENT_FOR_S
    run_a, run_b = f"silent-a-{uuid.uuid4().hex[:8]}", f"silent-b-{uuid.uuid4().hex[:8]}"
    ranks = [Rank(run_id, rank, SimulatedRank(run_id, rank, world, f"node-{rank}", LAYERS,
                                              HEADS, metrics=1, start_ns=start * 10**9),
                  stop_s, [])
             for run_id, world, stops in ((run_a, 3, (now, stopped, now)),
                                          (run_b, 2, (stopped, stopped)))
             for rank, stop_s in enumerate(stops)]
    play(exporter, ranks, start, now)
    prom = path.prom

    # 1. Each rank's counter, sample by sample, at the simulated times it was sent.
    per_round = STEPS * LAYERS * HEADS
    want = {(r.run_id, str(r.rank)): [(float(t), float(per_round * (i + 1)))
                                      for i, t in enumerate(r.sent)] for r in ranks}
    assert want[(run_a, "1")][-1][0] <= stopped < want[(run_a, "0")][-1][0]
    counters = f'{LOGGED}{{run_id=~"{run_a}|{run_b}"}}[{HISTORY_S + 600}s]'
    deadline = time.monotonic() + SETTLE_S
    while per_rank(query_matrix(prom.url, counters)) != want and time.monotonic() < deadline:
        for proc in (prom.process, *path.procs):
            assert proc.running, proc.log_tail()
        time.sleep(0.5)
    assert per_rank(query_matrix(prom.url, counters)) == want

    # 2. The histograms: one series per cell and run, the exact total over ranks, stamped
    # with vmagent's flush time, not the ranks' (the aggregated outputs are new samples).
    for run_id in (run_a, run_b):
        count = sum(len(r.sent) for r in ranks if r.run_id == run_id) * STEPS
        got = prom.wait_for_query(
            f'sparse_attention_research_attention_density_count{{run_id="{run_id}"}}',
            lambda res, c=count: len(res) == LAYERS * HEADS and all(v == c for _, v in res),
            timeout=SETTLE_S, procs=path.procs)
        assert all("rank" not in labels for labels, _ in got)
        stamps = query_matrix(prom.url, f'sparse_attention_research_attention_density_count'
                                        f'{{run_id="{run_id}"}}[1h]')
        assert stamps and all(t >= now for _, points in stamps for t, _ in points)

    # 3. The alert expression, as shipped, over the last WINDOW_S: exactly A's rank 1.
    rules = yaml.safe_load(ALERTS.read_text())
    (expr,) = [r["expr"] for g in rules["groups"] for r in g["rules"]
               if r.get("alert") == ALERT]
    end = time.time()
    window = query_matrix(prom.url, expr, start=end - WINDOW_S, end=end, step=30)
    assert [labels for labels, _ in window] == [{"run_id": run_a, "rank": "1"}]
    assert len(window[0][1]) == WINDOW_S // 30 + 1  # every step

    # 4. The rule manager on the real file: one alert, pending, A's rank 1; it stays so.
    prom.load_rules([ALERTS])
    selector = f'ALERTS{{alertname="{ALERT}"}}'
    prom.wait_for_query(selector, timeout=SETTLE_S)
    for _ in range(3):  # a few evaluations (every second): nothing else turns up
        assert [labels for labels, _ in prom.query(selector)] == [{
            "__name__": "ALERTS", "alertname": ALERT, "alertstate": "pending",
            "run_id": run_a, "rank": "1", "severity": "warning"}]
        time.sleep(1.5)
    body = requests.get(f"{prom.url}/api/v1/alerts", timeout=10).json()
    alerts = [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == ALERT]
    assert [(a["state"], a["annotations"]["summary"]) for a in alerts] == [
        ("pending", f"Rank 1 of run {run_a} stopped logging")]
