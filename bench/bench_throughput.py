"""Throughput of the OTLP pipeline with real processes: senders -> one collector -> Prometheus.

Run: .venv/bin/python bench/bench_throughput.py [--part capacity|realistic|both]

(a) capacity. Several sender processes export large sets of cumulative histogram series
    (layers x heads, logged once, re-exported every interval) over OTLP/gRPC to ONE
    collector (collector-config/single.yaml), whose exporter Prometheus scrapes every 5 s
    (``--scrape-interval``). Two kinds of sender:

    * ``facade``: the real library (MicroMetricLogger, exporter ``otlp``): what Python
      ranks can push, OTel Python's protobuf encoding included;
    * ``raw``: the same request, built once by the library, then sent again every
      interval over gRPC (at once when behind): what the collector can take.

    Figures: data points per second accepted by the collector (its own
    ``otelcol_receiver_accepted_metric_points``), samples per second Prometheus appended
    (``prometheus_tsdb_head_samples_appended_total``) and the same in histogram points
    (samples / samples per point), against a target of 100k points/s; CPU (cores) of the
    collector, Prometheus, the senders and the whole machine (psutil), the exporter's scrape
    duration and success, and the size of its /metrics page. The last row leaves the
    exporter unscraped: the collector's intake alone.

(b) realistic. One training-like process: 32 layers x 32 heads, two metrics, each logged
    per layer per step as a [heads] tensor, steps back to back (a sparse attention forward on
    the CPU), default export interval (10 s), OTLP to a gateway (gateway.yaml) that remote-
    writes to one Prometheus while another scrapes its exporter. Figures: CPU of the
    otel_sparse threads (writer, exporter) and of gRPC's threads against the whole process
    (target < 2% for the export), the same loop's CPU per step without logging and with the
    event file only, and the delay from log() until each Prometheus answers with the value.

Nothing is asserted; the machine is shared, so read ratios and orders of magnitude.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from _procs import LOOPBACK, ManagedProcess, free_ports, query, wait_http_ok  # noqa: E402

METRIC = "research_attention_density"
METRICS = ("research_attention_density", "research_attention_output_error")
STEP_COUNTER = "bench_steps"
TARGET_POINTS_PER_S = 100_000
PORT_VARS = {
    "grpc": "OTEL_SPARSE_OTLP_GRPC_PORT",
    "http": "OTEL_SPARSE_OTLP_HTTP_PORT",
    "health": "OTEL_SPARSE_HEALTH_PORT",
    "prometheus": "OTEL_SPARSE_PROMETHEUS_PORT",
    "telemetry": "OTEL_SPARSE_TELEMETRY_PORT",
}


# -- processes ----------------------------------------------------------------------------


def _prometheus(workdir: Path, name: str, port: int, scrape_interval: str,
                jobs: dict[str, tuple[list[str], bool]], remote_write: bool = False
                ) -> ManagedProcess:
    """A Prometheus with its own TSDB; ``jobs``: name -> (targets, honor_labels)."""
    config = {
        "global": {"scrape_interval": scrape_interval, "scrape_timeout": scrape_interval,
                   "evaluation_interval": "15s"},
        "scrape_configs": [
            {"job_name": job, "honor_labels": honor, "static_configs": [{"targets": hosts}]}
            for job, (hosts, honor) in jobs.items()
        ],
    }
    (workdir / f"{name}.yml").write_text(yaml.safe_dump(config))
    (workdir / f"{name}-tsdb").mkdir()
    args = ["/usr/bin/prometheus", f"--config.file={workdir / f'{name}.yml'}",
            f"--storage.tsdb.path={workdir / f'{name}-tsdb'}",
            f"--web.listen-address={LOOPBACK}:{port}"]
    if remote_write:
        args.append("--web.enable-remote-write-receiver")
    return ManagedProcess(args, workdir / f"{name}.log", name=name)


class Stack:
    """One collector and a Prometheus scraping its exporter and telemetry.

    With ``gateway=True`` the collector runs gateway.yaml and a second Prometheus
    (``prom_rw_url``) receives its remote write; otherwise it runs single.yaml.
    """

    def __init__(self, workdir: Path, scrape_interval: str = "5s", gateway: bool = False,
                 scrape_exporter: bool = True) -> None:
        self.workdir = workdir
        binary = subprocess.run(
            ["bash", str(REPO / "scripts" / "build-collector.sh")],
            capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
        ).stdout.strip()
        *ports, self.prom_port, self.prom_rw_port = free_ports(len(PORT_VARS) + 2)
        self.ports = dict(zip(PORT_VARS, ports, strict=True))
        env = dict(os.environ, OTEL_SPARSE_LISTEN_HOST=LOOPBACK)
        env.update({var: str(self.ports[k]) for k, var in PORT_VARS.items()})
        self.prometheus_rw: ManagedProcess | None = None
        if gateway:
            env["OTEL_SPARSE_REMOTE_WRITE_URL"] = f"{self.prom_rw_url}/api/v1/write"
            self.prometheus_rw = _prometheus(workdir, "prometheus-rw", self.prom_rw_port,
                                             scrape_interval, {}, remote_write=True)
        config = "gateway.yaml" if gateway else "single.yaml"
        self.collector = ManagedProcess(
            [binary, "--config", REPO / "collector-config" / config],
            workdir / "collector.log", env=env, name="otelcol",
        )
        jobs = {"otelcol": ([f"{LOOPBACK}:{self.ports['telemetry']}"], False)}
        if scrape_exporter:
            jobs["exporter"] = ([f"{LOOPBACK}:{self.ports['prometheus']}"], True)
        self.prometheus = _prometheus(workdir, "prometheus", self.prom_port, scrape_interval,
                                      jobs)

    @property
    def grpc(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['grpc']}"

    @property
    def prom_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prom_port}"

    @property
    def prom_rw_url(self) -> str:
        return f"http://{LOOPBACK}:{self.prom_rw_port}"

    def __enter__(self) -> Stack:
        if self.prometheus_rw is not None:
            self.prometheus_rw.start()
            wait_http_ok(f"{self.prom_rw_url}/-/ready", timeout=60, proc=self.prometheus_rw)
        self.collector.start()
        wait_http_ok(f"http://{LOOPBACK}:{self.ports['health']}/", proc=self.collector)
        self.prometheus.start()
        wait_http_ok(f"{self.prom_url}/-/ready", timeout=60, proc=self.prometheus)
        return self

    def __exit__(self, *exc: object) -> None:
        self.prometheus.stop()
        self.collector.stop()
        if self.prometheus_rw is not None:
            self.prometheus_rw.stop()


def _counter_sum(url: str, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` (matching ``labels``) on a /metrics page."""
    total = 0.0
    for line in requests.get(url, timeout=30).text.splitlines():
        if not line.startswith(name) or line[len(name)] not in " {":
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) of these processes so far; gone ones count 0."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def _sender(role: str, stack: Stack, workdir: Path, index: int, extra: Sequence[str],
            env: dict[str, str] | None = None) -> ManagedProcess:
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc_env.update(OTEL_EXPORTER_OTLP_ENDPOINT=stack.grpc, OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                    RANK=str(index), OTEL_SPARSE_RUN_ID=f"bench-{uuid.uuid4().hex[:6]}",
                    OMP_NUM_THREADS="1", **(env or {}))
    return ManagedProcess(
        [sys.executable, __file__, "--role", role, "--stop", str(workdir / "stop"), *extra],
        workdir / f"{role}-{index}.log", env=proc_env, name=f"{role}-{index}",
    )


