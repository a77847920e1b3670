"""Every Grafana panel's PromQL, and the recording rules, against data from the real pipeline.

The pipeline is the one docker/docker-compose.yml runs:

    2 rank processes -> agent (agent.yaml) -> gateway (gateway.yaml) --remote write--> Prometheus
                                                                 Prometheus scrapes every collector's
                                                                 own telemetry, loads recording.yml

The ranks log two histogram metrics over 4 layers x 4 heads in two phases, plus a fifth
layer past ``OTEL_SPARSE_MAX_SERIES=16`` (the overflow series), NaN values (dropped, reason
``non_finite``) and an ``otlp_file`` exporter whose path cannot be created (export
failures). Two more agents make the collector panels' failure series exist: one forwards
to a collector that has no metrics pipeline (the gateway answers Unimplemented: a permanent
error, ``otelcol_exporter_send_failed_metric_points``), one has a queue of 1 and a gateway
that is not there (``otelcol_exporter_enqueue_failed_metric_points``). Each gets its own
sender, whose data never reaches Prometheus.

Every panel query must return data; means, counts and other known values must be exact.
The whole check runs twice: with explicit-bucket histograms (``_bucket``/``_sum``/``_count``
series) and with exponential ones (``OTEL_SPARSE_HISTOGRAM=exponential``, Prometheus with
``--enable-feature=native-histograms``: one native-histogram series each). The same
dashboards and rules must give the same exact answers for both.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from _procs import ManagedProcess, Sample, free_port
from _ranks import METRICS, RankGroup, expected_totals
from conftest import REPO_ROOT, Collector, Prometheus
from dashboards import panel_queries

from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

pytestmark = pytest.mark.integration

DASHBOARDS = sorted((REPO_ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
RECORDING = REPO_ROOT / "docker" / "prometheus" / "rules" / "recording.yml"
PROMS = tuple(f"sparse_attention_{m}" for m in METRICS)
LAYERS, HEADS, STEPS, PHASES, RANKS = 4, 4, 3, 2, 2
EXTRA_LAYERS, NON_FINITE = 1, 3
SETTLE_S = 120.0

# A collector that takes OTLP/gRPC for traces only: a metrics export gets Unimplemented.
TRACES_ONLY_CONFIG = """\
extensions:
  health_check:
    endpoint: 127.0.0.1:${env:OTEL_SPARSE_HEALTH_PORT}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:${env:OTEL_SPARSE_OTLP_GRPC_PORT}
exporters:
  debug: {}
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [debug]
  telemetry:
    metrics:
      level: none
