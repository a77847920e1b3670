"""The two-level (128-node) layout at a small size: per-tier CPU, exactness, series, delay.

    python bench/bench_two_level.py --ranks 16 --nodes 2 --layers 8 --heads 8
    python bench/bench_two_level.py ... --compare   # also the one-level pipeline, same run

Pipeline (docs/cluster.md, "Two-level aggregation"): per node, simulated ranks
(``bench_cluster.py --sender``: real OTLP senders, many per process) -> a collector
(gateway.yaml + remote-write-only.yaml) -> a node vmagent (aggregation.yaml, node level);
then a central vmagent (aggregation.yaml, central level) -> Prometheus 2.42. Flush intervals
are 1 s at both levels. ``--compare`` first runs ``bench_cluster.run`` (agents -> gateway ->
vmagent) with the same ranks, model and rounds, so the two layouts' figures come from one
invocation on the same (noisy) machine: compare them as ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_cluster as bc

NODE_WINDOW_S = 5
"""The node vmagents' first-sample window; the senders start after it (docs/cluster.md)."""


@dataclass
class TwoLevelResult:
    """One two-level run: what docs/cluster.md tabulates."""

    ranks: int
    nodes: int
    layers: int
    heads: int
    metrics: int
    rounds: int
    histogram_series: int
    per_rank_series: int
    exact: bool
    points_sent: int
    delay_s: float
    tiers: dict[str, bc.Tier] = field(default_factory=dict)


def run(ranks: int, nodes: int, layers: int, heads: int, *, metrics: int = 2,
        rounds: int = 3, steps: int = 2, interval_s: float = 2.0) -> TwoLevelResult:
    """Start the two-level pipeline, play ``ranks`` ranks over ``nodes`` nodes, measure."""
    model = bc.Model(layers, heads, metrics, rounds, steps, interval_s)
    work = Path(tempfile.mkdtemp(prefix="bench-two-level-"))
    otelcol, vmagent = bc._binary("build-collector.sh"), bc._binary("build-vmagent.sh")
    config = bc.REPO / "collector-config"
    pipe = bc.Pipeline(work=work, prom="", vmagent="", gateway={}, agents=[], running={},
                       logs=[])
    try:
        pipe.start_prometheus()
        (central_port,) = bc.free_ports(1)

        def start_vmagent(tier: str, port: int, url: str, env: dict[str, str]) -> str:
            base = f"http://{bc.LOOPBACK}:{port}"
            proc = pipe.start(tier, [
                vmagent, f"-httpListenAddr={bc.LOOPBACK}:{port}", f"-remoteWrite.url={url}",
                f"-remoteWrite.streamAggr.config={config / 'aggregation.yaml'}",
                f"-remoteWrite.tmpDataPath={work / f'{tier}-{port}'}",
                "-remoteWrite.forcePromProto=true"], {**bc.AGGREGATION_ENV, **env})
            bc._wait_ok(f"{base}/health", proc)
            return base

        central = start_vmagent("central-vmagent", central_port,
                                f"{pipe.prom}/api/v1/write", {})
        endpoints = []
        for node in range(nodes):
            (vm_port,) = bc.free_ports(1)
            node_vm = start_vmagent("node-vmagents", vm_port, f"{central}/api/v1/write", {
                "OTEL_SPARSE_AGGR_NODE": f"node-{node}@{time.time_ns()}",
                "OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW": f"{NODE_WINDOW_S}s"})
            ports = dict(zip(bc.PORT_VARS, bc.free_ports(len(bc.PORT_VARS))))
            proc = pipe.start("node-collectors", [
                otelcol, "--config", str(config / "gateway.yaml"),
                "--config", str(config / "remote-write-only.yaml")], {
                "OTEL_SPARSE_LISTEN_HOST": bc.LOOPBACK,
                **{k: str(v) for k, v in ports.items()},
                "OTEL_SPARSE_REMOTE_WRITE_URL": f"{node_vm}/api/v1/write"})
            bc._wait_ok(f"http://{bc.LOOPBACK}:{ports['OTEL_SPARSE_HEALTH_PORT']}/", proc)
            endpoints.append(f"{bc.LOOPBACK}:{ports['OTEL_SPARSE_OTLP_GRPC_PORT']}")
        windows_end = time.monotonic() + NODE_WINDOW_S + 0.5

        run_id = f"bench2-{uuid.uuid4().hex[:8]}"
        go = work / "go"
        senders = bc.start_senders(pipe, ranks, nodes, endpoints, run_id, go, model)
        bc.wait_ready(senders, go)
        time.sleep(max(0.0, windows_end - time.monotonic()))
        meter, _, sent_end = bc.play(pipe, senders, go)
        exact = bc.wait_exact(pipe.prom, run_id, model.expected(ranks), meter)
        delay = time.monotonic() - sent_end
        hist = bc.query(pipe.prom,
                         f'count({{__name__=~"sparse_attention_.+", run_id="{run_id}"}})')
        per_rank = bc.query(pipe.prom, f'count({{rank!="", run_id="{run_id}"}})')
        return TwoLevelResult(
            ranks=ranks, nodes=nodes, layers=layers, heads=heads, metrics=metrics,
            rounds=rounds, histogram_series=int(hist[0][1]) if hist else 0,
            per_rank_series=int(per_rank[0][1]) if per_rank else 0, exact=exact,
            points_sent=ranks * rounds * (metrics * layers * heads + metrics),
            delay_s=round(delay, 2), tiers=meter.tiers)
    finally:
        pipe.stop()


def _line(name: str, points: int, tiers: dict[str, Any]) -> str:
    cells = ", ".join(f"{k} {t.cpu_s:.2f} s ({1e6 * t.cpu_s / points:.0f} µs/point) "
                      f"{t.peak_rss_mib:.0f} MiB" for k, t in tiers.items())
    return f"{name}: {cells}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--metrics", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--compare", action="store_true",
                        help="first run the one-level pipeline (bench_cluster.run) the same way")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    if args.compare:
        one = bc.run(args.ranks, args.layers, args.heads, metrics=args.metrics,
                     rounds=args.rounds, steps=args.steps, procs=args.nodes,
                     agents=args.nodes, interval_s=args.interval)
        out["one_level"] = asdict(one)
    two = run(args.ranks, args.nodes, args.layers, args.heads, metrics=args.metrics,
              rounds=args.rounds, steps=args.steps, interval_s=args.interval)
    out["two_level"] = asdict(two)
    if args.json:
        print(json.dumps(out))
        return
    if args.compare:
        print(f"one level: histogram series {one.histogram_series}, exact {one.exact}, "
              f"delay {one.delay_s} s")
        print(_line("  CPU", one.points_sent, one.tiers))
    print(f"two levels ({two.nodes} nodes): histogram series {two.histogram_series}, "
          f"per-rank {two.per_rank_series}, exact {two.exact}, delay {two.delay_s} s")
    print(_line("  CPU", two.points_sent, two.tiers))


if __name__ == "__main__":
    main()
