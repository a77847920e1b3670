"""The collector tier's ceiling: saturating load into the aggregated layout, CPU per tier.

Run (one line; the table of docs/cluster.md, "The collector tier's ceiling", about 15 min):

    .venv/bin/python bench/bench_ceiling.py --table

or one mix of rates and variants, alternated, e.g.
``--rates 3000,15000 --variants base,noprom --repeat 2`` (``--profile``: gateway CPU by stage).

    sender processes (pre-encoded OTLP requests, raw gRPC, several in flight)
      --> agents (agent.yaml) --> gateway (gateway.yaml)
      --prometheusremotewrite--> vmagent (aggregation.yaml) --> Prometheus  [--sink aggregation]
                                 vmagent dropping every series by relabelling [--sink drop]

The "collector tier" is the otelcol processes (agents + gateway); vmagent and Prometheus are
their own tiers, and the senders' CPU is reported apart from all of them.

Senders cost little CPU so that the collectors get the cores. Each simulated rank's
``ExportMetricsServiceRequest`` (bench_cluster.SimulatedRank: otel_sparse's own Aggregator,
encoded by the OTel SDK's ``encode_metrics``, L x H x M cumulative explicit-bucket histograms
plus the ``events.logged`` counters) is built ONCE and serialized to bytes; each send only
patches the points' ``time_unix_nano`` in those bytes (a cumulative re-export carries a new
time: identical timestamps would be skipped by vmagent as duplicates and make the remote-write
path cheaper than a real job's) and sends them over a raw gRPC channel (identity serializer),
``--in-flight`` requests per sender process. ``--rates``: total offered points/s, open loop
(a sender that has ``--in-flight`` requests outstanding waits, so it offers less: the row
shows what was offered); ``0`` is as fast as possible (closed loop: ``--in-flight`` requests
per sender, and a pause of 0.2 s after a refused one).

One row per run (``--json``: one JSON object per line), all figures over the measuring window
(``--window`` s after ``--warmup`` s): offered points/s; points/s accepted and refused by the
agents and by the gateway (``otelcol_receiver_accepted/refused_metric_points``), points/s the
exporters failed (``otelcol_exporter_send_failed`` + ``enqueue_failed``), their queue sizes at
the end of the window; CPU cores used by each tier (senders, agents, gateway, vmagent,
Prometheus), µs of CPU per point the gateway accepted, RSS; the 1-minute load average and the
busy cores of the whole machine. After the window the senders stop and the bench waits for the
pipeline to drain, then records whether every point the senders had acknowledged was counted
accepted by the agents and by the gateway and sent on by its remote write (``drained``).
``rw pts/s`` (``remote_write_points_per_s``) is what the gateway's remote write sent: when it
stays below the gateway's accepted rate, the remote-write queue grows and the sustained
ceiling is the remote-write rate.

``--profile``: the gateway runs with the pprof extension (a ``--config yaml:`` overlay) and a
CPU profile is taken over the window; the row gets the share of CPU per pipeline stage
(``profile_stages``) and the profile is kept in the work folder (``go tool pprof -top``).

``--variants``: named config overlays (``VARIANTS``) merged over the shipped agent.yaml /
gateway.yaml with the collector's own ``--config yaml:...`` sources; runs alternate
(``--repeat 2``: A B A B) so that each pair shares the machine's state.

``ceiling()`` is what tests/integration/test_ceiling.py calls at a small fixed rate.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_cluster
from bench_cluster import LOOPBACK, SimulatedRank

EXPORT_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
SENTINEL_NS = 0x1D2C3B4A59687786
"""A time_unix_nano no real point carries: its bytes mark where each send writes the time."""
TIME_TAG = b"\x19"
"""Protobuf tag of time_unix_nano (field 3, fixed64) in Number- and HistogramDataPoint."""
TIERS = ("senders", "agents", "gateway", "vmagent", "prometheus")
TARGET_POINTS_PER_S = 100_000


@dataclass(frozen=True)
class Variant:
    """Config changes merged over the shipped agent.yaml / gateway.yaml for one run."""

    gateway: tuple[str, ...] = ()
    """--config sources of the gateway (``yaml:...`` overlays)."""
    agent: tuple[str, ...] = ()
    """--config sources of every agent."""
    gateway_args: tuple[str, ...] = ()
    """Further command-line flags of the gateway."""
    remote_write: bool = True
    """Whether the gateway's remote write carries the points (``drained`` waits for it)."""
    vmagent_otlp: bool = False
    """vmagent with the shipped OTLP intake's flags (bench_cluster.VMAGENT_OTLP_FLAGS)."""


