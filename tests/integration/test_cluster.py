"""Cluster-wide totals: four torchrun-style rank processes -> collectors -> Prometheus.

Every rank is its own Python process (tests/integration/_ranks.py) with torchrun's
environment (RANK, WORLD_SIZE=4, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, one
TORCHELASTIC_RUN_ID) and exports OTLP/gRPC every 300 ms. Values are multiples of 1/8, so
"exact" means equal.

The gateway (collector-config/gateway.yaml) feeds two Prometheus servers, one per path,
never both into one (docs/collector.md: every series would be stored twice):

* ``scrape``: scrapes the gateway's prometheus exporter (honor_labels);
* ``rw``: receives the gateway's remote write.

The queries are the cluster-wide ones of docs/cluster.md: ``cell_total`` (what the
dashboards and recording rules use) and ``cell_history`` (robust to series that left the
exporter or went stale).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import requests
from _procs import ManagedProcess, Sample
from _ranks import RankGroup, expected_totals
from conftest import Collector, Prometheus

pytestmark = pytest.mark.integration

PROM = "sparse_attention_research_attention_density"
LAYERS, HEADS, STEPS = 4, 4, 3
WORLD = 4
RANK_ENV = {"OTEL_SPARSE_EXPORT_INTERVAL": "300", "OTEL_SPARSE_EXPORTERS": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
SETTLE_S = 90.0
"""Deadline for Prometheus to show a state (polled; a restart adds gRPC reconnect backoff)."""

Totals = dict[tuple[int, int], tuple[int, float]]


def cell_total(run_id: str, suffix: str) -> str:
    """Cluster-wide total per (layer, head): the instant sum over every rank's series."""
    return f'sum by (layer, head) ({PROM}_{suffix}{{run_id="{run_id}"}})'


def cell_history(run_id: str, suffix: str, window: str = "1h") -> str:
    """Same, from each series' last sample in ``window``: holds after a series went stale."""
    return f'sum by (layer, head) (last_over_time({PROM}_{suffix}{{run_id="{run_id}"}}[{window}]))'


def series_per_cell(run_id: str) -> str:
    """How many series (one per rank process) feed each (layer, head)."""
    return f'count by (layer, head) ({PROM}_count{{run_id="{run_id}"}})'


def _cells(samples: list[Sample]) -> dict[tuple[int, int], float]:
    return {(int(labels["layer"]), int(labels["head"])): v for labels, v in samples}


def wait_totals(
    prom: Prometheus, run_id: str, expected: Totals, procs: list[ManagedProcess],
    query: Callable[[str, str], str] = cell_total, series: int | None = WORLD,
) -> None:
    """Poll until ``query`` gives exactly ``expected`` counts and sums per (layer, head)."""
    counts = {cell: float(c) for cell, (c, _) in expected.items()}
    sums = {cell: s for cell, (_, s) in expected.items()}
    prom.wait_for_query(query(run_id, "count"), lambda r: _cells(r) == counts,
                        timeout=SETTLE_S, procs=procs)
    prom.wait_for_query(query(run_id, "sum"), lambda r: _cells(r) == sums,
                        timeout=SETTLE_S, procs=procs)
    if series is not None:
        per_cell = _cells(prom.query(series_per_cell(run_id)))
        assert per_cell == {cell: float(series) for cell in expected}, per_cell


def minus_rank(plan: Mapping[int, range], rank: int) -> dict[int, range]:
    """The plan without one rank."""
    return {r: p for r, p in plan.items() if r != rank}


def exporter_ranks(collector: Collector, run_id: str) -> set[str]:
    """Ranks whose _count series the collector's prometheus exporter serves right now."""
    body = requests.get(f"http://{collector.prometheus_target}/metrics", timeout=5).text
    ranks = set()
    for line in body.splitlines():
        if line.startswith(f"{PROM}_count{{") and f'run_id="{run_id}"' in line:
            ranks.add(line.split('rank="', 1)[1].split('"', 1)[0])
    return ranks


def wait_exporter_ranks(collector: Collector, run_id: str, want: set[str]) -> None:
    """Poll the exporter until it serves exactly the series of ranks ``want``."""
    deadline = time.monotonic() + SETTLE_S
    while (got := exporter_ranks(collector, run_id)) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"exporter serves ranks {got}, expected {want}")
        time.sleep(0.2)


