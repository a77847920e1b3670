"""The larger layouts of docs/cluster.md ("Layouts"), with real processes.

8 nodes (one aggregation level, the gateway without its prometheus exporter)::

    ranks --> agent.yaml (per node) --> gateway.yaml + REMOTE_WRITE_ONLY --> vmagent --> Prometheus

128 nodes (two aggregation levels, no central gateway)::

    ranks --> gateway.yaml + REMOTE_WRITE_ONLY --> vmagent (node: sums its ranks,  --.
              (per node, on loopback)              labels otel_sparse_node)         |
                                                                                    v
                  Prometheus <-- vmagent (central: sums the node totals without otel_sparse_node)

Both vmagent levels run the same collector-config/aggregation.yaml; the node level sets
OTEL_SPARSE_AGGR_NODE and OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW. The tests check:

* the stored cluster-wide count and sum equal the logged totals exactly, for two runs at
  once spread over different numbers of nodes, a rank that exits early included;
* the stored histogram series are metrics x layers x heads x 29 per run whether the run
  spans 1, 2 or 3 nodes; per-rank series (events counters, target_info) arrive for every
  rank and carry no node label; no stored series carries otel_sparse_node;
* a node vmagent restart (its state is in memory): nothing counted twice, nothing lost, an
  exited rank's share included; a whole node tier restart (collector and vmagent) loses
  exactly what that node's ranks logged while it was down (docs/cluster.md, "Two-level
  aggregation"), while their per-rank event counters still count it; a central vmagent
  restart loses exactly the totals of the node vmagents that stopped before it;
* the gateway without the prometheus exporter never opens the exporter's port and gives
  the same exact totals.
"""

from __future__ import annotations

import math
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from _procs import ManagedProcess
from _ranks import METRICS, RankGroup, expected_totals
from conftest import REMOTE_WRITE_ONLY, Collector, Prometheus, Vmagent
from test_aggregation import (
    HEADS,
    LAYERS,
    N_BUCKETS,
    PROMS,
    RANK_ARGS,
    SETTLE_S,
    STEPS,
    cells,
    keyed,
)

pytestmark = pytest.mark.integration

NODE_WINDOW_S = 10
"""OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW of the node vmagents: longer than it takes a live
rank's next sample to reach a restarted node vmagent here (exports every 300 ms)."""
HIST_SERIES = len(PROMS) * LAYERS * HEADS * (N_BUCKETS + 2)
"""Histogram series per run and per rank export: metrics x layers x heads x 29."""
Plan = Mapping[int, Iterable[int]]


@dataclass
class Node:
    """One node's tier: the node collector and its vmagent."""

    name: str
    collector: Collector
    vmagent: Vmagent
    window_start: float = 0.0

    def rank_env(self) -> dict[str, str]:
        return {"OTEL_SPARSE_EXPORTERS": "otlp", "OTEL_SPARSE_EXPORT_INTERVAL": "300",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{self.collector.grpc_endpoint}",
                "OTEL_RESOURCE_ATTRIBUTES": f"host.name={self.name}"}

    def start_vmagent(self) -> None:
        """(Re)start the node vmagent under a new otel_sparse_node value (node@start)."""
        env = self.vmagent.process.env
        assert env is not None
        env["OTEL_SPARSE_AGGR_NODE"] = node_label(self.name)
        self.window_start = time.monotonic()
        self.vmagent.start()

    @property
    def procs(self) -> list[ManagedProcess]:
        return [self.collector.process, self.vmagent.process]


def node_label(name: str) -> str:
    """OTEL_SPARSE_AGGR_NODE of one node vmagent start: the node's name and the start time
    (as the shipped DaemonSet sets it)."""
    return f"{name}@{time.time_ns()}"