# -- (a) capacity --------------------------------------------------------------------------


def capacity_case(
    kind: str, senders: int, layers: int, heads: int, interval_ms: int, args: argparse.Namespace,
) -> dict[str, Any]:
    """One row of the capacity table."""
    duration, warmup = args.duration, args.warmup
    workdir = Path(tempfile.mkdtemp(prefix="otel-sparse-capacity-"))
    scrape_exporter = not kind.endswith("-noscrape")
    kind = kind.removesuffix("-noscrape")
    with Stack(workdir, args.scrape_interval, scrape_exporter=scrape_exporter) as stack:
        procs = [
            _sender(f"{kind}-sender", stack, workdir, i,
                    ["--layers", str(layers), "--heads", str(heads)],
                    {"OTEL_SPARSE_EXPORT_INTERVAL": str(interval_ms)})
            for i in range(senders)
        ]
        for p in procs:
            p.start()
        try:
            telemetry = f"http://{LOOPBACK}:{stack.ports['telemetry']}/metrics"
            prom_metrics = f"{stack.prom_url}/metrics"
            deadline = time.monotonic() + 300
            while _counter_sum(telemetry, "otelcol_receiver_accepted_metric_points") == 0:
                if time.monotonic() > deadline or not all(p.running for p in procs):
                    raise RuntimeError("senders never delivered:\n"
                                       + "\n".join(p.log_tail(10) for p in procs))
                time.sleep(0.5)
            time.sleep(warmup)
            pids = {"collector": [stack.collector.pid], "prometheus": [stack.prometheus.pid],
                    "senders": [p.pid for p in procs]}

            def snap() -> dict[str, float]:
                out = {
                    "t": time.monotonic(),
                    "accepted": _counter_sum(telemetry, "otelcol_receiver_accepted_metric_points"),
                    "refused": _counter_sum(telemetry, "otelcol_receiver_refused_metric_points"),
                    "appended": _counter_sum(prom_metrics,
                                             "prometheus_tsdb_head_samples_appended_total"),
                }
                out.update({f"cpu_{k}": _cpu([p for p in v if p]) for k, v in pids.items()})
                times = psutil.cpu_times()
                out["cpu_machine"] = sum(times) - times.idle - getattr(times, "iowait", 0.0)
                return out

            first = snap()
            time.sleep(duration)
            last = snap()
            scrape = query(stack.prom_url, 'scrape_duration_seconds{job="exporter"}')
            samples = query(stack.prom_url, 'scrape_samples_scraped{job="exporter"}')
            window = f"{max(1, round(duration))}s"
            up = query(stack.prom_url, f'avg_over_time(up{{job="exporter"}}[{window}])')
            t0 = time.monotonic()
            page = requests.get(f"http://{LOOPBACK}:{stack.ports['prometheus']}/metrics",
                                timeout=300).content
            page_s = time.monotonic() - t0
        finally:
            (workdir / "stop").touch()
            for p in procs:
                p.stop(timeout=20)
    dt = last["t"] - first["t"]
    series = senders * layers * heads
    n_bounds = len(_default_bounds())
    per_point = n_bounds + 1 + 2  # buckets incl. +Inf, _sum, _count
    rate = {k: (last[k] - first[k]) / dt for k in first if k != "t"}
    return {
        "sender": kind if scrape_exporter else f"{kind}*", "senders": senders, "series": series,
        "interval_ms": interval_ms, "offered": series / (interval_ms / 1000),
        "accepted_pts_s": rate["accepted"], "refused_pts_s": rate["refused"],
        "prom_samples_s": rate["appended"], "prom_pts_s": rate["appended"] / per_point,
        "cpu_collector": rate["cpu_collector"], "cpu_prometheus": rate["cpu_prometheus"],
        "cpu_senders": rate["cpu_senders"], "cpu_machine": rate["cpu_machine"],
        "page_mb": len(page) / 1e6, "page_s": page_s,
        "scrape_s": scrape[0][1] if scrape else float("nan"),
        "scrape_samples": samples[0][1] if samples else float("nan"),
        "up": up[0][1] if up else float("nan"),
    }