NO_PROM = str(bench_cluster.REPO / "collector-config" / "remote-write-only.yaml")
"""The shipped overlay: the aggregated layout's gateway without the prometheus exporter."""
OTLP_TO_VMAGENT = str(bench_cluster.OTLP_TO_VMAGENT)
"""The shipped overlay: the aggregated layouts' gateway sending OTLP to vmagent."""
PRW_WORKERS = "--feature-gates=exporter.prometheusremotewritexporter.EnableMultipleWorkers"
SLIM_RESOURCE = (
    "yaml:processors::resource/slim::attributes: [{key: process.pid, action: delete}, "
    "{key: telemetry.sdk.language, action: delete}, {key: telemetry.sdk.name, action: delete}, "
    "{key: telemetry.sdk.version, action: delete}]",
    "yaml:service::pipelines::metrics::processors: "
    "[memory_limiter, resource/slim, deltatocumulative, batch]")

VARIANTS: dict[str, Variant] = {
    "base": Variant(),
    # the gateway of the aggregated layout without the prometheus exporter (remote write only)
    "noprom": Variant(gateway=(NO_PROM,)),
    # remote write translating batches in num_consumers (2) goroutines instead of one
    "workers": Variant(gateway_args=(PRW_WORKERS,)),
    "noprom-workers": Variant(gateway=(NO_PROM,), gateway_args=(PRW_WORKERS,)),
    # resource attributes nobody queries deleted before the exporters (fewer labels per sample)
    "slim": Variant(gateway=SLIM_RESOURCE),
    # the collector tier's intake alone: receive, deltatocumulative, batch, the prometheus
    # exporter's accumulation (not scraped); no remote write
    "intake": Variant(gateway=("yaml:service::pipelines::metrics::exporters: [prometheus]",),
                      remote_write=False),
    "noprom-slim": Variant(gateway=(NO_PROM, *SLIM_RESOURCE)),
    # what it would take: the gateway sends OTLP to vmagent, which turns histograms into
    # _bucket/_sum/_count itself (no remote-write translation in the collector). vmagent with
    # its default flags here: other names and labels; `dropin` below is the shipped version.
    "otlp2vm": Variant(gateway=(
        "yaml:exporters::otlp_http/vm::metrics_endpoint: "
        "${env:OTEL_SPARSE_VMAGENT_URL}/opentelemetry/v1/metrics",
        "yaml:service::pipelines::metrics::exporters: [otlp_http/vm]"), remote_write=False),
    # the shipped drop-in (docs/cluster.md, "OTLP to vmagent"): otlp-to-vmagent.yaml, vmagent
    # with usePrometheusNaming, no scope labels and the job/instance relabelling: the same
    # series as `base` stores (tests/integration/test_otlp_to_vmagent.py)
    # (its "rw pts/s" is what the gateway's OTLP exporter sent on to vmagent)
    "dropin": Variant(gateway=(OTLP_TO_VMAGENT,), vmagent_otlp=True),
    # agent -> gateway compression other than agent.yaml's zstd: gzip (the otlp exporter's
    # default, shipped before), none, snappy
    "gzip": Variant(agent=("yaml:exporters::otlp_grpc::compression: gzip",)),
    "nocompress": Variant(agent=("yaml:exporters::otlp_grpc::compression: none",)),
    "snappy": Variant(agent=("yaml:exporters::otlp_grpc::compression: snappy",)),
}


def variant_of(name: str) -> Variant:
    """A VARIANTS entry, or several joined by ``+`` (``intake+nogzip``): their changes merged."""
    parts = [VARIANTS[n] for n in name.split("+")]
    return Variant(gateway=tuple(o for v in parts for o in v.gateway),
                   agent=tuple(o for v in parts for o in v.agent),
                   gateway_args=tuple(a for v in parts for a in v.gateway_args),
                   remote_write=all(v.remote_write for v in parts),
                   vmagent_otlp=any(v.vmagent_otlp for v in parts))


