"""The Grafana dashboards on the aggregated path (gateway -> vmagent -> Prometheus).

vmagent sums the histogram series over ranks and drops their ``rank`` label; the library's
own counters pass through per rank. A panel that splits by rank must then never show a
line without a rank (it would be the cluster-wide value under an empty legend): per-rank
views read the pass-through counters, and the per-rank histogram panels ("Attention density
by rank", "$metric: observations per second by rank") show data only where per-rank
histogram series exist: without the aggregator, or with the raw per-rank opt-in
(``keep_input``). Everything else works as on the per-rank layout.

The raw opt-in stores every rank's histogram series beside the aggregated ones. Every
cluster-wide panel and recording rule must then read what it reads without the opt-in: the
totals exact, not the aggregated plus the raw series (twice the total).
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Callable

import pytest
import yaml
from _procs import Sample, query
from conftest import REPO_ROOT, AggregatedPath
from dashboards import panel_queries
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_cluster import METRICS, SimulatedRank, expected

pytestmark = pytest.mark.integration

DASHBOARDS = {p.name: json.loads(p.read_text()) for p in
              sorted((REPO_ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))}
RANKS, LAYERS, HEADS, STEPS, ROUNDS, TICK_S = 2, 2, 2, 2, 6, 10
PAUSE_S = 1.2  # vmagent flushes every 1 s here (conftest.AGGREGATION_ENV)
RECORDING = REPO_ROOT / "docker" / "prometheus" / "rules" / "recording.yml"
PER_RANK_HISTOGRAM_PANELS = {"Attention density by rank",
                             "$metric: observations per second by rank"}
# Panels fed by per-rank counters that the ranks here do not increase (no drops, no
# failures, no overflow): they answer nothing on either layout.
NO_DATA_HERE = {"Events dropped per second", "Events dropped per second by reason",
                "Export failures by exporter and rank",
                "Cardinality overflow: events folded into the overflow series",
                'Series with otel_metric_overflow="true"'}
COLLECTOR_PANEL = re.compile(r"^(Receivers|Exporters|Exporter queue|Collector memory)")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
# A selector of a classic histogram series: the ones the aggregator sums over ranks.
_CLASSIC_SELECTOR = re.compile(r"(\w+_(?:bucket|count|sum))\{([^}]*)\}")


def groups_by_rank(expr: str) -> bool:
    """Whether a query's outer grouping (its first ``by (...)``) keeps the rank label."""
    first = _BY.search(expr)
    return first is not None and "rank" in [g.strip() for g in first.group(1).split(",")]


def play(endpoint: str, run_id: str) -> None:
    """RANKS ranks export ROUNDS cumulative snapshots, stamped TICK_S apart, the last one now.

    The rounds are sent PAUSE_S apart in real time, longer than vmagent's flush interval,
    so that the aggregated totals rise over several flushes and their rates are not zero."""
    now = int(time.time())
    start = now - (ROUNDS - 1) * TICK_S
    exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True, timeout=30)
    try:
        ranks = [SimulatedRank(run_id, r, RANKS, f"node-{r}", LAYERS, HEADS,
                               start_ns=(start - TICK_S) * 10**9) for r in range(RANKS)]
        for tick in range(ROUNDS):
            for sim in ranks:
                sim.log_round(tick, STEPS)
                data = sim.collect((start + tick * TICK_S) * 10**9)
                assert exporter.export(data).name == "SUCCESS"
            time.sleep(PAUSE_S)
    finally:
        exporter.shutdown()


def ranks_of(result: list[Sample]) -> list[str]:
    return sorted(labels.get("rank", "") for labels, _ in result)


def aggregated_only(expr: str) -> str:
    """The query as it would read a Prometheus that stores only the aggregated series (they
    are the rank-less ones: the aggregator sums ``without: [rank, ...]``)."""
    return _CLASSIC_SELECTOR.sub(r'\1{\2, rank=""}', expr)


def keyed(result: list[Sample]) -> dict[tuple[tuple[str, str], ...], str]:
    """Labels -> value, NaN included (repr: NaN == NaN, and no float rounding)."""
    return {tuple(sorted(labels.items())): repr(value) for labels, value in result}


@pytest.mark.parametrize(("keep_input", "signed_sums", "protocol"), [
    (False, False, "prw"), (True, False, "prw"), (True, True, "prw"),
    (False, False, "otlp"), (True, False, "otlp"),
], ids=["aggregated", "with-raw-opt-in", "with-raw-opt-in-signed-sums",
        "aggregated-otlp", "with-raw-opt-in-otlp"])