@pytest.fixture
def rank_groups(tmp_path: Path) -> Iterator[Callable[..., RankGroup]]:
    """Make RankGroups under tmp_path; every rank still running is stopped afterwards."""
    groups: list[RankGroup] = []

    def make(name: str = "job", world_size: int = WORLD) -> RankGroup:
        group = RankGroup(tmp_path / name, f"cluster-{uuid.uuid4().hex[:8]}", world_size)
        groups.append(group)
        return group

    yield make
    for group in groups:
        group.kill_all()


def _gateway_with_two_proms(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    env: Mapping[str, str] | None = None,
) -> tuple[Collector, Prometheus, Prometheus]:
    """A gateway whose exporter one Prometheus scrapes and whose remote write another gets."""
    rw = prometheus_factory(remote_write_receiver=True, name="prom-rw")
    gateway = collector_factory(
        "gateway.yaml",
        env={"OTEL_SPARSE_REMOTE_WRITE_URL": rw.remote_write_url, **(env or {})},
        name="gateway",
    )
    scrape = prometheus_factory([gateway.prometheus_target], name="prom-scrape")
    return gateway, scrape, rw


def _endpoint(collector: Collector) -> dict[str, str]:
    return {**RANK_ENV, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.grpc_endpoint}"}


def test_gateway_sums_four_ranks_exactly(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    rank_groups: Callable[..., RankGroup],
) -> None:
    """Topology A: 4 ranks -> gateway; both paths show the exact totals, 4 series per cell."""
    gateway, scrape, rw = _gateway_with_two_proms(collector_factory, prometheus_factory)
    group = rank_groups()
    for rank in range(WORLD):
        group.start(rank, _endpoint(gateway), ["--steps", str(STEPS)])
    group.wait_ready()
    group.go(1)
    group.wait_done(1)
    expected = expected_totals(group.plan(), STEPS, LAYERS, HEADS)
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, [gateway.process])
        labels = [s for s, _ in prom.query(f'{PROM}_count{{run_id="{group.run_id}",'
                                            f'layer="1",head="2"}}')]
        assert sorted(s["rank"] for s in labels) == ["0", "1", "2", "3"]
        assert {s["world_size"] for s in labels} == {"4"}
        assert len({s["instance"] for s in labels}) == WORLD
    assert set(group.stop_all().values()) == {0}
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, [gateway.process])


def test_two_node_agents_to_gateway(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    rank_groups: Callable[..., RankGroup],
) -> None:
    """Topology B: ranks 0,1 -> agent 1 (node-a), ranks 2,3 -> agent 2 (node-b) -> gateway."""
    gateway, scrape, rw = _gateway_with_two_proms(collector_factory, prometheus_factory)
    agent_env = {"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint}
    agents = [collector_factory("agent.yaml", env=agent_env, name=f"agent-{node}")
              for node in ("a", "b")]
    group = rank_groups()
    for rank in range(WORLD):
        node = rank // 2
        env = {**_endpoint(agents[node]),
               "OTEL_RESOURCE_ATTRIBUTES": f"host.name=node-{'ab'[node]}"}
        group.start(rank, env, ["--steps", str(STEPS)], local_rank=rank % 2,
                    local_world_size=2, group_rank=node)
    group.wait_ready()
    group.go(1)
    group.wait_done(1)
    expected = expected_totals(group.plan(), STEPS, LAYERS, HEADS)
    procs = [gateway.process, *(a.process for a in agents)]
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, procs)
        nodes = prom.query(
            f'count by (host_name) (group by (host_name, rank, local_rank) '
            f'({PROM}_count{{run_id="{group.run_id}"}}))'
        )
        assert {s["host_name"]: v for s, v in nodes} == {"node-a": 2.0, "node-b": 2.0}
    assert set(group.stop_all().values()) == {0}


def test_rank_exits_early_totals_stay_exact(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    rank_groups: Callable[..., RankGroup],
) -> None:
    """Rank 3 logs phase 1 and exits; 0-2 log phase 2. Default metric_expiration (15m):
    cell_total (and cell_history) stay exact on both paths, rank 3 included."""
    gateway, scrape, rw = _gateway_with_two_proms(collector_factory, prometheus_factory)
    group = rank_groups()
    for rank in range(WORLD):
        args = ["--steps", str(STEPS), "--phases", "1" if rank == 3 else "2"]
        if rank == 3:
            args.append("--exit-after-last")
        group.start(rank, _endpoint(gateway), args)
    group.wait_ready()
    group.go(1)
    group.wait_done(1)
    assert group.wait_exited(3) == 0
    phase1 = expected_totals({r: [1] for r in range(WORLD)}, STEPS, LAYERS, HEADS)
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, phase1, [gateway.process])
    group.go(2)
    group.wait_done(2)
    expected = expected_totals(group.plan(), STEPS, LAYERS, HEADS)
    assert expected != phase1
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, [gateway.process])
        wait_totals(prom, group.run_id, expected, [gateway.process], query=cell_history)
    # The exited rank's series is still served by the exporter (metric_expiration 15m).
    assert exporter_ranks(gateway, group.run_id) == {"0", "1", "2", "3"}
    assert set(group.stop_all().values()) == {0}
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, [gateway.process])