"""

Keyed = dict[tuple[str, ...], float]
KINDS = ("explicit", "exponential")


def count_of(prom_name: str, selector: str) -> str:
    """The histogram count of ``prom_name`` whichever kind it is stored as."""
    return (f"({prom_name}_count{{{selector}}} or histogram_count({prom_name}{{{selector}}}))")


def keyed(samples: list[Sample], labels: tuple[str, ...]) -> Keyed:
    """{label values: value} of a query result."""
    return {tuple(s.get(k, "") for k in labels): v for s, v in samples}


def cells(totals: dict[tuple[int, int], tuple[int, float]], mean: bool = False) -> Keyed:
    """Expected per-(layer, head) values as query results key them."""
    return {(str(layer), str(h)): (s / c if mean else float(c))
            for (layer, h), (c, s) in totals.items()}


class Pipeline:
    """The processes of this test and what the ranks logged."""

    def __init__(self, prom: Prometheus, gateway: Collector, agents: dict[str, Collector],
                 group: RankGroup, kind: str) -> None:
        self.kind = kind
        self.prom = prom
        self.gateway = gateway
        self.agents = agents
        self.group = group

    @property
    def run_id(self) -> str:
        return self.group.run_id

    @property
    def procs(self) -> list[ManagedProcess]:
        return [self.gateway.process, *(a.process for a in self.agents.values())]

    def totals(self, metric: int = 0, phases: int = PHASES) -> dict:
        plan = {r: range(1, phases + 1) for r in range(RANKS)}
        return expected_totals(plan, STEPS, LAYERS, HEADS, metric)

    def wait(self, promql: str, predicate: Callable[[list[Sample]], bool] = bool
             ) -> list[Sample]:
        return self.prom.wait_for_query(promql, predicate, timeout=SETTLE_S, procs=self.procs)


def reload_prometheus(prom: Prometheus, jobs: dict[str, list[str]], rule_files: list[Path]
                      ) -> None:
    """Rewrite the config (scrape jobs, rule files) and reload it with SIGHUP."""
    config: dict[str, Any] = yaml.safe_load(prom.config_path.read_text())
    config["rule_files"] = [str(p) for p in rule_files]
    config["scrape_configs"] = [
        {"job_name": job, "honor_labels": True, "static_configs": [{"targets": hosts}]}
        for job, hosts in jobs.items()
    ]
    prom.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert prom.process.pid is not None
    os.kill(prom.process.pid, signal.SIGHUP)

    def loaded(_: list[Sample]) -> bool:
        rules = requests.get(f"{prom.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        targets = requests.get(f"{prom.url}/api/v1/targets", timeout=5).json()["data"]
        scraped = {t["labels"]["instance"] for t in targets["activeTargets"]}
        return bool(rules) and scraped == {h for hosts in jobs.values() for h in hosts}

    prom.wait_for_query("vector(1)", loaded, timeout=60)


@pytest.fixture(params=KINDS)
def pipeline(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Pipeline]:
    """The running pipeline, both phases logged and visible; ranks still exporting."""
    kind: str = request.param
    prom = prometheus_factory(remote_write_receiver=True, name="prom",
                              native_histograms=kind == "exponential")
    gateway = collector_factory(
        "gateway.yaml", env={"OTEL_SPARSE_REMOTE_WRITE_URL": prom.remote_write_url},
        name="gateway",
    )
    traces_only = tmp_path / "traces-only.yaml"
    traces_only.write_text(TRACES_ONLY_CONFIG)
    no_metrics = collector_factory(traces_only, name="traces-only")
    agents = {
        "agent": collector_factory(
            "agent.yaml", env={"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint},
            name="agent"),
        "agent-unimplemented": collector_factory(
            "agent.yaml", env={"OTEL_SPARSE_GATEWAY_ENDPOINT": no_metrics.grpc_endpoint},
            name="agent-unimplemented"),
        "agent-queue-full": collector_factory(
            "agent.yaml", env={"OTEL_SPARSE_GATEWAY_ENDPOINT": f"127.0.0.1:{free_port()}",
                               "OTEL_SPARSE_AGENT_QUEUE_SIZE": "1"},
            name="agent-queue-full"),
    }
    telemetry = [c.telemetry_target for c in (gateway, *agents.values())]
    reload_prometheus(prom, {"otel-collector": telemetry}, [RECORDING])

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the otlp_file exporter wants a folder\n")
    common = {"OTEL_SPARSE_EXPORT_INTERVAL": "300", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
              "OTEL_SPARSE_HISTOGRAM": kind}
    group = RankGroup(tmp_path / "job", f"dash-{uuid.uuid4().hex[:8]}", RANKS)
    side = [RankGroup(tmp_path / name, f"side-{uuid.uuid4().hex[:8]}", 1)
            for name in ("agent-unimplemented", "agent-queue-full")]
    try:
        for rank in range(RANKS):
            group.start(rank, {
                **common,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{agents['agent'].grpc_endpoint}",
                "OTEL_SPARSE_EXPORTERS": "otlp,otlp_file",
                "OTEL_SPARSE_OTLP_FILE": str(blocker / "otlp" / "metrics.jsonl"),
                "OTEL_SPARSE_MAX_SERIES": str(LAYERS * HEADS),
            }, ["--phases", str(PHASES), "--steps", str(STEPS), "--layers", str(LAYERS),
                "--heads", str(HEADS), "--metrics", "2", "--extra-layers", str(EXTRA_LAYERS),
                "--non-finite", str(NON_FINITE)])
        for sender, name in zip(side, ("agent-unimplemented", "agent-queue-full"), strict=True):
            sender.start(0, {**common, "OTEL_SPARSE_EXPORTERS": "otlp",
                             "OTEL_EXPORTER_OTLP_ENDPOINT":
                                 f"http://{agents[name].grpc_endpoint}"})
        for g in (group, *side):
            g.wait_ready()
            g.go(1)
        state = Pipeline(prom, gateway, agents, group, kind)
        # Phase 1 visible before phase 2 starts: every rate() window then sees an increase.
        selector = f'run_id="{state.run_id}",layer!=""'
        count0 = f"sum by (layer, head) ({count_of(PROMS[0], selector)})"
        state.wait(count0, lambda r: keyed(r, ("layer", "head")) == cells(state.totals(0, 1)))
        group.go(2)
        group.wait_done(2)
        state.wait(count0, lambda r: keyed(r, ("layer", "head")) == cells(state.totals(0)))
        yield state
    finally:
        for g in (group, *side):
            g.kill_all()


def _finite(samples: list[Sample]) -> bool:
    return bool(samples) and all(math.isfinite(v) for _, v in samples)


def expected_panels(state: Pipeline) -> dict[str, tuple[tuple[str, ...], Keyed]]:
    """Panel title -> (labels to key by, exact result) for panels whose value is known."""
    density_mean = ("layer", "head"), cells(state.totals(0), mean=True)
    n_buckets = len(DEFAULT_FLOAT_BOUNDARIES) + 1
    overflow: Keyed = {}
    for prom_name in PROMS:
        for rank in range(RANKS):
            if state.kind == "exponential":  # one native-histogram series
                overflow[(prom_name, str(rank))] = 1.0
                continue
            overflow[(f"{prom_name}_count", str(rank))] = 1.0
            overflow[(f"{prom_name}_sum", str(rank))] = 1.0
            overflow[(f"{prom_name}_bucket", str(rank))] = float(n_buckets)
    return {
        "Mean attention density, layer \u00d7 head (whole run)": density_mean,
        "$metric: mean, layer \u00d7 head (whole run)": density_mean,
        "Mean attention output error, layer \u00d7 head (whole run)":
            (("layer", "head"), cells(state.totals(1), mean=True)),
        "Ranks reporting": (("run_id", "world_size"), {(state.run_id, str(RANKS)): 2.0}),
        'Series with otel_metric_overflow="true"': (("__name__", "rank"), overflow),
    }


def expected_label_sets(state: Pipeline) -> dict[str, tuple[tuple[str, ...], set]]:
    """Panel title -> (labels, the exact set of label values its result has)."""
    ranks = {(str(r),) for r in range(RANKS)}
    instances = {(t.telemetry_target,) for t in (state.gateway, *state.agents.values())}
    return {
        "Attention density by layer": (("layer",), {(str(layer),) for layer in range(LAYERS)}),
        "Attention density by rank": (("rank",), ranks),
        "Events logged per second by rank": (("rank",), ranks),
        "Events logged per second by metric": (("metric",), {(m,) for m in METRICS}),
        "Events dropped per second by reason":
            (("reason",), {("non_finite",), ("cardinality_overflow",)}),
        "Export failures by exporter and rank":
            (("exporter", "rank"), {("otlp_file", str(r)) for r in range(RANKS)}),
        "Cardinality overflow: events folded into the overflow series":
            (("metric", "rank"), {(m, str(r)) for m in METRICS for r in range(RANKS)}),
        "Collector memory (RSS)": (("instance",), instances),
    }


def test_dashboards_and_rules_on_the_live_pipeline(pipeline: Pipeline) -> None:
    """One pipeline, every check: panels, recording rules, raw counters, variables."""
    check_every_panel_query(pipeline)
    check_recording_rules(pipeline)
    check_library_counters(pipeline)
    check_dashboard_variables(pipeline)


def check_every_panel_query(state: Pipeline) -> None:
    """Run each dashboard's every query: data everywhere, exact where the value is known."""
    # The failure series exist only after a failure: wait for them before the panels.
    unimplemented = state.agents["agent-unimplemented"].telemetry_target
    queue_full = state.agents["agent-queue-full"].telemetry_target
    state.wait(f'otelcol_exporter_send_failed_metric_points{{instance="{unimplemented}"}} > 0')
    state.wait(f'otelcol_exporter_enqueue_failed_metric_points{{instance="{queue_full}"}} > 0')
    exact = expected_panels(state)
    label_sets = expected_label_sets(state)
    seen_titles = set()
    assert len(DASHBOARDS) >= 2
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        queries = panel_queries(dashboard, {"run_id": state.run_id})
        assert queries, path
        for title, expr in queries:
            seen_titles.add(title)
            where = f"{path.name}: {title!r}: {expr}"
            if title in exact:
                labels, want = exact[title]
                got = state.wait(expr, lambda r, lb=labels, w=want: keyed(r, lb) == w)
                assert keyed(got, labels) == want, where
                continue
            got = state.wait(expr, _finite)
            assert got, where
            if title in label_sets:
                labels, values = label_sets[title]
                got = state.wait(expr, lambda r, lb=labels, v=values: set(keyed(r, lb)) == v)
            if "density" in expr and "rate(" in expr and "/" in expr:
                assert all(0 <= v <= 1 for _, v in got), where  # a mean of values in [0, 1]
    assert set(exact) <= seen_titles
    assert set(label_sets) <= seen_titles