def _default_bounds() -> tuple[float, ...]:
    from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

    return DEFAULT_FLOAT_BOUNDARIES


def run_capacity(args: argparse.Namespace) -> None:
    cases = [
        # kind, senders, layers, heads, interval_ms
        ("facade", 2, 32, 64, 1000),
        ("facade", 4, 64, 64, 500),
        ("raw", 2, 64, 64, 250),
        ("raw", 4, 64, 64, 160),
        ("raw", 4, 64, 64, 80),
        ("raw-noscrape", 4, 64, 64, 80),  # nobody scrapes: the collector's intake alone
    ]
    if args.quick:
        cases = [cases[0], cases[3]]
    print(f"\n(a) capacity: senders -> one collector (single.yaml) -> Prometheus "
          f"(scrape every {args.scrape_interval}, same timeout); "
          f"{args.duration:.0f} s per row; target {TARGET_POINTS_PER_S:,} points/s")
    head = (f"{'sender':7} {'n':>2} {'series':>7} {'intvl':>6} {'offered/s':>10} "
            f"{'accepted/s':>11} {'refused/s':>9} {'prom smp/s':>11} {'prom pts/s':>10} "
            f"{'% target':>8} {'cpu col':>7} {'cpu prom':>8} {'cpu send':>8} "
            f"{'machine':>7} {'scrape s':>8} {'up':>4} {'page MB':>7} {'GET s':>6}")
    print(head)
    print("-" * len(head))
    for kind, senders, layers, heads, interval in cases:
        row = capacity_case(kind, senders, layers, heads, interval, args)
        print(f"{row['sender']:7} {row['senders']:>2} {row['series']:>7} "
              f"{row['interval_ms']:>6} {row['offered']:>10,.0f} {row['accepted_pts_s']:>11,.0f} "
              f"{row['refused_pts_s']:>9,.0f} {row['prom_samples_s']:>11,.0f} "
              f"{row['prom_pts_s']:>10,.0f} "
              f"{100 * row['accepted_pts_s'] / TARGET_POINTS_PER_S:>7.1f}% "
              f"{row['cpu_collector']:>7.2f} {row['cpu_prometheus']:>8.2f} "
              f"{row['cpu_senders']:>8.2f} {row['cpu_machine']:>7.2f} {row['scrape_s']:>8.3f} "
              f"{row['up']:>4.2f} {row['page_mb']:>7.1f} {row['page_s']:>6.2f}",
              flush=True)
    print("raw*: Prometheus does not scrape the exporter (the collector's intake alone). "
          "cpu columns: cores used (CPU seconds per second) over the window; 'machine' is every "
          f"process on the machine ({psutil.cpu_count()} cores, shared). prom pts/s = samples / "
          f"{len(_default_bounds()) + 3} (buckets + _sum + _count per histogram point). scrape s "
          "and up: Prometheus' last scrape of the exporter and its success ratio over the "
          "window; page MB / GET s: one /metrics of the exporter fetched after the window.")


