"""Offline, then online: a run written with exporter ``otlp_file`` and no collector is
replayed later, and Prometheus shows what a live run of the same data shows.

The offline run and the live run are the same two rank processes (tests/integration/
_ranks.py, two phases each, two metrics) with different run ids: the offline one writes
``<run dir>/otlp/metrics.jsonl`` (rank 0) and ``otlp/metrics.rank1.pid<pid>.jsonl``, the
live one exports OTLP/gRPC to a collector (single.yaml). Replays go

* (b) through ``otel-sparse replay RUN --endpoint URL --protocol grpc|http/protobuf`` into
  that same collector, and
* (a) through the collector's ``otlpjsonfile`` receiver (``start_at: beginning``), a
  collector reading the run folder itself.

Then, per (layer, head) and per bucket, the replayed run's totals equal the live run's,
and both equal what was logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from _procs import Sample
from _ranks import METRICS, RankGroup, expected_totals
from conftest import Collector, Prometheus

pytestmark = pytest.mark.integration

PROMS = tuple(f"sparse_attention_{m}" for m in METRICS)
LAYERS, HEADS, STEPS, PHASES, RANKS = 3, 4, 3, 2, 2
OTEL_SPARSE_CLI = Path(sys.executable).with_name("otel-sparse")
SETTLE_S = 60.0

# (a): the collector reads the run's OTLP/JSON files and serves them for Prometheus. Ports
# come from the same variables as the shipped configs, so collector_factory can run it.
OTLPJSONFILE_CONFIG = """\
extensions:
  health_check:
    endpoint: 127.0.0.1:${env:OTEL_SPARSE_HEALTH_PORT}
receivers:
  otlpjsonfile:
    include: [%(include)s]
    start_at: beginning   # files already written: from their first line
    max_log_size: 256MiB  # one line is one whole export; the 1 MiB default cuts big ones
exporters:
  prometheus:
    endpoint: 127.0.0.1:${env:OTEL_SPARSE_PROMETHEUS_PORT}
    translation_strategy: UnderscoreEscapingWithSuffixes
    resource_to_telemetry_conversion:
      enabled: true
service:
  extensions: [health_check]
  pipelines:
    metrics:
      receivers: [otlpjsonfile]
      exporters: [prometheus]
  telemetry:
    metrics:
      level: none
"""


def _run(group: RankGroup, env: dict[str, str]) -> None:
    """Both ranks log both phases, then close (final export) and exit."""
    for rank in range(RANKS):
        group.start(rank, env, ["--phases", str(PHASES), "--steps", str(STEPS),
                                "--layers", str(LAYERS), "--heads", str(HEADS),
                                "--metrics", "2"])
    group.wait_ready()
    for phase in range(1, PHASES + 1):
        group.go(phase)
        group.wait_done(phase)
    assert set(group.stop_all().values()) == {0}


def offline_run(tmp_path: Path) -> RankGroup:
    """Two ranks with exporter otlp_file only; no collector anywhere."""
    group = RankGroup(tmp_path / "offline", f"offline-{uuid.uuid4().hex[:8]}", RANKS)
    try:
        _run(group, {"OTEL_SPARSE_EXPORTERS": "otlp_file", "OTEL_SPARSE_EXPORT_INTERVAL": "300"})
    finally:
        group.kill_all()
    files = sorted((group.run_dir / "otlp").glob("metrics*.jsonl"))
    assert len(files) == RANKS, files
    assert all(f.stat().st_size for f in files)
    return group


def live_run(tmp_path: Path, collector: Collector) -> RankGroup:
    """The same two ranks, exporting OTLP/gRPC to ``collector`` as they go."""
    group = RankGroup(tmp_path / "live", f"live-{uuid.uuid4().hex[:8]}", RANKS)
    try:
        _run(group, {"OTEL_SPARSE_EXPORTERS": "otlp", "OTEL_SPARSE_EXPORT_INTERVAL": "300",
                     "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                     "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc_endpoint}"})
    finally:
        group.kill_all()
    return group


def _keyed(samples: list[Sample], labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    return {tuple(s.get(k, "") for k in labels): v for s, v in samples}


def run_view(prom: Prometheus, run_id: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Everything a run shows: counts, sums, buckets per cell, library counters."""
    view = {}
    for prom_name in PROMS:
        for suffix, by in (("count", ("layer", "head")), ("sum", ("layer", "head")),
                           ("bucket", ("layer", "head", "le"))):
            q = f'sum by ({", ".join(by)}) ({prom_name}_{suffix}{{run_id="{run_id}"}})'
            view[q.replace(run_id, "RUN")] = _keyed(prom.query(q), by)
    q = f'sum by (metric) (otel_sparse_events_logged_total{{run_id="{run_id}"}})'
    view[q.replace(run_id, "RUN")] = _keyed(prom.query(q), ("metric",))
    q = f'count by (rank) ({PROMS[0]}_count{{run_id="{run_id}"}})'
    view[q.replace(run_id, "RUN")] = _keyed(prom.query(q), ("rank",))
    return view