def check_recording_rules(state: Pipeline) -> None:
    """recording.yml, loaded into the same Prometheus: cluster-wide series are exact."""
    run = f'{{run_id="{state.run_id}"}}'
    for m, metric in enumerate(METRICS):
        totals = state.totals(m)
        sums = {(str(layer), str(h)): s for (layer, h), (_, s) in totals.items()}
        for rule, want in (
            (f"sparse_attention:{metric}_count:sum_by_layer_head", cells(totals)),
            (f"sparse_attention:{metric}_sum:sum_by_layer_head", sums),
            (f"sparse_attention:{metric}:mean_by_layer_head", cells(totals, mean=True)),
        ):
            got = state.wait(rule + run, lambda r, w=want: keyed(r, ("layer", "head")) == w)
            assert keyed(got, ("layer", "head")) == want, rule
    layers = {(str(layer),) for layer in range(LAYERS)}
    for rule in ("sparse_attention:research_attention_density:mean_rate5m_by_layer",
                 "sparse_attention:research_attention_output_error:mean_rate5m_by_layer",
                 "sparse_attention:research_attention_output_error:p50_rate5m_by_layer",
                 "sparse_attention:research_attention_output_error:p99_rate5m_by_layer"):
        got = state.wait(rule + run, lambda r: set(keyed(r, ("layer",))) == layers
                         and _finite(r))
        assert all(0 <= v <= 1 for _, v in got), rule
    state.wait("otel_sparse:events_logged:rate5m_by_rank" + run,
               lambda r: set(keyed(r, ("rank",))) == {(str(r),) for r in range(RANKS)})
    state.wait("otel_sparse:events_dropped:rate5m_by_reason" + run,
               lambda r: set(keyed(r, ("reason",))) == {("non_finite",),
                                                         ("cardinality_overflow",)})