def pprof_overlay(port: int) -> tuple[str, ...]:
    """--config sources that add the pprof extension on ``port`` (bench only)."""
    return (f"yaml:extensions::pprof::endpoint: {LOOPBACK}:{port}",
            "yaml:service::extensions: [health_check, pprof]")


# -- the sender process ---------------------------------------------------------------------


class Request:
    """One rank's encoded export, with the offsets of every point's time_unix_nano."""

    def __init__(self, sim: SimulatedRank) -> None:
        import numpy as np
        from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import (
            encode_metrics,
        )

        raw = encode_metrics(sim.collect(SENTINEL_NS)).SerializeToString()
        marker = TIME_TAG + struct.pack("<Q", SENTINEL_NS)
        offsets = [m.start() + 1 for m in re.finditer(re.escape(marker), raw)]
        self.points = len(offsets)
        self._bytes = np.frombuffer(raw, dtype=np.uint8).copy()
        self._index = (np.array(offsets)[:, None] + np.arange(8)).ravel()

    def stamped(self, time_ns: int) -> bytes:
        """The request with every point's time set to ``time_ns``."""
        import numpy as np

        stamp = np.frombuffer(struct.pack("<Q", time_ns), dtype=np.uint8)
        self._bytes[self._index] = np.tile(stamp, self.points)
        return bytes(self._bytes.tobytes())