def _counter(url: str, name: str) -> float:
    """Sum of one counter's samples on a /metrics page (0 if absent)."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return math.fsum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith(name) and not line.startswith("#"))


def wait_counter(url: str, name: str, at_least: float, procs: Sequence[ManagedProcess],
                 timeout: float = SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while _counter(url, name) < at_least:
        for proc in procs:
            assert proc.running, f"{proc.name} exited:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, f"{name} < {at_least} at {url} after {timeout} s"
        time.sleep(0.2)


def wait_samples_at(node: Node, live_ranks: int) -> None:
    """Wait until the node vmagent got two exports' histogram samples per live rank (after a
    restart: every live rank's baseline is set)."""
    wait_counter(f"{node.vmagent.url}/metrics", "vm_streamaggr_matched_samples_total",
                 2 * live_ranks * HIST_SERIES, node.procs)


def wait_window_over(nodes: Sequence[Node]) -> None:
    """A series whose first sample reaches a node vmagent within its window is a baseline:
    the tests start logging after it (a node vmagent runs long before a job's ranks)."""
    end = max(n.window_start for n in nodes) + NODE_WINDOW_S + 0.5
    time.sleep(max(0.0, end - time.monotonic()))


def wait_exact(prom: Prometheus, run_id: str, plan: Plan, procs: Sequence[ManagedProcess],
               minus: Plan | None = None) -> None:
    """Stored _count and _sum of both metrics == the totals of ``plan`` (less ``minus``),
    one series per (layer, head) without rank, instance or node labels."""
    for metric in range(len(METRICS)):
        totals = expected_totals(plan, STEPS, LAYERS, HEADS, metric)
        lost = expected_totals(minus or {}, STEPS, LAYERS, HEADS, metric)
        for suffix, index in (("_count", 0), ("_sum", 1)):
            want = cells(totals, index)
            for cell, value in cells(lost, index).items():
                want[cell] -= value
            got = prom.wait_for_query(
                f'{PROMS[metric]}{suffix}{{run_id="{run_id}"}}',
                lambda r, w=want: len(r) == len(w) and keyed(r) == w,
                timeout=SETTLE_S, procs=procs)
            assert keyed(got) == want, (suffix, run_id)
            assert all(not {"rank", "instance", "otel_sparse_node"} & set(s) for s, _ in got)


@dataclass
class TwoLevel:
    prom: Prometheus
    central: Vmagent
    nodes: list[Node]

    @property
    def procs(self) -> list[ManagedProcess]:
        return [self.central.process, *(p for n in self.nodes for p in n.procs)]


@pytest.fixture
def two_level(collector_factory: Callable[..., Collector],
              prometheus_factory: Callable[..., Prometheus],
              vmagent_factory: Callable[..., Vmagent]) -> Callable[[int], TwoLevel]:
    def build(n_nodes: int) -> TwoLevel:
        prom = prometheus_factory(remote_write_receiver=True, name="prom",
                                  out_of_order_window="10m")
        central = vmagent_factory(prom.remote_write_url, name="central")
        nodes = []
        for i in range(n_nodes):
            name = f"node-{i}"
            started = time.monotonic()
            vmagent = vmagent_factory(
                central.remote_write_url, name=f"vmagent-{name}",
                env={"OTEL_SPARSE_AGGR_NODE": node_label(name),
                     "OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW": f"{NODE_WINDOW_S}s"})
            collector = collector_factory(
                "gateway.yaml", overlays=[REMOTE_WRITE_ONLY], name=f"collector-{name}",
                env={"OTEL_SPARSE_REMOTE_WRITE_URL": vmagent.remote_write_url,
                     "OTEL_SPARSE_MEMORY_LIMIT_MIB": "512",
                     "OTEL_SPARSE_MEMORY_SPIKE_LIMIT_MIB": "128"})
            nodes.append(Node(name, collector, vmagent, started))
        return TwoLevel(prom, central, nodes)

    return build


def _local(placement: Sequence[int], rank: int) -> tuple[int, int]:
    """(local rank, ranks on the node) of ``rank`` placed as ``placement[rank]``."""
    node = placement[rank]
    return placement[:rank].count(node), placement.count(node)


def start_ranks(group: RankGroup, nodes: Sequence[Node], placement: Sequence[int],
                args: Mapping[int, list[str]]) -> None:
    for rank, node in enumerate(placement):
        local_rank, local_size = _local(placement, rank)
        group.start(rank, nodes[node].rank_env(), RANK_ARGS + args[rank],
                    local_rank=local_rank, local_world_size=local_size, group_rank=node)