# -- (b) realistic -------------------------------------------------------------------------


def run_realistic(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="otel-sparse-realistic-"))
    print(f"\n(b) realistic: one process, 32 layers x 32 heads x 2 metrics as [heads] tensors "
          f"per layer per step, steps back to back, {args.realistic_duration:.0f} s per mode; "
          f"gateway.yaml -> remote write, and its exporter scraped every "
          f"{args.realistic_scrape}")
    results: dict[str, dict[str, Any]] = {}
    with Stack(workdir, args.realistic_scrape, gateway=True) as stack:
        for mode in ("off", "events", "otlp"):
            marker = workdir / f"steps-{mode}.json"
            env = {"OTEL_SPARSE_EXPORTERS": "otlp" if mode == "otlp" else "none"}
            proc = _sender("trainer", stack, workdir, 0,
                           ["--mode", mode, "--duration", str(args.realistic_duration),
                            "--out", str(marker), "--log-dir", str(workdir / f"run-{mode}")],
                           env)
            polls: dict[str, list[tuple[float, float]]] = {"remote write": [], "scrape": []}
            proc.start()
            run_id = (proc.env or {})["OTEL_SPARSE_RUN_ID"]
            promql = f'sum(sparse_attention_{STEP_COUNTER}_total{{run_id="{run_id}"}})'
            while proc.running:
                if mode == "otlp":
                    for path, url in (("remote write", stack.prom_rw_url),
                                      ("scrape", stack.prom_url)):
                        with contextlib.suppress(Exception):
                            got = query(url, promql)
                            polls[path].append((time.time(), got[0][1] if got else 0.0))
                time.sleep(0.1)
            if proc.returncode != 0:
                raise RuntimeError(f"trainer ({mode}) failed:\n{proc.log_tail(30)}")
            result = json.loads(marker.read_text())
            if mode == "otlp":
                result["delays"] = {path: _delays(result["step_times"], p)
                                    for path, p in polls.items()}
                result["transit"] = {path: _transit(result["exports"], p)
                                     for path, p in polls.items()}
                scrape = query(stack.prom_url, 'scrape_duration_seconds{job="exporter"}')
                up = query(stack.prom_url,
                           f'avg_over_time(up{{job="exporter"}}[{round(args.realistic_duration)}s])')
                result["scrape"] = (scrape[0][1] if scrape else float("nan"),
                                    up[0][1] if up else float("nan"))
            results[mode] = result
    _print_realistic(results)


