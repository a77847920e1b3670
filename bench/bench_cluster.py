"""A simulated N-rank job through the real cluster pipeline, with the aggregation tier.

Run: .venv/bin/python bench/bench_cluster.py --ranks 64 --layers 4 --heads 4 [--protocol otlp]
     [--json]

    sender processes (N ranks, many per process, each its own OTLP/gRPC exporter and
    resource: rank, service.instance.id, host.name of its "node")
      --> agents (agent.yaml, one per simulated node group) --> gateway (gateway.yaml)
      --prometheusremotewrite (or OTLP with --protocol otlp)--> vmagent (aggregation.yaml)
      --> Prometheus

Each rank sends what the library sends for an L x H model: every export, one cumulative
explicit-bucket histogram per (metric, layer, head) built by otel_sparse's own Aggregator
(``--steps`` values per cell per round, multiples of 1/8 so totals are exact) plus its
``otel_sparse.events.logged`` counter, encoded and sent by the OTel SDK's OTLP exporter.
1024 Python processes would not fit the machine, so ``--procs`` processes play the ranks.

Figures (one JSON object, or a table row): series stored for the run, whether the stored
cluster-wide count and sum equal the logged totals exactly, data points per second the
gateway accepted (its ``otelcol_receiver_accepted_metric_points``) while senders ran, CPU
seconds and peak RSS of each tier (senders, agents, gateway, vmagent, Prometheus), and the
delay from the end of the last export until Prometheus answers the exact totals.

``run()`` is what tests/integration/test_load.py calls at N = 4 and 64 (and 64 over OTLP).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))

from _procs import LOOPBACK, free_ports, query  # noqa: E402  (the integration tests' helpers)

METRICS = ("research_attention_density", "research_attention_output_error")
PORT_VARS = ("OTEL_SPARSE_OTLP_GRPC_PORT", "OTEL_SPARSE_OTLP_HTTP_PORT",
             "OTEL_SPARSE_HEALTH_PORT", "OTEL_SPARSE_PROMETHEUS_PORT",
             "OTEL_SPARSE_TELEMETRY_PORT")
AGGREGATION_ENV = {"OTEL_SPARSE_AGGR_INTERVAL": "1s", "OTEL_SPARSE_AGGR_STALENESS": "10m",
                   "OTEL_SPARSE_AGGR_SIGNED_SUMS": "^$",
                   "OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW": "0s", "OTEL_SPARSE_AGGR_NODE": ""}


def value(rank: int, round_: int, step: int, layer: int, head: int, metric: int) -> float:
    """What rank ``rank`` logs: a multiple of 1/8 in [0, 1] (exact sums)."""
    return ((3 * rank + 5 * round_ + step + 2 * layer + head + 4 * metric) % 9) / 8


def expected(ranks: int, rounds: int, steps: int, layers: int, heads: int, metric: int
             ) -> dict[tuple[str, str], tuple[float, float]]:
    """(count, sum) per (layer, head) over every rank, as Prometheus labels key them."""
    out = {}
    for layer in range(layers):
        for head in range(heads):
            vals = [value(r, k, s, layer, head, metric) for r in range(ranks)
                    for k in range(rounds) for s in range(steps)]
            out[(str(layer), str(head))] = (float(len(vals)), math.fsum(vals))
    return out


def _binary(script: str) -> str:
    done = subprocess.run(["bash", str(REPO / "scripts" / script)], capture_output=True,
                          text=True, check=True, stdin=subprocess.DEVNULL)
    return done.stdout.strip()


def _wait_ok(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _accepted(telemetry: str) -> float:
    """otelcol_receiver_accepted_metric_points of one collector, summed over receivers."""
    text = requests.get(f"http://{telemetry}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("otelcol_receiver_accepted_metric_points"))


@dataclass
class Tier:
    """CPU seconds and peak RSS of one tier's processes."""

    cpu_s: float = 0.0
    peak_rss_mib: float = 0.0


@dataclass
class Result:
    """One simulation: the figures docs/cluster.md tabulates."""

    ranks: int
    layers: int
    heads: int
    metrics: int
    rounds: int
    series_stored: int
    histogram_series: int
    per_rank_series: int
    exact: bool
    points_sent: int
    send_wall_s: float
    points_per_s: float
    delay_s: float
    tiers: dict[str, Tier] = field(default_factory=dict)