def check_library_counters(state: Pipeline) -> None:
    """The raw counters behind the pipeline dashboard: logged, dropped, overflow points."""
    run = f'run_id="{state.run_id}"'
    per_metric = (LAYERS + EXTRA_LAYERS) * HEADS * STEPS * PHASES
    logged = {(m, str(r)): float(per_metric + (NON_FINITE * PHASES if i == 0 else 0))
              for i, m in enumerate(METRICS) for r in range(RANKS)}
    state.wait(f"otel_sparse_events_logged_total{{{run}}}",
               lambda r: keyed(r, ("metric", "rank")) == logged)
    state.wait(f'otel_sparse_events_dropped_total{{{run},reason="non_finite"}}',
               lambda r: keyed(r, ("metric", "rank")) ==
               {(METRICS[0], str(r)): float(NON_FINITE * PHASES) for r in range(RANKS)})
    folded = EXTRA_LAYERS * HEADS * STEPS * PHASES
    for prom_name in PROMS:
        state.wait(count_of(prom_name, f'{run},otel_metric_overflow="true"'),
                   lambda r: keyed(r, ("rank",)) == {(str(r),): float(folded)
                                                     for r in range(RANKS)})
    failures = state.wait(f"otel_sparse_export_failures_total{{{run}}}")
    assert {(s["exporter"], s["rank"]) for s, _ in failures} == {
        ("otlp_file", str(r)) for r in range(RANKS)}
    assert all(v >= 1 for _, v in failures)