def _transit(exports: list[list[float]], polls: list[tuple[float, float]]) -> list[float]:
    """Per export: first poll that saw its step count minus the export's end."""
    out = []
    for began, took, steps in exports:
        seen = next((t for t, v in polls if v >= steps > 0), None)
        if seen is not None:
            out.append(seen - (began + took))
    return out


def _delays(step_times: list[float], polls: list[tuple[float, float]]) -> list[float]:
    """For each step k (1-based), first poll that saw the counter >= k minus log time."""
    delays = []
    i = 0
    for k, logged_at in enumerate(step_times, 1):
        while i < len(polls) and polls[i][1] < k:
            i += 1
        if i == len(polls):
            break
        delays.append(polls[i][0] - logged_at)
    return delays


def _print_realistic(results: dict[str, dict[str, Any]]) -> None:
    off, otlp = results["off"], results["otlp"]
    head = f"{'mode':8} {'steps/s':>8} {'CPU ms/step':>11} {'process cores':>13}"
    print(head)
    print("-" * len(head))
    for mode, r in results.items():
        print(f"{mode:8} {r['steps'] / r['wall_s']:>8.2f} {1000 * r['cpu_s'] / r['steps']:>11.2f} "
              f"{r['cpu_s'] / r['wall_s']:>13.2f}")
    base = off["cpu_s"] / off["steps"]
    for mode in ("events", "otlp"):
        r = results[mode]
        extra = r["cpu_s"] / r["steps"] - base
        print(f"{mode}: +{1000 * extra:.2f} ms CPU per step over 'off' "
              f"({100 * extra / (r['cpu_s'] / r['steps']):.2f}% of its CPU; A/B on a shared "
              f"machine, noisy)")
    threads = otlp["threads"]
    total = sum(threads.values())
    print("\nCPU by thread, mode otlp (seconds over the run; share of the process):")
    for name, cpu in sorted(threads.items(), key=lambda kv: -kv[1]):
        print(f"  {name:28} {cpu:8.3f} s {100 * cpu / total:6.2f}%")
    ours = sum(v for k, v in threads.items() if k.startswith("otel-sparse-export"))
    writer = threads.get("otel-sparse-writer", 0.0)
    grpc = sum(v for k, v in threads.items() if k.startswith("grpc") or k.startswith("other:"))
    print(f"  export (exporter threads + gRPC/other native threads): "
          f"{100 * (ours + grpc) / total:.2f}% of process CPU (target < 2%)")
    print(f"  writer (event file + aggregation + snapshot): {100 * writer / total:.2f}%")
    print(f"  all otel_sparse background work: {100 * (ours + grpc + writer) / total:.2f}%")
    print(f"  log() calls on the training thread: {100 * otlp['log_s'] / total:.2f}% "
          f"({1e6 * otlp['log_s'] / otlp['log_calls']:.1f} us CPU per call, thread_time)")
    events = otlp["log_calls"]
    print(f"  writer CPU per logged event: {1e6 * writer / events:.1f} us "
          f"({events} events: {otlp['steps']} steps x 65)")
    ev = results["events"]
    ev_writer = ev["threads"].get("otel-sparse-writer", 0.0)
    per_event = 1e6 * ev_writer / ev["log_calls"]
    print(f"  same loop, event file only (exporters none): writer {per_event:.1f} us per event, "
          f"{100 * ev_writer / sum(ev['threads'].values()):.2f}% of that process")
    exports = otlp.get("exports") or []
    if exports:
        starts = [t for t, _, _ in exports]
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        took = [d for _, d, _ in exports]
        print(f"  OTLP exports: {len(exports)}, each {1000 * statistics.mean(took):.0f} ms on "
              f"average (max {1000 * max(took):.0f} ms), "
              f"{statistics.mean(gaps) if gaps else float('nan'):.2f} s apart")
        steps = otlp["step_times"]
        waits = [min((t for t in starts if t >= s), default=float("nan")) - s for s in steps]
        waits = [w for w in waits if w == w]
        if waits:
            print(f"  log() -> start of the export that carries it: median "
                  f"{statistics.median(waits):.2f} s, max {max(waits):.2f} s")
    print("\ndelay from log() until Prometheus answers with it (export interval 10 s, gateway "
          "batch 200 ms):")
    for path, delays in (otlp.get("delays") or {}).items():
        if len(delays) < 2:
            print(f"  {path:13}: no data")
            continue
        q = statistics.quantiles(delays, n=20)
        print(f"  {path:13}: {len(delays)} steps: min {min(delays):.2f} s, median "
              f"{statistics.median(delays):.2f} s, p95 {q[18]:.2f} s, max {max(delays):.2f} s")
    for path, transit in (otlp.get("transit") or {}).items():
        if transit:
            print(f"  {path:13}: end of an export -> Prometheus answers with its value: "
                  f"median {statistics.median(transit):.2f} s, max {max(transit):.2f} s "
                  f"({len(transit)} exports)")
    if "scrape" in otlp:
        duration, up = otlp["scrape"]
        print(f"  exporter scrape: last took {duration:.2f} s, success ratio {up:.2f}")