def sender(args: argparse.Namespace) -> None:
    """Play ranks [first, last) at ``args.rate`` points/s (0: as fast as ``in_flight`` allows)."""
    import grpc  # type: ignore[import-untyped, unused-ignore]

    from otel_sparse.resource import ProcessIdentity

    reqs = []
    for rank in range(args.first, args.last):
        sim = SimulatedRank(args.run_id, rank, args.world, args.node, args.layers, args.heads,
                            args.metrics)
        # the library's own resource (telemetry.sdk.* included): every attribute becomes a
        # label on each of the 29 remote-write series of a point, so the count matters here
        sim.resource = ProcessIdentity(
            run_id=args.run_id, rank=rank, world_size=args.world, local_rank=rank % 8,
            pid=os.getpid(), instance_id=f"{args.run_id}-{rank}", host_name=args.node,
        ).resource()
        sim.log_round(0, 2)
        reqs.append(Request(sim))
    channel = grpc.insecure_channel(args.endpoint, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    export: Any = channel.unary_unary(EXPORT_METHOD, request_serializer=None,
                                 response_deserializer=None)
    counts = {"sent": 0, "ok": 0, "failed": 0, "requests": 0, "errors": 0}
    lock = threading.Lock()
    slots = threading.BoundedSemaphore(args.in_flight)
    status, stop = Path(args.status), Path(args.stop)

    def write_status() -> None:
        tmp = status.with_suffix(".tmp")
        with lock:
            tmp.write_text(json.dumps({"t": time.time(), **counts}))
        tmp.replace(status)

    def done(points: int, fut: Any) -> None:
        with lock:
            if fut.exception() is None:
                counts["ok"] += points
            else:
                counts["failed"] += points
                counts["errors"] += 1
        slots.release()

    write_status()
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    points_per_s = args.rate
    period = sum(r.points for r in reqs) / len(reqs) / points_per_s if points_per_s else 0.0
    due = time.monotonic()
    last_status = due
    i = seen_errors = 0
    while not stop.exists():
        if not period and counts["errors"] > seen_errors:
            seen_errors = counts["errors"]  # refused (memory_limiter): back off, then go on
            time.sleep(0.2)
        if period:
            due += period
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        slots.acquire()
        req = reqs[i % len(reqs)]
        i += 1
        fut = export.future(req.stamped(time.time_ns()), timeout=60)
        with lock:
            counts["sent"] += req.points
            counts["requests"] += 1
        fut.add_done_callback(functools.partial(done, req.points))
        now = time.monotonic()
        if now - last_status > 0.25:
            write_status()
            last_status = now
        if period and time.monotonic() - due > 1.0:
            due = time.monotonic()  # behind by more than 1 s: do not burst to catch up
    for _ in range(args.in_flight):  # every request answered
        slots.acquire()
    write_status()
    channel.close()


# -- measuring --------------------------------------------------------------------------------


def _series(url: str) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample on a /metrics page."""
    out = []
    for line in requests.get(url, timeout=30).text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, val = line.rpartition(" ")
        name, _, labels = head.partition("{")
        out.append((name, labels, float(val)))
    return out


def _sum(pages: list[list[tuple[str, str, float]]], name: str, label: str = "") -> float:
    """Sum of ``name`` over the pages, where its labels contain ``label`` or, for
    ``a|b``, either."""
    return sum(v for page in pages for n, labels, v in page
               if n == name and any(part in labels for part in label.split("|")))


COLLECTOR_FIGURES = {
    "accepted": ("otelcol_receiver_accepted_metric_points", ""),
    "refused": ("otelcol_receiver_refused_metric_points", ""),
    "send_failed": ("otelcol_exporter_send_failed_metric_points", ""),
    "enqueue_failed": ("otelcol_exporter_enqueue_failed_metric_points", ""),
    "queue_size": ("otelcol_exporter_queue_size", ""),
    # what the gateway sent on to vmagent: remote write, or OTLP (otlp-to-vmagent.yaml)
    "remote_write_sent": ("otelcol_exporter_sent_metric_points",
                          'exporter="prometheusremotewrite"|exporter="otlp_http/vmagent"'),
}
"""What each collector's own metrics give (name, label substring); summed over a tier."""


@dataclass
class Snapshot:
    """Counters of every tier at one instant."""

    t: float
    senders: dict[str, float]
    agents: dict[str, float]
    gateway: dict[str, float]
    vmagent_rows: float
    cpu: dict[str, float]
    rss_mib: dict[str, float]
    machine_busy_s: float
    load_1m: float


@dataclass
class CeilingRow:
    """One run of the ceiling bench: the figures docs/cluster.md tabulates."""

    variant: str
    sink: str
    ranks: int
    layers: int
    heads: int
    metrics: int
    points_per_request: int
    target_points_per_s: float
    window_s: float
    load_1m_start: float
    load_1m_end: float
    machine_cores_busy: float
    offered_points_per_s: float
    sender_failed_points_per_s: float
    agents_accepted_points_per_s: float
    agents_refused_points_per_s: float
    agents_send_failed_points_per_s: float
    agents_queue_size: float
    gateway_accepted_points_per_s: float
    gateway_refused_points_per_s: float
    gateway_send_failed_points_per_s: float
    gateway_queue_size: float
    remote_write_points_per_s: float
    sustained_points_per_s: float
    """What the whole collector tier carried: the gateway's accepted rate, or its remote
    write's when that is lower (its queue grows: past the ceiling)."""
    vmagent_samples_per_s: float
    cores: dict[str, float] = field(default_factory=dict)
    us_per_point: dict[str, float] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)
    points_sent: int = 0
    points_acked: int = 0
    agents_accepted: int = 0
    gateway_accepted: int = 0
    remote_write_sent: int = 0
    drained: bool = False
    profile_stages: dict[str, float] = field(default_factory=dict)
    workdir: str = ""


def _sender_counts(statuses: Sequence[Path]) -> dict[str, float]:
    total: dict[str, float] = {}
    for path in statuses:
        for k, v in json.loads(path.read_text()).items():
            if k != "t":
                total[k] = total.get(k, 0.0) + v
    return total