def _sample(procs: dict[str, list[Any]], tiers: dict[str, Tier], start: dict[int, float]
            ) -> None:
    for name, group in procs.items():
        tier = tiers.setdefault(name, Tier())
        cpu, rss = 0.0, 0.0
        for p in group:
            try:
                times = p.cpu_times()
                cpu += times.user + times.system - start.get(p.pid, 0.0)
                rss += p.memory_info().rss / 2**20
            except Exception:
                continue
        tier.cpu_s = max(tier.cpu_s, cpu)
        tier.peak_rss_mib = max(tier.peak_rss_mib, rss)


@dataclass
class Pipeline:
    """A running cluster pipeline: Prometheus, vmagent, the gateway and the agents.

    ``start()`` adds a process to a tier (``running``); every process is stopped when the
    ``pipeline()`` context ends. B and C import this to run their own layouts' checks.
    """

    work: Path
    prom: str
    vmagent: str
    gateway: dict[str, int]
    agents: list[dict[str, int]]
    running: dict[str, list[subprocess.Popen[bytes]]]
    logs: list[Any]

    def start(self, tier: str, args: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """Start ``args`` as one more process of ``tier``, its output in ``work``."""
        log = open(self.work / f"{tier}-{len(self.running.get(tier, []))}.log",  # noqa: SIM115
                   "wb")
        self.logs.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
        self.running.setdefault(tier, []).append(proc)
        return proc

    def start_prometheus(self) -> None:
        """Start Prometheus 2.42 as a remote-write receiver in ``work``; ``prom`` is its URL.

        The out-of-order window: a remote-write request can hold a sample older than one
        already stored for its series, and without the window Prometheus refuses the whole
        request (docs/cluster.md, "Prometheus behind the aggregator").
        """
        (port,) = free_ports(1)
        (self.work / "prom.yml").write_text("global: {scrape_interval: 15s}\n"
                                            "storage: {tsdb: {out_of_order_time_window: 10m}}\n")
        self.prom = f"http://{LOOPBACK}:{port}"
        proc = self.start("prometheus", ["/usr/bin/prometheus",
                                         f"--config.file={self.work / 'prom.yml'}",
                                         f"--storage.tsdb.path={self.work / 'tsdb'}",
                                         f"--web.listen-address={LOOPBACK}:{port}",
                                         "--web.enable-remote-write-receiver"])
        _wait_ok(f"{self.prom}/-/ready", proc)

    def telemetry(self, ports: dict[str, int]) -> str:
        """host:port of one collector's own metrics."""
        return f"{LOOPBACK}:{ports['OTEL_SPARSE_TELEMETRY_PORT']}"

    def agent_endpoint(self, index: int) -> str:
        """host:port of agent ``index``'s OTLP/gRPC receiver."""
        return f"{LOOPBACK}:{self.agents[index]['OTEL_SPARSE_OTLP_GRPC_PORT']}"

    def stop(self) -> None:
        """Stop every process (SIGTERM, then SIGKILL after 15 s) and close the logs."""
        for group in self.running.values():
            for p in group:
                if p.poll() is None:
                    p.terminate()
        for group in self.running.values():
            for p in group:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        for log in self.logs:
            log.close()


VMAGENT_OTLP_RELABEL = REPO / "collector-config" / "vmagent-otlp-relabel.yaml"
OTLP_TO_VMAGENT = REPO / "collector-config" / "otlp-to-vmagent.yaml"
"""The gateway overlay that sends OTLP to vmagent instead of remote write."""
PROTOCOLS = ("prw", "otlp")
"""How the gateway feeds vmagent: prometheusremotewrite, or OTLP (OTLP_TO_VMAGENT)."""
VMAGENT_OTLP_FLAGS = ("-opentelemetry.usePrometheusNaming",
                      "-opentelemetry.promoteScopeMetadata=false",
                      f"-remoteWrite.relabelConfig={VMAGENT_OTLP_RELABEL}")
"""vmagent's flags when the gateway sends it OTLP (docs/cluster.md, "OTLP to vmagent");
tests/integration/conftest.py uses these."""

SINKS = ("aggregation", "drop")
"""What the gateway's remote write feeds: ``aggregation`` is vmagent with aggregation.yaml
writing to Prometheus (the shipped aggregated layout); ``drop`` is vmagent parsing every
request and dropping every series by relabelling (the cheapest real remote-write receiver:
it isolates the collector tier's cost from aggregation and storage)."""


@contextmanager
def pipeline(work: Path, agents: int = 2, *, sink: str = "aggregation",
             gateway_configs: Sequence[str] = (), agent_configs: Sequence[str] = (),
             gateway_env: dict[str, str] | None = None,
             agent_env: dict[str, str] | None = None,
             gateway_args: Sequence[str] = (),
             vmagent_otlp: bool = False) -> Iterator[Pipeline]:
    """Start Prometheus, vmagent, the gateway (gateway.yaml) and ``agents`` agents (agent.yaml).

    ``gateway_configs`` / ``agent_configs``: further ``--config`` sources the collector merges
    over the shipped file (``yaml:...`` overlays, e.g. bench_ceiling's pprof overlay);
    ``gateway_args``: further command-line flags of the gateway (``--feature-gates=...``);
    ``vmagent_otlp``: vmagent with VMAGENT_OTLP_FLAGS (the gateway sends it OTLP with
    otlp-to-vmagent.yaml; OTEL_SPARSE_VMAGENT_OTLP_URL is set for it either way).
    """
    if sink not in SINKS:
        raise ValueError(f"sink must be one of {SINKS}, not {sink!r}")
    work.mkdir(parents=True, exist_ok=True)
    otelcol, vmagent = _binary("build-collector.sh"), _binary("build-vmagent.sh")
    p = Pipeline(work=work, prom="", vmagent="", gateway={}, agents=[], running={}, logs=[])

    def collector(config: str, overlays: Sequence[str], extra: dict[str, str], tier: str,
                  flags: Sequence[str] = ()) -> dict[str, int]:
        ports = dict(zip(PORT_VARS, free_ports(len(PORT_VARS))))
        env = {"OTEL_SPARSE_LISTEN_HOST": LOOPBACK, **{k: str(v) for k, v in ports.items()},
               **extra}
        args = [otelcol, "--config", str(REPO / "collector-config" / config)]
        for overlay in overlays:
            args += ["--config", overlay]
        args += flags
        proc = p.start(tier, args, env)
        _wait_ok(f"http://{LOOPBACK}:{ports['OTEL_SPARSE_HEALTH_PORT']}/", proc)
        return ports

    try:
        p.start_prometheus()
        (vm_port,) = free_ports(1)
        vm_args = [vmagent, f"-httpListenAddr={LOOPBACK}:{vm_port}",
                   f"-remoteWrite.url={p.prom}/api/v1/write",
                   f"-remoteWrite.tmpDataPath={work / 'vmagent-data'}",
                   "-remoteWrite.forcePromProto=true"]
        relabel = VMAGENT_OTLP_RELABEL.read_text() if vmagent_otlp else ""
        if vmagent_otlp:
            vm_args += [f for f in VMAGENT_OTLP_FLAGS if not f.startswith("-remoteWrite.relabel")]
        if sink == "aggregation":
            vm_args.append(f"-remoteWrite.streamAggr.config="
                           f"{REPO / 'collector-config' / 'aggregation.yaml'}")
        else:  # after the shipped relabelling (vmagent_otlp), drop everything
            relabel += "\n- action: drop\n  regex: .*\n  source_labels: [__name__]\n"
        if relabel:
            (work / "relabel.yaml").write_text(relabel)
            vm_args.append(f"-remoteWrite.relabelConfig={work / 'relabel.yaml'}")
        p.vmagent = f"http://{LOOPBACK}:{vm_port}"
        proc = p.start("vmagent", vm_args, AGGREGATION_ENV)
        _wait_ok(f"{p.vmagent}/health", proc)
        p.gateway = collector("gateway.yaml", gateway_configs, {
            "OTEL_SPARSE_REMOTE_WRITE_URL": f"{p.vmagent}/api/v1/write",
            "OTEL_SPARSE_VMAGENT_URL": p.vmagent,
            "OTEL_SPARSE_VMAGENT_OTLP_URL": f"{p.vmagent}/opentelemetry/v1/metrics",
            **(gateway_env or {})},
            "gateway", gateway_args)
        p.agents = [collector("agent.yaml", agent_configs, {
            "OTEL_SPARSE_GATEWAY_ENDPOINT": f"{LOOPBACK}:{p.gateway['OTEL_SPARSE_OTLP_GRPC_PORT']}",
            "OTEL_SPARSE_AGENT_QUEUE_SIZE": "10000", **(agent_env or {})}, "agents")
            for _ in range(agents)]
        yield p
    finally:
        p.stop()


class TierMeter:
    """CPU seconds and peak RSS per tier of a pipeline's processes, counted from creation.

    Created once every process runs (senders included), so start-up costs stay out of it.
    """

    def __init__(self, running: dict[str, list[subprocess.Popen[bytes]]]) -> None:
        import psutil

        self._procs = {name: [psutil.Process(p.pid) for p in group]
                       for name, group in running.items()}
        self._start_cpu = {p.pid: sum(p.cpu_times()[:2])
                           for group in self._procs.values() for p in group}
        self.tiers: dict[str, Tier] = {}

    def sample(self) -> None:
        """Update ``tiers`` with what the processes used so far."""
        _sample(self._procs, self.tiers, self._start_cpu)


@dataclass
class Model:
    """What each simulated rank logs: an L x H model, ``rounds`` exports ``interval_s`` apart."""

    layers: int
    heads: int
    metrics: int = 2
    rounds: int = 3
    steps: int = 2
    interval_s: float = 2.0

    def expected(self, ranks: int) -> list[dict[tuple[str, str], tuple[float, float]]]:
        """Per metric, the exact cluster-wide (count, sum) per (layer, head)."""
        return [expected(ranks, self.rounds, self.steps, self.layers, self.heads, m)
                for m in range(self.metrics)]


def start_senders(pipe: Pipeline, ranks: int, procs: int, endpoints: Sequence[str],
                  run_id: str, go: Path, model: Model) -> list[subprocess.Popen[bytes]]:
    """Start ``procs`` sender processes (``--sender``) playing ranks [0, ranks) between them.

    Process i sends to ``endpoints[i % len(endpoints)]`` as node ``node-{i % len(endpoints)}``;
    a process that would get no rank is not started. They wait for the file ``go``.
    """
    per_proc = math.ceil(ranks / procs)
    senders = []
    for i in range(procs):
        first, last = i * per_proc, min(ranks, (i + 1) * per_proc)
        if first >= last:
            continue
        node = i % len(endpoints)
        senders.append(pipe.start("senders", [
            sys.executable, __file__, "--sender", "--first", str(first), "--last",
            str(last), "--world", str(ranks), "--endpoint", endpoints[node],
            "--run-id", run_id,
            "--layers", str(model.layers), "--heads", str(model.heads),
            "--metrics", str(model.metrics), "--rounds", str(model.rounds),
            "--steps", str(model.steps), "--interval", str(model.interval_s),
            "--go", str(go), "--node", f"node-{node}"]))
    return senders


def wait_ready(senders: Sequence[subprocess.Popen[bytes]], go: Path) -> None:
    """Wait until every sender has built its exporters (its ``go.ready<pid>`` file exists)."""
    for s in senders:
        while not go.with_suffix(f".ready{s.pid}").exists():
            if s.poll() is not None:
                raise RuntimeError(f"sender exited with {s.returncode}")
            time.sleep(0.05)


def play(pipe: Pipeline, senders: Sequence[subprocess.Popen[bytes]], go: Path
         ) -> tuple[TierMeter, float, float]:
    """Let the ready senders go and sample every tier until they end.

    Returns the meter (keep sampling it while the pipeline drains) and the monotonic times
    the senders were let go and the last one ended.
    """
    meter = TierMeter(pipe.running)
    started = time.monotonic()
    go.touch()
    while any(s.poll() is None for s in senders):
        meter.sample()
        time.sleep(0.25)
    for s in senders:
        if s.returncode != 0:
            raise RuntimeError(f"a sender exited with {s.returncode}: see {pipe.work}")
    return meter, started, time.monotonic()


def wait_exact(prom: str, run_id: str,
               want: Sequence[dict[tuple[str, str], tuple[float, float]]],
               meter: TierMeter, timeout_s: float = 120.0) -> bool:
    """Poll until the stored count and sum of every metric and cell equal ``want`` exactly.

    ``want``: ``Model.expected``. The meter samples the tiers while the pipeline drains.
    False if they are still not exact after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        meter.sample()
        exact = all(
            {(s["layer"], s["head"]): v for s, v in query(
                prom, f'sparse_attention_{METRICS[m]}{suffix}{{run_id="{run_id}"}}')}
            == {k: t[index] for k, t in cells.items()}
            for m, cells in enumerate(want) for suffix, index in (("_count", 0), ("_sum", 1)))
        if exact or time.monotonic() >= deadline:
            return exact
        time.sleep(0.2)


def run(ranks: int, layers: int, heads: int, *, metrics: int = 2, rounds: int = 3,
        steps: int = 2, procs: int = 4, agents: int = 2, interval_s: float = 2.0,
        workdir: str | None = None, protocol: str = "prw") -> Result:
    """Start the pipeline, play ``ranks`` ranks for ``rounds`` exports, measure, stop.

    ``protocol``: how the gateway feeds vmagent (PROTOCOLS).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    model = Model(layers, heads, metrics, rounds, steps, interval_s)
    work = Path(workdir or tempfile.mkdtemp(prefix="bench-cluster-"))
    otlp = protocol == "otlp"
    with pipeline(work, agents, gateway_configs=(str(OTLP_TO_VMAGENT),) if otlp else (),
                  vmagent_otlp=otlp) as pipe:
        prom = pipe.prom
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        telemetry = pipe.telemetry(pipe.gateway)
        accepted_before = _accepted(telemetry)
        go = work / "go"
        senders = start_senders(pipe, ranks, procs,
                                [pipe.agent_endpoint(i) for i in range(agents)], run_id, go,
                                model)
        wait_ready(senders, go)
        meter, started, sent_end = play(pipe, senders, go)
        wall = sent_end - started
        accepted = _accepted(telemetry) - accepted_before
        exact = wait_exact(prom, run_id, model.expected(ranks), meter)
        delay = time.monotonic() - sent_end
        stored = query(prom, f'count({{run_id="{run_id}"}})')
        hist = query(prom, f'count({{__name__=~"sparse_attention_.+", run_id="{run_id}"}})')
        per_rank = query(prom, f'count({{rank!="", run_id="{run_id}"}})')
        points = ranks * rounds * (metrics * layers * heads + metrics)
        return Result(
            ranks=ranks, layers=layers, heads=heads, metrics=metrics, rounds=rounds,
            series_stored=int(stored[0][1]) if stored else 0,
            histogram_series=int(hist[0][1]) if hist else 0,
            per_rank_series=int(per_rank[0][1]) if per_rank else 0,
            exact=exact, points_sent=points, send_wall_s=round(wall, 2),
            points_per_s=round(accepted / wall, 1), delay_s=round(delay, 2),
            tiers=meter.tiers)


class SimulatedRank:
    """One rank as the library exports it: otel_sparse's Aggregator under the rank's resource.

    ``log_round`` records ``steps`` values per (metric, layer, head) cell and the
    ``otel_sparse.events.logged`` counter; ``collect`` gives the cumulative MetricsData an OTLP
    exporter sends. Both take the clock as an argument (``start_ns``, ``time_ns``), so a test
    can play a rank on a simulated clock (points in the past); by default it is the wall clock.

    Example::

        rank = SimulatedRank("run-1", rank=0, world=2, node="node-0", layers=2, heads=2)
        rank.log_round(0, steps=2)
        OTLPMetricExporter(endpoint=..., insecure=True).export(rank.collect())
    """

    def __init__(self, run_id: str, rank: int, world: int, node: str, layers: int,
                 heads: int, metrics: int = 2, start_ns: int | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from otel_sparse._instruments import make_spec
        from otel_sparse.aggregator import Aggregator

        self.rank = rank
        self._scope = InstrumentationScope("otel_sparse", "bench")
        self._specs = [make_spec(m, float) for m in METRICS[:metrics]]
        self._logged = make_spec("events.logged", int, kind="counter")
        self._keys = [(("head", h), ("layer", layer)) for layer in range(layers)
                      for h in range(heads)]
        self.resource = Resource({"run.id": run_id, "rank": rank, "world.size": world,
                                  "local.rank": rank % 8, "host.name": node,
                                  "service.name": "otel-sparse",
                                  "service.instance.id": f"{run_id}-{rank}",
                                  "process.pid": os.getpid()})
        self._agg = Aggregator(start_ns=time.time_ns() if start_ns is None else start_ns)

    def log_round(self, round_: int, steps: int) -> None:
        """Record ``steps`` values (``value()``) per cell and metric, and count them."""
        import numpy as np

        for m, spec in enumerate(self._specs):
            block = np.array([[value(self.rank, round_, s, layer, h, m)
                               for (_, h), (_, layer) in self._keys] for s in range(steps)])
            self._agg.record_columns(f"sparse_attention.{METRICS[m]}", spec, self._keys, block)
            self._agg.record("otel_sparse.events.logged", self._logged,
                             (("metric", METRICS[m]),), float(block.size))

    def collect(self, time_ns: int | None = None) -> Any:
        """The cumulative MetricsData of everything logged so far, stamped ``time_ns``."""
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

        stamp = time.time_ns() if time_ns is None else time_ns
        return MetricsData(resource_metrics=[ResourceMetrics(
            resource=self.resource, schema_url="",
            scope_metrics=[ScopeMetrics(scope=self._scope, metrics=self._agg.collect(stamp),
                                        schema_url="")])])


def sender(args: argparse.Namespace) -> None:
    """Play ranks [first, last): one SimulatedRank and OTLP exporter per rank."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    ranks = []
    for rank in range(args.first, args.last):
        exporter = OTLPMetricExporter(endpoint=args.endpoint, insecure=True, timeout=30)
        ranks.append((SimulatedRank(args.run_id, rank, args.world, args.node, args.layers,
                                    args.heads, args.metrics), exporter))
    Path(args.go).with_suffix(f".ready{os.getpid()}").touch()
    while not Path(args.go).exists():
        time.sleep(0.02)
    start = time.monotonic()
    for round_ in range(args.rounds):
        for sim, exporter in ranks:
            sim.log_round(round_, args.steps)
            if exporter.export(sim.collect()).name != "SUCCESS":
                print(f"rank {sim.rank}: export failed", file=sys.stderr)
                sys.exit(1)
        pause = start + (round_ + 1) * args.interval - time.monotonic()
        if pause > 0 and round_ + 1 < args.rounds:
            time.sleep(pause)
    for _, exporter in ranks:
        exporter.shutdown()


def add_sender_arguments(parser: argparse.ArgumentParser) -> None:
    """The internal sender mode's arguments (``--sender``), as ``start_senders`` passes them.

    bench_ceiling's senders take these too, plus their own (rate, status and stop files).
    """
    parser.add_argument("--sender", action="store_true")
    parser.add_argument("--first", type=int)
    parser.add_argument("--last", type=int)
    parser.add_argument("--world", type=int)
    parser.add_argument("--endpoint")
    parser.add_argument("--run-id")
    parser.add_argument("--go")
    parser.add_argument("--node")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--protocol", choices=PROTOCOLS, default="prw",
                        help="gateway -> vmagent: remote write (prw) or OTLP")
    parser.add_argument("--json", action="store_true")
    add_sender_arguments(parser)
    args = parser.parse_args()
    if args.sender:
        sender(args)
        return
    result = run(args.ranks, args.layers, args.heads, metrics=args.metrics, rounds=args.rounds,
                 steps=args.steps, procs=args.procs, agents=args.agents,
                 interval_s=args.interval, protocol=args.protocol)
    if args.json:
        print(json.dumps(asdict(result)))
        return
    tiers = ", ".join(f"{k}: {t.cpu_s:.1f} cpu-s {t.peak_rss_mib:.0f} MiB"
                      for k, t in result.tiers.items())
    print(f"N={result.ranks} {result.layers}x{result.heads}x{result.metrics}: "
          f"series {result.series_stored} (histogram {result.histogram_series}, per-rank "
          f"{result.per_rank_series}), exact {result.exact}, {result.points_per_s:.0f} "
          f"points/s accepted, delay {result.delay_s:.1f} s; {tiers}")


if __name__ == "__main__":
    main()