# -- roles run as child processes ------------------------------------------------------------


def _stop_requested(path: str) -> bool:
    return os.path.exists(path)


def role_facade_sender(args: argparse.Namespace) -> None:
    """Log every (layer, head) once, then one more step per interval; export OTLP."""
    import numpy as np

    from otel_sparse import MicroMetricLogger

    MicroMetricLogger.register_metric(METRIC, float)
    logger = MicroMetricLogger(log_path=tempfile.mkdtemp(), enabled_metrics="all",
                               exporters=["otlp"])
    rng = np.random.default_rng(int(os.environ.get("RANK", "0")))
    interval = float(os.environ.get("OTEL_SPARSE_EXPORT_INTERVAL", "1000")) / 1000
    while not _stop_requested(args.stop):
        for layer in range(args.layers):
            logger.log(METRIC, rng.integers(0, 9, args.heads) / 8, {"layer_idx": layer})
        logger.flush()
        time.sleep(interval)
    logger.close()


def role_raw_sender(args: argparse.Namespace) -> None:
    """Build one request with the library, then send it over gRPC every interval (at once
    when behind): the collector's work without the Python encoding."""
    import grpc  # type: ignore[import-untyped, unused-ignore]
    import numpy as np
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
        MetricsServiceStub,
    )

    from otel_sparse import MicroMetricLogger

    MicroMetricLogger.register_metric(METRIC, float)
    logger = MicroMetricLogger(log_path=tempfile.mkdtemp(), enabled_metrics="all",
                               exporters=[])
    rng = np.random.default_rng(int(os.environ.get("RANK", "0")))
    for layer in range(args.layers):
        logger.log(METRIC, rng.integers(0, 9, args.heads) / 8, {"layer_idx": layer})
    logger.flush()
    request = encode_metrics(logger._pipeline.collect())  # type: ignore[union-attr]
    logger.close()
    target = os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].split("://", 1)[1]
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
    stub = MetricsServiceStub(channel)  # type: ignore[no-untyped-call, unused-ignore]
    interval = float(os.environ.get("OTEL_SPARSE_EXPORT_INTERVAL", "1000")) / 1000
    due = time.monotonic()
    while not _stop_requested(args.stop):
        with contextlib.suppress(grpc.RpcError):
            stub.Export(request, timeout=30)
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))  # behind schedule: send at once
    channel.close()