def test_rank_exit_with_short_expiry_needs_history_query(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    rank_groups: Callable[..., RankGroup],
) -> None:
    """metric_expiration=10s: the exporter forgets rank 3, the scrape path marks its series
    stale and cell_total loses it; cell_history stays exact. Remote write has no staleness
    markers, so there cell_total stays exact for Prometheus' 5 min lookback."""
    gateway, scrape, rw = _gateway_with_two_proms(
        collector_factory, prometheus_factory, env={"OTEL_SPARSE_METRIC_EXPIRATION": "10s"}
    )
    group = rank_groups()
    for rank in range(WORLD):
        args = ["--steps", str(STEPS), "--phases", "1" if rank == 3 else "2"]
        if rank == 3:
            args.append("--exit-after-last")
        group.start(rank, _endpoint(gateway), args)
    group.wait_ready()
    group.go(1)
    group.wait_done(1)
    phase1 = expected_totals({r: [1] for r in range(WORLD)}, STEPS, LAYERS, HEADS)
    # Rank 3 exits right after phase 1 and its series expire 10 s later: on a loaded machine
    # that can come before Prometheus' next scrape, so phase 1 is checked with the history
    # query, which keeps the last sample of every series.
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, phase1, [gateway.process], query=cell_history,
                    series=None)
    assert group.wait_exited(3) == 0
    group.go(2)
    group.wait_done(2)
    plan = group.plan()
    expected = expected_totals(plan, STEPS, LAYERS, HEADS)
    without_3 = expected_totals(minus_rank(plan, 3), STEPS, LAYERS, HEADS)
    procs = [gateway.process]
    # The live ranks keep their series fresh; rank 3's expires from the exporter.
    deadline_query = f'count({PROM}_count{{run_id="{group.run_id}",rank="3"}})'
    scrape.wait_for_query(deadline_query, lambda r: r == [], timeout=SETTLE_S, procs=procs)
    wait_exporter_ranks(gateway, group.run_id, {"0", "1", "2"})
    wait_totals(scrape, group.run_id, without_3, procs, series=3)
    wait_totals(scrape, group.run_id, expected, procs, query=cell_history, series=3)
    wait_totals(rw, group.run_id, expected, procs)
    wait_totals(rw, group.run_id, expected, procs, query=cell_history)
    assert set(group.stop_all().values()) == {0}


@pytest.mark.parametrize("topology", ["direct", "agents"])
def test_gateway_restart_mid_run(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    rank_groups: Callable[..., RankGroup],
    topology: str,
) -> None:
    """The gateway restarts while the ranks log phase 2; cumulative re-exports restore the
    exact totals on both paths, and phase 3 after recovery adds up too."""
    gateway, scrape, rw = _gateway_with_two_proms(collector_factory, prometheus_factory)
    procs = [gateway.process]
    if topology == "agents":
        agent_env = {"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint}
        targets = [collector_factory("agent.yaml", env=agent_env, name=f"agent-{n}")
                   for n in ("a", "b")]
        procs += [t.process for t in targets]
    else:
        targets = [gateway, gateway]
    group = rank_groups()
    for rank in range(WORLD):
        group.start(rank, _endpoint(targets[rank // 2]),
                    ["--steps", "6", "--phases", "3", "--step-sleep", "0.25"],
                    local_rank=rank % 2, local_world_size=2, group_rank=rank // 2)
    group.wait_ready()
    group.go(1)
    group.wait_done(1)
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected_totals({r: [1] for r in range(WORLD)},
                                                        6, LAYERS, HEADS), procs)
    group.go(2)
    gateway.restart()  # while the ranks log phase 2 (about 1.5 s of steps)
    group.wait_done(2)
    two = expected_totals({r: [1, 2] for r in range(WORLD)}, 6, LAYERS, HEADS)
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, two, procs)
    group.go(3)
    group.wait_done(3)
    expected = expected_totals(group.plan(), 6, LAYERS, HEADS)
    for prom in (scrape, rw):
        wait_totals(prom, group.run_id, expected, procs)
        wait_totals(prom, group.run_id, expected, procs, query=cell_history)
    assert set(group.stop_all().values()) == {0}