def test_panels_on_the_aggregated_path(
    aggregated_path_factory: Callable[..., AggregatedPath], keep_input: bool,
    signed_sums: bool, protocol: str,
) -> None:
    """Every panel of both dashboards and every recording rule: per-rank views show exactly
    the ranks (never a rank-less line); cluster-wide views answer exactly what they answer
    over the aggregated series alone, with or without the raw per-rank opt-in, and lifetime
    counts, sums and means equal the totals logged; per-rank histogram panels answer only
    with the raw opt-in, and then exactly the ranks.

    With ``signed_sums`` every ``_sum`` is left per rank (OTEL_SPARSE_AGGR_SIGNED_SUMS): the
    raw write then stores the same per-rank ``_sum`` series the aggregating write passes
    through (one series each, same labels), and the cluster-wide sums fall back to them;
    lifetime sums and means must still be exact. (No aggregated-only twin there: the
    per-rank ``_sum`` is part of the aggregated layout.)

    ``protocol``: how the gateway sends to vmagent (conftest.PROTOCOLS); "otlp" is
    otlp-to-vmagent.yaml, the same panels and rules with the same answers."""
    env = {"OTEL_SPARSE_AGGR_SIGNED_SUMS": "sparse_attention_.+_sum"} if signed_sums else None
    path = aggregated_path_factory(keep_input=keep_input, vmagent_env=env, protocol=protocol)
    prom = path.prom
    run_id = f"dash-{uuid.uuid4().hex[:8]}"
    play(path.otlp_endpoint, run_id)
    want = [expected(RANKS, ROUNDS, STEPS, LAYERS, HEADS, m) for m in range(len(METRICS))]
    count = f'sparse_attention_{METRICS[0]}_count{{run_id="{run_id}", rank=""}}'
    total = {cell: c for cell, (c, _) in want[0].items()}
    prom.wait_for_query(  # the aggregated series, exact (the last flush is in)
        count, lambda r: {(s["layer"], s["head"]): v for s, v in r} == total,
        timeout=60, procs=path.procs)
    prom.wait_for_query(  # every rank's counter, with two samples for rate()
        f'count_over_time(otel_sparse_events_logged_total{{run_id="{run_id}"}}[1m])',
        lambda r: len(r) == RANKS * len(METRICS) and all(v >= 2 for _, v in r),
        timeout=60, procs=path.procs)
    if keep_input:  # every rank's raw series, with two samples for rate()
        prom.wait_for_query(
            f'count_over_time(sparse_attention_{METRICS[0]}_count'
            f'{{run_id="{run_id}", rank!=""}}[1m])',
            lambda r: len(r) == RANKS * LAYERS * HEADS and all(v >= 2 for _, v in r),
            timeout=60, procs=path.procs)
    if signed_sums:  # no aggregated _sum; each rank's _sum once, from both writes
        sums = f'sparse_attention_{METRICS[0]}_sum{{run_id="{run_id}"}}'
        assert ranks_of(prom.query(sums)) == sorted(str(r) for r in range(RANKS)
                                                    for _ in range(LAYERS * HEADS))
    # One evaluation time for a query and its aggregated-only twin, so that both read the
    # same stored samples: 1.5 s back, past what vmagent (1 s flushes, sent within 0.2 s)
    # may still be writing; the samples waited for above are older than that by then.
    time.sleep(2)
    at = time.time() - 1.5

    ranks = [str(r) for r in range(RANKS)]
    for name, dashboard in DASHBOARDS.items():
        for title, expr in panel_queries(dashboard, {"run_id": run_id}):
            if COLLECTOR_PANEL.match(title):
                continue  # the collectors' own telemetry: not scraped here
            result = query(prom.url, expr, at=at)
            where = f"{name}: {title}: {expr}"
            if title in PER_RANK_HISTOGRAM_PANELS:
                assert ranks_of(result) == (ranks if keep_input else []), where
            elif title in NO_DATA_HERE:
                assert result == [], where
            elif groups_by_rank(expr):
                assert ranks_of(result) == ranks, where
            else:
                assert result, where
                assert all(labels.get("rank", "") == "" for labels, _ in result), where
                if not signed_sums:
                    alone = query(prom.url, aggregated_only(expr), at=at)
                    assert keyed(result) == keyed(alone), where
            if "(whole run)" in title and not title.startswith("$"):
                metric = 0 if "density" in title else 1
                means = {(s["layer"], s["head"]): v for s, v in result}
                assert means == {cell: s / c for cell, (c, s) in want[metric].items()}, where

    # Every recording rule of the cluster-wide views: lifetime counts, sums and means exact;
    # rates and quantiles what the aggregated series alone give.
    rules = yaml.safe_load(RECORDING.read_text())
    recorded = {r["record"]: r["expr"] for g in rules["groups"] for r in g["rules"]
                if r["record"].startswith("sparse_attention:")}
    assert len(recorded) == 10
    for record, expr in recorded.items():
        result = [(s, v) for s, v in query(prom.url, expr, at=at) if s["run_id"] == run_id]
        where = f"{record}: {expr}"
        assert result, where
        if not signed_sums:
            alone = [(s, v) for s, v in query(prom.url, aggregated_only(expr), at=at)
                     if s["run_id"] == run_id]
            assert keyed(result) == keyed(alone), where
        if record.endswith("_by_layer_head"):
            metric = next(m for m, name in enumerate(METRICS) if f":{name}" in record)
            got = {(s["layer"], s["head"]): v for s, v in result}
            pick = {"_count:sum_by_layer_head": lambda c, s: c,
                    "_sum:sum_by_layer_head": lambda c, s: s,
                    ":mean_by_layer_head": lambda c, s: s / c}
            (part,) = [f for suffix, f in pick.items() if record.endswith(suffix)]
            assert got == {cell: part(c, s) for cell, (c, s) in want[metric].items()}, where