def test_two_level_exact_node_independent_series(two_level: Callable[[int], TwoLevel],
                                                 tmp_path: Path) -> None:
    """Run A: 3 ranks on 2 nodes (rank 2 exits after phase 1); run B: 3 ranks on 3 nodes."""
    tier = two_level(3)
    run_a = RankGroup(tmp_path / "a", f"two-a-{uuid.uuid4().hex[:8]}", 3)
    run_b = RankGroup(tmp_path / "b", f"two-b-{uuid.uuid4().hex[:8]}", 3)
    try:
        start_ranks(run_a, tier.nodes, [0, 0, 1],
                    {0: ["--phases", "2"], 1: ["--phases", "2"],
                     2: ["--phases", "1", "--exit-after-last"]})
        start_ranks(run_b, tier.nodes, [0, 1, 2], {r: ["--phases", "2"] for r in range(3)})
        for group in (run_a, run_b):
            group.wait_ready()
        wait_window_over(tier.nodes)
        for group in (run_a, run_b):
            group.go(1)
        for group in (run_a, run_b):
            group.wait_done(1)
        assert run_a.wait_exited(2) == 0
        for group in (run_a, run_b):
            group.go(2)
        for group in (run_a, run_b):
            group.wait_done(2)
        for group in (run_a, run_b):
            wait_exact(tier.prom, group.run_id, group.plan(), tier.procs)
        prom = tier.prom
        per_rank = STEPS * LAYERS * HEADS
        for group in (run_a, run_b):
            run = f'run_id="{group.run_id}"'
            # the same number of histogram series whether the run spans 2 nodes or 3
            stored = prom.query(f'count({{__name__=~"sparse_attention_.+", {run}}})')
            assert stored[0][1] == HIST_SERIES
            inf = prom.query(f'{PROMS[0]}_bucket{{{run},le="+Inf"}}')
            assert keyed(inf) == cells(expected_totals(group.plan(), STEPS, LAYERS, HEADS), 0)
            # per rank, unchanged through both levels: every rank's counters and target_info
            want = {(m, str(r)): float(per_rank * len(phases))
                    for r, phases in group.plan().items() for m in METRICS}
            prom.wait_for_query(
                f"last_over_time(otel_sparse_events_logged_total{{{run}}}[1h])",
                lambda r, w=want: {(s["metric"], s["rank"]): v for s, v in r} == w,
                timeout=SETTLE_S)
            info = prom.query(f"last_over_time(target_info{{{run}}}[1h])")
            assert sorted(s["rank"] for s, _ in info) == [str(r) for r in range(3)]
        assert prom.query('count({otel_sparse_node=~".+"})') == []
    finally:
        for group in (run_a, run_b):
            group.kill_all()