def _thread_cpu() -> dict[int, tuple[str, float]]:
    """tid -> (comm, CPU seconds) of every thread of this process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = stat.rsplit(")", 1)[1].split()
            out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _steps_in(data: Any) -> float:
    """The value of the step counter in a MetricsData snapshot (-1 if absent)."""
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name.endswith(STEP_COUNTER):
                    return float(sum(dp.value for dp in metric.data.data_points))
    return -1.0


def role_trainer(args: argparse.Namespace) -> None:
    """A sparse attention forward on the CPU, 32 layers, logging [heads] tensors per layer."""
    import torch

    from otel_sparse import MicroMetricLogger

    torch.set_num_threads(1)
    layers, heads, seq, dim = 32, 32, 64, 32
    for name in METRICS:
        MicroMetricLogger.register_metric(name, float)
    MicroMetricLogger.register_metric(STEP_COUNTER, int, kind="counter")
    exports: list[tuple[float, float, float]] = []
    logger = None
    if args.mode != "off":
        from otel_sparse.pipeline import ExportWorker

        export_now = ExportWorker.export_now

        def timed_export(self: ExportWorker, data: Any) -> bool:
            # Bench instrumentation only: when each OTLP export ran, how long it took, and
            # the step count it carried.
            began = time.time()
            ok = export_now(self, data)
            exports.append((began, time.time() - began, _steps_in(data)))
            return ok

        ExportWorker.export_now = timed_export  # type: ignore[method-assign]
        logger = MicroMetricLogger(log_path=args.log_dir, enabled_metrics="all")
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(layers, heads, seq, dim, generator=gen)
    k = torch.randn(layers, heads, seq, dim, generator=gen)
    log_s = 0.0
    log_calls = 0
    step_times: list[float] = []
    start_wall = time.monotonic()
    start_cpu = time.process_time()
    start_threads = _thread_cpu()
    steps = 0
    while time.monotonic() - start_wall < args.duration:
        for layer in range(layers):
            scores = torch.softmax(q[layer] @ k[layer].transpose(-1, -2) / dim**0.5, dim=-1)
            keep = scores > (1.0 / seq)
            density = keep.float().mean(dim=(-2, -1))          # [heads]
            error = (scores * ~keep).sum(dim=-1).mean(dim=-1)  # [heads]: mass dropped
            if logger is not None:
                t0 = time.thread_time()
                logger.log(METRICS[0], density, {"layer_idx": layer})
                logger.log(METRICS[1], error, {"layer_idx": layer})
                log_s += time.thread_time() - t0
                log_calls += 2
        steps += 1
        if logger is not None:
            t0 = time.thread_time()
            logger.log(STEP_COUNTER, 1)
            log_s += time.thread_time() - t0
            log_calls += 1
        step_times.append(time.time())
    wall = time.monotonic() - start_wall
    cpu = time.process_time() - start_cpu
    end_threads = _thread_cpu()
    names = {t.native_id: t.name for t in threading.enumerate()}
    main_tid = threading.main_thread().native_id
    threads: dict[str, float] = {}
    for tid, (comm, used) in end_threads.items():
        before = start_threads.get(tid, (comm, 0.0))[1]
        name = "main (training + log())" if tid == main_tid else names.get(tid, f"other:{comm}")
        threads[name] = threads.get(name, 0.0) + used - before
    if logger is not None:
        logger.close()  # the final export is not part of the measured window
    Path(args.out).write_text(json.dumps({
        "steps": steps, "wall_s": wall, "cpu_s": cpu, "threads": threads,
        "log_s": log_s, "log_calls": max(1, log_calls), "step_times": step_times,
        "exports": exports,
    }))


def _roles() -> dict[str, Any]:
    return {"facade-sender": role_facade_sender, "raw-sender": role_raw_sender,
            "trainer": role_trainer}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["capacity", "realistic", "both"], default="both")
    parser.add_argument("--duration", type=float, default=20.0, help="capacity window, s")
    parser.add_argument("--warmup", type=float, default=5.0, help="capacity warm-up, s")
    parser.add_argument("--realistic-duration", type=float, default=45.0)
    parser.add_argument("--quick", action="store_true", help="two capacity rows only")
    parser.add_argument("--scrape-interval", default="5s",
                        help="Prometheus scrape interval (and timeout) in (a)")
    parser.add_argument("--realistic-scrape", default="5s",
                        help="scrape interval (and timeout) of the exporter in (b)")
    # child roles
    parser.add_argument("--role", choices=sorted(_roles()), help=argparse.SUPPRESS)
    parser.add_argument("--stop", help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--heads", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["off", "events", "otlp"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _roles()[args.role](args)
        return
    print(f"machine: {psutil.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.part in ("capacity", "both"):
        run_capacity(args)
    if args.part in ("realistic", "both"):
        run_realistic(args)


if __name__ == "__main__":
    main()