def ceiling(ranks: int = 16, layers: int = 32, heads: int = 32, *, metrics: int = 2,
            rate: float = 0.0, variant: str = "base", sink: str = "drop", procs: int = 2,
            agents: int = 2, in_flight: int = 4, warmup_s: float = 5.0, window_s: float = 15.0,
            drain_s: float = 60.0, profile: bool = False,
            workdir: str | None = None) -> CeilingRow:
    """Start the pipeline (``variant``'s overlays), offer ``rate`` points/s, measure, stop."""
    import psutil

    work = Path(workdir or tempfile.mkdtemp(prefix="bench-ceiling-"))
    chosen = variant_of(variant)
    gateway_overlays = chosen.gateway
    pprof_port = bench_cluster.free_ports(1)[0]
    if profile:
        gateway_overlays = (*gateway_overlays, *pprof_overlay(pprof_port))
    with bench_cluster.pipeline(work, agents, sink=sink, gateway_configs=gateway_overlays,
                                agent_configs=chosen.agent,
                                gateway_args=chosen.gateway_args,
                                vmagent_otlp=chosen.vmagent_otlp) as pipe:
        run_id = f"ceiling-{uuid.uuid4().hex[:8]}"
        per_proc = math.ceil(ranks / procs)
        go, stop = work / "go", work / "stop"
        statuses, senders = [], []
        for i in range(procs):
            first, last = i * per_proc, min(ranks, (i + 1) * per_proc)
            if first >= last:
                continue
            status = work / f"sender-{i}.json"
            statuses.append(status)
            senders.append(pipe.start("senders", [
                sys.executable, __file__, "--sender", "--first", str(first), "--last",
                str(last), "--world", str(ranks), "--endpoint", pipe.agent_endpoint(i % agents),
                "--run-id", run_id, "--layers", str(layers), "--heads", str(heads),
                "--metrics", str(metrics), "--rate", str(rate * (last - first) / ranks),
                "--in-flight", str(in_flight), "--node", f"node-{i % agents}",
                "--status", str(status), "--ready", str(work / f"sender-{i}.ready"),
                "--go", str(go), "--stop", str(stop)]))
        for i, s in enumerate(senders):
            while not (work / f"sender-{i}.ready").exists():
                if s.poll() is not None:
                    raise RuntimeError(f"sender exited with {s.returncode}: see {work}")
                time.sleep(0.05)
        ps = {tier: [psutil.Process(p.pid) for p in pipe.running.get(tier, [])]
              for tier in TIERS}
        telemetry = {"agents": [f"http://{pipe.telemetry(a)}/metrics" for a in pipe.agents],
                     "gateway": [f"http://{pipe.telemetry(pipe.gateway)}/metrics"]}

        def collectors(tier: str) -> dict[str, float]:
            pages = [_series(url) for url in telemetry[tier]]
            return {k: _sum(pages, *spec) for k, spec in COLLECTOR_FIGURES.items()}

        def snapshot() -> Snapshot:
            cpu, rss = {}, {}
            for tier, group in ps.items():
                cpu[tier] = sum(sum(p.cpu_times()[:2]) for p in group)
                rss[tier] = sum(p.memory_info().rss for p in group) / 2**20
            times = psutil.cpu_times()
            vm = _series(f"{pipe.vmagent}/metrics")
            return Snapshot(
                t=time.monotonic(), senders=_sender_counts(statuses),
                agents=collectors("agents"), gateway=collectors("gateway"),
                vmagent_rows=_sum([vm], "vmagent_rows_inserted_total",
                                  'type="promremotewrite"'),
                cpu=cpu, rss_mib=rss,
                machine_busy_s=sum(times) - times.idle - getattr(times, "iowait", 0.0),
                load_1m=os.getloadavg()[0])

        base = snapshot()
        go.touch()
        time.sleep(warmup_s)
        first_snap = snapshot()
        profiler = None
        if profile:
            profiler = threading.Thread(target=_fetch_profile, args=(
                f"http://{LOOPBACK}:{pprof_port}/debug/pprof/profile", window_s,
                work / "gateway.pprof"))
            profiler.start()
        time.sleep(window_s)
        last_snap = snapshot()
        if profiler is not None:
            profiler.join()
        stop.touch()
        for s in senders:
            s.wait(timeout=120)
            if s.returncode != 0:
                raise RuntimeError(f"a sender exited with {s.returncode}: see {work}")
        acked = _sender_counts(statuses)
        deadline, drained = time.monotonic() + drain_s, False
        while time.monotonic() < deadline:
            gateway = collectors("gateway")
            end = (collectors("agents")["accepted"], gateway["accepted"],
                   gateway["remote_write_sent"])
            drained = all(e - b == acked["ok"] for e, b in list(zip(end, (
                base.agents["accepted"], base.gateway["accepted"],
                base.gateway["remote_write_sent"])))[:3 if chosen.remote_write else 2])
            if drained:
                break
            time.sleep(0.2)
        stages = _profile_stages(work / "gateway.pprof") if profile else {}
    return _row(variant, sink, chosen.remote_write, ranks, layers, heads, metrics, rate,
                first_snap, last_snap, base, acked, end, drained, stages, str(work))