def test_overflow_panel_counts_every_folded_event(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    """The panel "events folded into the overflow series" (and the alert on it) equals
    what the overflow series itself counted."""
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    group = RankGroup(tmp_path / "job", f"ovf-{uuid.uuid4().hex[:8]}", 1)
    try:
        group.start(0, {"OTEL_SPARSE_EXPORT_INTERVAL": "300", "OTEL_SPARSE_EXPORTERS": "otlp",
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc_endpoint}",
                        "OTEL_SPARSE_MAX_SERIES": str(LAYERS * HEADS)},
                    ["--steps", str(STEPS), "--extra-layers", "1"])
        group.wait_ready()
        group.go(1)
        group.wait_done(1)
        run = f'run_id="{group.run_id}"'
        procs = [collector.process]
        folded = prom.wait_for_query(
            f'{PROMS[0]}_count{{{run},otel_metric_overflow="true"}}',
            lambda r: keyed(r, ()) == {(): float(HEADS * STEPS)}, procs=procs)
        counted = prom.wait_for_query(
            f'otel_sparse_events_dropped_total{{{run},reason="cardinality_overflow"}}',
            procs=procs)
        assert keyed(counted, ()) == keyed(folded, ())
    finally:
        group.kill_all()


def check_dashboard_variables(state: Pipeline) -> None:
    """Each template variable's label_values()/metrics() query finds this run's values."""
    want = {
        "run_id": {state.run_id},
        "rank": {str(r) for r in range(RANKS)},
        "layer": {str(layer) for layer in range(LAYERS)},
        "metric": set(METRICS),
    }
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            definition = var["definition"].replace("$run_id", state.run_id)
            values = _variable_values(state.prom, definition)
            regex = var.get("regex", "")
            if regex:  # Grafana's /^(.+)_count$/ style capture
                pattern = re.compile(regex.strip("/"))
                values = {m.group(1) for v in values if (m := pattern.match(v))}
            name = var["name"]
            if name == "metric" and definition.startswith("metrics("):
                assert set(PROMS) <= values, (path.name, name, values)
            else:
                assert want[name] <= values, (path.name, name, values)


def _variable_values(prom: Prometheus, definition: str) -> set[str]:
    """Evaluate Grafana's label_values(selector, label) or metrics(regex) as Grafana does."""
    if definition.startswith("metrics("):
        regex = definition[len("metrics("):-1]
        names = requests.get(f"{prom.url}/api/v1/label/__name__/values", timeout=5).json()
        return {n for n in names["data"] if re.fullmatch(regex, n)}
    assert definition.startswith("label_values("), definition
    selector, label = definition[len("label_values("):-1].rsplit(",", 1)
    body = requests.get(f"{prom.url}/api/v1/series", params={"match[]": selector.strip()},
                        timeout=5).json()
    return {s[label.strip()] for s in body["data"] if label.strip() in s}