def wait_logged_totals(prom: Prometheus, run_id: str, procs: list) -> None:
    """Poll until the run's counts and sums per cell are exactly what the ranks logged."""
    plan = {r: range(1, PHASES + 1) for r in range(RANKS)}
    for m, prom_name in enumerate(PROMS):
        expected = expected_totals(plan, STEPS, LAYERS, HEADS, metric=m)
        counts = {(str(layer), str(h)): float(c) for (layer, h), (c, _) in expected.items()}
        sums = {(str(layer), str(h)): s for (layer, h), (_, s) in expected.items()}
        prom.wait_for_query(
            f'sum by (layer, head) ({prom_name}_count{{run_id="{run_id}"}})',
            lambda r, want=counts: _keyed(r, ("layer", "head")) == want,
            timeout=SETTLE_S, procs=procs,
        )
        prom.wait_for_query(
            f'sum by (layer, head) ({prom_name}_sum{{run_id="{run_id}"}})',
            lambda r, want=sums: _keyed(r, ("layer", "head")) == want,
            timeout=SETTLE_S, procs=procs,
        )
    logged = LAYERS * HEADS * STEPS * PHASES * RANKS
    prom.wait_for_query(
        f'sum by (metric) (otel_sparse_events_logged_total{{run_id="{run_id}"}})',
        lambda r: _keyed(r, ("metric",)) == {(m,): float(logged) for m in METRICS},
        timeout=SETTLE_S, procs=procs,
    )


def assert_same_view(prom: Prometheus, live_id: str, replayed_id: str) -> None:
    """The replayed run shows exactly what the live run shows, query by query."""
    live, replayed = run_view(prom, live_id), run_view(prom, replayed_id)
    for query, values in live.items():
        assert values, f"live run has no data for {query}"
        assert replayed[query] == values, query


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_cli_replay_matches_live_run(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
    protocol: str,
) -> None:
    """(b) ``otel-sparse replay RUN --endpoint URL --protocol P`` into a running collector."""
    offline = offline_run(tmp_path)
    collector = collector_factory("single.yaml")
    prom = prometheus_factory([collector.prometheus_target])
    live = live_run(tmp_path, collector)
    wait_logged_totals(prom, live.run_id, [collector.process])

    port = collector.ports["grpc" if protocol == "grpc" else "http"]
    done = subprocess.run(
        [str(OTEL_SPARSE_CLI), "replay", str(offline.run_dir),
         "--endpoint", f"http://127.0.0.1:{port}", "--protocol", protocol],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"replay exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    assert "replayed" in done.stdout and f"{RANKS} file(s)" in done.stdout, done.stdout
    wait_logged_totals(prom, offline.run_id, [collector.process])
    assert_same_view(prom, live.run_id, offline.run_id)


def _receivers(otelcol_bin: Path) -> set[str]:
    done = subprocess.run([str(otelcol_bin), "components"], capture_output=True, text=True,
                          timeout=60, check=True)
    return {c["name"] for c in yaml.safe_load(done.stdout).get("receivers", [])}


def test_otlpjsonfile_receiver_matches_live_run(
    otelcol_bin: Path,
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    tmp_path: Path,
) -> None:
    """(a) A collector whose otlpjsonfile receiver reads the run folder from the beginning."""
    offline = offline_run(tmp_path)
    config = tmp_path / "otlpjsonfile.yaml"
    include = json.dumps(str(offline.run_dir / "otlp" / "metrics*.jsonl"))  # a YAML string
    config.write_text(OTLPJSONFILE_CONFIG % {"include": include})
    assert "otlpjsonfile" in _receivers(otelcol_bin), "collector-config/manifest.yaml lost it"

    live_collector = collector_factory("single.yaml", name="live")
    live = live_run(tmp_path, live_collector)
    reader = collector_factory(config, name="otlpjsonfile")
    prom = prometheus_factory([live_collector.prometheus_target, reader.prometheus_target])
    procs = [live_collector.process, reader.process]
    wait_logged_totals(prom, live.run_id, procs)
    wait_logged_totals(prom, offline.run_id, procs)
    assert_same_view(prom, live.run_id, offline.run_id)