def _row(variant: str, sink: str, remote_write: bool, ranks: int, layers: int, heads: int,
         metrics: int, rate: float, a: Snapshot, b: Snapshot, base: Snapshot,
         acked: dict[str, float], end: tuple[float, float, float], drained: bool,
         stages: dict[str, float], work: str) -> CeilingRow:
    dt = b.t - a.t

    def per_s(x: float, y: float) -> float:
        return round((y - x) / dt, 1)

    cores = {t: round((b.cpu[t] - a.cpu[t]) / dt, 3) for t in TIERS}
    gateway_points = b.gateway["accepted"] - a.gateway["accepted"]
    offered = b.senders["sent"] - a.senders["sent"]
    us = {}
    for t in TIERS:
        points = offered if t == "senders" else gateway_points
        us[t] = round(1e6 * (b.cpu[t] - a.cpu[t]) / points, 2) if points else math.nan
    return CeilingRow(
        variant=variant, sink=sink, ranks=ranks, layers=layers, heads=heads, metrics=metrics,
        points_per_request=metrics * layers * heads + metrics, target_points_per_s=rate,
        window_s=round(dt, 2), load_1m_start=a.load_1m, load_1m_end=b.load_1m,
        machine_cores_busy=round((b.machine_busy_s - a.machine_busy_s) / dt, 3),
        offered_points_per_s=round(offered / dt, 1),
        sender_failed_points_per_s=per_s(a.senders["failed"], b.senders["failed"]),
        agents_accepted_points_per_s=per_s(a.agents["accepted"], b.agents["accepted"]),
        agents_refused_points_per_s=per_s(a.agents["refused"], b.agents["refused"]),
        agents_send_failed_points_per_s=per_s(
            a.agents["send_failed"] + a.agents["enqueue_failed"],
            b.agents["send_failed"] + b.agents["enqueue_failed"]),
        agents_queue_size=b.agents["queue_size"],
        gateway_accepted_points_per_s=per_s(a.gateway["accepted"], b.gateway["accepted"]),
        gateway_refused_points_per_s=per_s(a.gateway["refused"], b.gateway["refused"]),
        gateway_send_failed_points_per_s=per_s(
            a.gateway["send_failed"] + a.gateway["enqueue_failed"],
            b.gateway["send_failed"] + b.gateway["enqueue_failed"]),
        gateway_queue_size=b.gateway["queue_size"],
        remote_write_points_per_s=per_s(a.gateway["remote_write_sent"],
                                        b.gateway["remote_write_sent"]),
        sustained_points_per_s=min(
            per_s(a.gateway["accepted"], b.gateway["accepted"]),
            per_s(a.gateway["remote_write_sent"], b.gateway["remote_write_sent"])
            if remote_write else math.inf),
        vmagent_samples_per_s=per_s(a.vmagent_rows, b.vmagent_rows),
        cores=cores, us_per_point=us, rss_mib={t: round(v, 1) for t, v in b.rss_mib.items()},
        points_sent=int(acked["sent"]), points_acked=int(acked["ok"]),
        agents_accepted=int(end[0] - base.agents["accepted"]),
        gateway_accepted=int(end[1] - base.gateway["accepted"]),
        remote_write_sent=int(end[2] - base.gateway["remote_write_sent"]),
        drained=drained, profile_stages=stages, workdir=work)


# -- the gateway's CPU profile ----------------------------------------------------------------


def _fetch_profile(url: str, seconds: float, out: Path) -> None:
    resp = requests.get(url, params={"seconds": str(max(1, int(seconds)))},
                        timeout=seconds + 60)
    resp.raise_for_status()
    out.write_bytes(resp.content)


STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (stage, frame substrings): a sample goes to the first stage with a frame in its stack
    ("GC (background mark, assists)", ("runtime.gcBgMarkWorker", "runtime.gcAssistAlloc",
                                       "runtime.bgsweep", "runtime.bgscavenge")),
    ("remote write: snappy", ("snappy.",)),
    ("remote write: proto marshal", ("prompb.(*WriteRequest).Marshal",
                                     "prompb.(*TimeSeries).MarshalToSizedBuffer",
                                     "prompb.(*WriteRequest).MarshalToSizedBuffer",
                                     "proto.Marshal")),
    ("remote write: translation (29 samples/point, labels)",
     ("prometheusremotewrite.FromMetrics", "prometheusremotewrite.(*prometheusConverter)",
      "prometheusremotewrite.(*PrometheusConverter)", "translator/prometheusremotewrite.")),
    ("remote write: HTTP send", ("prometheusremotewriteexporter.(*prwExporter).execute",
                                 "net/http.")),
    ("remote write: other", ("prometheusremotewriteexporter.",)),
    ("prometheus exporter (accumulate)", ("prometheusexporter.",)),
    ("deltatocumulative", ("deltatocumulativeprocessor.",)),
    ("batch", ("batchprocessor.",)),
    ("memory_limiter", ("memorylimiter",)),
    ("OTLP receive: decompress (gzip, zstd)", ("compress/gzip", "compress/flate",
                                       "klauspost/compress")),
    ("OTLP receive: proto unmarshal", ("pmetricotlp.", "pmetric.", "internal/data/protogen",
                                       "pdata/internal", "protobuf/proto.Unmarshal")),
    ("OTLP receive: gRPC", ("google.golang.org/grpc", "otlpreceiver.")),
    ("own telemetry", ("otel/sdk/metric", "prometheus/client_golang")),
    ("Go runtime (scheduler, syscalls)", ("runtime.",)),
)