def test_node_vmagent_restart_and_node_restart(two_level: Callable[[int], TwoLevel],
                                               tmp_path: Path) -> None:
    """Node 0 runs ranks 0 and 1 (rank 1 exits after phase 1), node 1 runs rank 2.

    Restarting node 0's vmagent (nothing logged meanwhile) changes no total, rank 1's share
    included. Restarting node 0's whole tier while rank 0 logs phase 3 loses exactly rank 0's
    phase 3 from the aggregated totals; its per-rank event counter still counts it.
    Restarting the central vmagent loses exactly the totals of node vmagents that stopped
    before it."""
    tier = two_level(2)
    node0 = tier.nodes[0]
    group = RankGroup(tmp_path / "job", f"two-r-{uuid.uuid4().hex[:8]}", 3)
    try:
        start_ranks(group, tier.nodes, [0, 0, 1],
                    {0: ["--phases", "4"], 1: ["--phases", "1", "--exit-after-last"],
                     2: ["--phases", "4"]})
        group.wait_ready()
        wait_window_over(tier.nodes)
        group.go(1)
        group.wait_done(1)
        assert group.wait_exited(1) == 0
        wait_exact(tier.prom, group.run_id, {r: [1] for r in range(3)}, tier.procs)

        # 1. node 0's vmagent restarts: each live rank's first sample is its baseline, and
        # the central vmagent counts the new node total (a new series) in full
        node0.vmagent.stop()
        node0.start_vmagent()
        wait_samples_at(node0, live_ranks=1)
        group.go(2)
        group.wait_done(2)
        plan = {0: [1, 2], 1: [1], 2: [1, 2]}
        wait_exact(tier.prom, group.run_id, plan, tier.procs)
        time.sleep(3)  # a few more flushes at both levels: nothing counted twice
        wait_exact(tier.prom, group.run_id, plan, tier.procs)

        # 2. node 0's whole tier goes down while rank 0 logs phase 3
        node0.collector.stop()
        node0.vmagent.stop()
        group.go(3)
        group.wait_done(3)
        node0.collector.start()
        wait_counter(f"http://{node0.collector.telemetry_target}/metrics",
                     "otelcol_receiver_accepted_metric_points", 1, [node0.collector.process])
        node0.start_vmagent()
        wait_samples_at(node0, live_ranks=1)
        group.go(4)
        group.wait_done(4)
        plan = {0: [1, 2, 3, 4], 1: [1], 2: [1, 2, 3, 4]}
        wait_exact(tier.prom, group.run_id, plan, tier.procs, minus={0: [3]})
        per_rank = STEPS * LAYERS * HEADS
        tier.prom.wait_for_query(
            f'otel_sparse_events_logged_total{{run_id="{group.run_id}",rank="0"}}',
            lambda r: sorted(v for _, v in r) == [4.0 * per_rank] * len(METRICS),
            timeout=SETTLE_S)

        # 3. the central vmagent restarts: every node total still sent counts in full again;
        # lost are the totals of node 0's two stopped vmagents (ranks 0 and 1 phase 1, rank 0
        # phase 2): each node vmagent start was a series of its own
        tier.central.restart()
        wait_exact(tier.prom, group.run_id, {0: [4], 2: [1, 2, 3, 4]}, tier.procs)
    finally:
        group.kill_all()


def test_gateway_without_prometheus_exporter(collector_factory: Callable[..., Collector],
                                             prometheus_factory: Callable[..., Prometheus],
                                             vmagent_factory: Callable[..., Vmagent],
                                             tmp_path: Path) -> None:
    """8-node layout: agents -> gateway (remote write only) -> vmagent -> Prometheus."""
    prom = prometheus_factory(remote_write_receiver=True, name="prom",
                              out_of_order_window="10m")
    vmagent = vmagent_factory(prom.remote_write_url, name="vmagent")
    gateway = collector_factory(
        "gateway.yaml", overlays=[REMOTE_WRITE_ONLY], name="gateway",
        env={"OTEL_SPARSE_REMOTE_WRITE_URL": vmagent.remote_write_url})
    agents = [collector_factory("agent.yaml", name=f"agent-{n}",
                                env={"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint})
              for n in ("a", "b")]
    with pytest.raises(ConnectionRefusedError):
        host, port = gateway.prometheus_target.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
    group = RankGroup(tmp_path / "job", f"gw-{uuid.uuid4().hex[:8]}", 3)
    try:
        for rank, agent in enumerate([agents[0], agents[0], agents[1]]):
            env = {"OTEL_SPARSE_EXPORTERS": "otlp", "OTEL_SPARSE_EXPORT_INTERVAL": "300",
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                   "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{agent.grpc_endpoint}"}
            group.start(rank, env, [*RANK_ARGS, "--phases", "1"])
        group.wait_ready()
        group.go(1)
        group.wait_done(1)
        procs = [vmagent.process, gateway.process, *(a.process for a in agents)]
        wait_exact(prom, group.run_id, group.plan(), procs)
        stored = prom.query(f'count({{__name__=~"sparse_attention_.+", run_id="{group.run_id}"}})')
        assert stored[0][1] == HIST_SERIES
        assert gateway.process.running
        with pytest.raises(ConnectionRefusedError):  # still closed with data flowing
            socket.create_connection((host, int(port)), timeout=5).close()
    finally:
        group.kill_all()