def _profile_stages(path: Path) -> dict[str, float]:
    """Share of the CPU samples (%) per stage of ``STAGES`` (``go tool pprof -traces``)."""
    otelcol = bench_cluster._binary("build-collector.sh")
    text = subprocess.run(["go", "tool", "pprof", "-traces", otelcol, str(path)],
                          capture_output=True, text=True, check=True).stdout
    (path.with_suffix(".top.txt")).write_text(subprocess.run(
        ["go", "tool", "pprof", "-top", "-nodecount=60", otelcol, str(path)],
        capture_output=True, text=True, check=True).stdout + subprocess.run(
        ["go", "tool", "pprof", "-top", "-cum", "-nodecount=60", otelcol, str(path)],
        capture_output=True, text=True, check=True).stdout)
    totals: dict[str, float] = {}
    for block in text.split("-----------+-------------------------------------------------------"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or not re.match(r"\s+[\d.]+(ms|s|us|µs)\s", lines[0]):
            continue
        amount, unit = re.match(r"\s+([\d.]+)(ms|s|us|µs)", lines[0]).groups()  # type: ignore[union-attr]
        seconds = float(amount) * {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}[unit]
        frames = [lines[0].split(None, 1)[1]] + [ln.strip() for ln in lines[1:]]
        stage = next((name for name, pats in STAGES
                      if any(p in f for f in frames for p in pats)), "other")
        totals[stage] = totals.get(stage, 0.0) + seconds
    whole = sum(totals.values()) or 1.0
    return {k: round(100 * v / whole, 1) for k, v in
            sorted(totals.items(), key=lambda kv: -kv[1])}


# -- command line -----------------------------------------------------------------------------


TABLE: tuple[tuple[str, str, float], ...] = (
    # (variant, sink, offered points/s): docs/cluster.md's table, pairs alternated
    ("intake", "drop", 50_000), ("intake", "drop", 100_000), ("intake", "drop", 150_000),
    ("intake+gzip", "drop", 100_000), ("intake", "drop", 100_000),
    ("intake+gzip", "drop", 100_000), ("intake", "drop", 100_000),
    ("base", "drop", 3_000), ("noprom", "drop", 3_000),
    ("base", "drop", 3_000), ("noprom", "drop", 3_000),
    ("base", "drop", 15_000), ("dropin", "drop", 15_000), ("base", "drop", 15_000),
    ("otlp2vm", "drop", 20_000),
    ("base", "aggregation", 3_000), ("dropin", "aggregation", 3_000),
)
"""What ``--table`` runs."""


def _print_row(row: CeilingRow) -> None:
    cores = " / ".join(f"{row.cores[t]:.2f}" for t in TIERS)
    us = " / ".join(f"{row.us_per_point[t]:.1f}" for t in TIERS)
    print(f"{row.variant:8} {row.sink:11} {row.target_points_per_s:>8,.0f} "
          f"{row.offered_points_per_s:>9,.0f} {row.agents_accepted_points_per_s:>9,.0f} "
          f"{row.gateway_accepted_points_per_s:>9,.0f} {row.remote_write_points_per_s:>8,.0f} "
          f"{row.agents_refused_points_per_s + row.gateway_refused_points_per_s:>7,.0f} "
          f"{row.agents_send_failed_points_per_s + row.gateway_send_failed_points_per_s:>7,.0f} "
          f"{row.agents_queue_size:>4,.0f}/{row.gateway_queue_size:<4,.0f} "
          f"{cores:>30} {us:>30} {row.rss_mib['gateway']:>6,.0f} "
          f"{row.load_1m_start:>4.1f}-{row.load_1m_end:<4.1f} {row.machine_cores_busy:>4.2f} "
          f"{'yes' if row.drained else 'NO':>7}", flush=True)
    if row.profile_stages:
        print("    gateway CPU by stage: " + ", ".join(
            f"{k} {v:.1f}%" for k, v in row.profile_stages.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="0",
                        help="comma-separated offered points/s (0: as fast as possible)")
    parser.add_argument("--variants", default="base",
                        help=f"comma-separated, alternated; a+b merges two: {', '.join(VARIANTS)}")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--sink", choices=bench_cluster.SINKS, default="drop")
    parser.add_argument("--ranks", type=int, default=16)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--metrics", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--table", action="store_true",
                        help="run docs/cluster.md's table (TABLE) instead of --rates/--variants")
    parser.add_argument("--json", action="store_true")
    # sender mode (internal): bench_cluster's sender arguments, then this bench's own
    bench_cluster.add_sender_arguments(parser)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--status")
    parser.add_argument("--ready")
    parser.add_argument("--stop")
    args = parser.parse_args()
    if args.sender:
        sender(args)
        return
    variants = args.variants.split(",")
    unknown = [p for v in variants for p in v.split("+") if p not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if not args.json:
        print(f"{'variant':8} {'sink':11} {'target/s':>8} {'offered/s':>9} {'agents/s':>9} "
              f"{'gateway/s':>9} {'rw pts/s':>8} {'refused':>7} {'failed':>7} {'queues':>9} "
              f"{'cores ' + '/'.join(TIERS):>30} {'us/pt (same order)':>30} "
              f"{'gw MiB':>6} {'load 1m':>9} {'busy':>4} {'drained':>7}")
    plan = list(TABLE) if args.table else [
        (variant, args.sink, float(rate)) for rate in args.rates.split(",")
        for _ in range(args.repeat) for variant in variants]
    for variant, sink, rate in plan:
        print(f"# load average {os.getloadavg()[0]:.2f} before {variant} {sink} {rate:,.0f}/s",
              file=sys.stderr, flush=True)
        row = ceiling(args.ranks, args.layers, args.heads, metrics=args.metrics, rate=rate,
                      variant=variant, sink=sink, procs=args.procs, agents=args.agents,
                      in_flight=args.in_flight, warmup_s=args.warmup, window_s=args.window,
                      profile=args.profile)
        if args.json:
            print(json.dumps(asdict(row)), flush=True)
        else:
            _print_row(row)
    if not args.json:
        print(f"cores: CPU seconds per second over the window, tiers in the order {TIERS}; "
              f"us/pt: CPU µs per point the gateway accepted (senders: per point offered); "
              f"target {TARGET_POINTS_PER_S:,} points/s; {os.cpu_count()} cores on this machine")


if __name__ == "__main__":
    main()
