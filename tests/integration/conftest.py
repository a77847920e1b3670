"""Fixtures that run the real otelcol-sparse Collector and Prometheus on free loopback ports.

`otelcol_bin` builds (or reuses) the distribution with scripts/build-collector.sh and
`prometheus_bin` needs /usr/bin/prometheus (scripts/install-prometheus.sh). Neither
skips: a missing tool fails the test with the reason, so a green run means the
processes really ran.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from _procs import (
    LOOPBACK,
    ManagedProcess,
    Sample,
    free_ports,
    query,
    wait_for_query,
    wait_http_ok,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "collector-config"
SHIPPED_CONFIGS = ("agent.yaml", "gateway.yaml", "single.yaml")
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-collector.sh"
VMAGENT_BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-vmagent.sh"
AGGREGATION_CONFIG = CONFIG_DIR / "aggregation.yaml"
INSTALL_PROMETHEUS = REPO_ROOT / "scripts" / "install-prometheus.sh"
PROMETHEUS = Path("/usr/bin/prometheus")

# A cold build (empty Go caches) takes 3-5 minutes on 2 cores; a cached one a few ms.
BUILD_TIMEOUT_S = 30 * 60
# Port variables of the shipped configs (docs/collector.md), one free port each.
PORT_VARS = {
    "grpc": "OTEL_SPARSE_OTLP_GRPC_PORT",
    "http": "OTEL_SPARSE_OTLP_HTTP_PORT",
    "health": "OTEL_SPARSE_HEALTH_PORT",
    "prometheus": "OTEL_SPARSE_PROMETHEUS_PORT",
    "telemetry": "OTEL_SPARSE_TELEMETRY_PORT",
}


def _built(script: Path) -> Path:
    """Run a build script that prints a binary's path; fail the test with its log if not."""
    try:
        done = subprocess.run(
            ["bash", str(script)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"{script} did not finish in {BUILD_TIMEOUT_S} s:\n{err}", pytrace=False)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-40:])
        pytest.fail(f"{script} exited {done.returncode}:\n{tail}", pytrace=False)
    path = Path(done.stdout.strip())
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{script} printed {done.stdout!r}, not an executable path", pytrace=False)
    return path


@pytest.fixture(scope="session")
def otelcol_bin() -> Path:
    """Path of the otelcol-sparse binary, built by scripts/build-collector.sh if needed."""
    return _built(BUILD_SCRIPT)


@pytest.fixture(scope="session")
def vmagent_bin() -> Path:
    """Path of vmagent (the aggregation tier), built by scripts/build-vmagent.sh if needed."""
    return _built(VMAGENT_BUILD_SCRIPT)


REMOTE_WRITE_ONLY = CONFIG_DIR / "remote-write-only.yaml"
"""The overlay for gateway.yaml: remote write only, no prometheus exporter (its port stays
closed). The 8-node aggregated layout's gateway, and the two-level layout's node collector
(docs/cluster.md, "Layouts")."""
OTLP_TO_VMAGENT = CONFIG_DIR / "otlp-to-vmagent.yaml"
"""The overlay for gateway.yaml that sends OTLP to vmagent's /opentelemetry/v1/metrics
instead of remote write (vmagent builds the _bucket/_sum/_count series itself)."""
# vmagent's flags for the OTLP intake and its relabel file, defined once in bench_cluster
# (the benches start vmagent the same way).
sys.path.insert(0, str(REPO_ROOT / "bench"))
from bench_cluster import (  # noqa: E402
    VMAGENT_OTLP_FLAGS,
    VMAGENT_OTLP_RELABEL,
)

__all__ = ["VMAGENT_OTLP_FLAGS", "VMAGENT_OTLP_RELABEL"]

PROTOCOLS = ("prw", "otlp")
"""How the gateway sends to vmagent: prometheusremotewrite (gateway.yaml as shipped) or
OTLP (OTLP_TO_VMAGENT, vmagent with VMAGENT_OTLP_FLAGS)."""
OVERLAYS = (REMOTE_WRITE_ONLY.name, OTLP_TO_VMAGENT.name)
"""Shipped configs that are only valid merged over another (a second ``--config``)."""

AGGREGATION_ENV = {
    "OTEL_SPARSE_AGGR_INTERVAL": "1s",
    "OTEL_SPARSE_AGGR_STALENESS": "10m",
    "OTEL_SPARSE_AGGR_SIGNED_SUMS": "^$",
    "OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW": "0s",
    "OTEL_SPARSE_AGGR_NODE": "",
}
"""The placeholders of aggregation.yaml, as tests set them (1 s flushes; one level, or the
central vmagent of two)."""


class _Server:
    """What Collector, Vmagent and Prometheus share: a ManagedProcess that is ready once
    ``ready_url`` answers 200."""

    process: ManagedProcess

    @property
    def ready_url(self) -> str:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        """Start the process and wait until ``ready_url`` answers 200."""
        self.process.start()
        wait_http_ok(self.ready_url, timeout=timeout, proc=self.process)

    def stop(self) -> int | None:
        """Stop the process (SIGTERM, then SIGKILL); return its exit code."""
        return self.process.stop()

    def restart(self, timeout: float = 30.0) -> None:
        """Stop, then start again with the same arguments and environment."""
        self.stop()
        self.start(timeout=timeout)


@dataclass
class Vmagent(_Server):
    """A running vmagent that stream-aggregates (aggregation.yaml) into one remote write."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        """Base URL (health, /metrics)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def remote_write_url(self) -> str:
        """Where the gateway's prometheusremotewrite sends."""
        return f"{self.url}/api/v1/write"

    @property
    def otlp_url(self) -> str:
        """Where the gateway's OTLP/HTTP exporter sends (OTLP_TO_VMAGENT)."""
        return f"{self.url}/opentelemetry/v1/metrics"

    @property
    def ready_url(self) -> str:
        """/health. A restart loses the aggregation state (it is in memory)."""
        return f"{self.url}/health"


@pytest.fixture
def vmagent_factory(vmagent_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Vmagent]]:
    """Start vmagents: `vmagent_factory(prom.remote_write_url, env={...}, keep_input=False)`.

    otlp: start with VMAGENT_OTLP_FLAGS (the gateway sends it OTLP).

    keep_input: also write the raw per-rank series, through a second ``-remoteWrite.url`` to
    the same Prometheus without aggregation (vmagent refuses ``keepInput`` together with
    ``keep_metric_names``; the raw series differ by their rank labels, so nothing collides).
    """
    started: list[Vmagent] = []

    def start(remote_write_url: str, env: Mapping[str, str] | None = None,
              keep_input: bool = False, name: str | None = None,
              otlp: bool = False) -> Vmagent:
        label = name or f"vmagent-{len(started)}"
        (port,) = free_ports(1)
        args = [
            str(vmagent_bin), f"-httpListenAddr={LOOPBACK}:{port}",
            f"-remoteWrite.url={remote_write_url}",
            f"-remoteWrite.streamAggr.config={AGGREGATION_CONFIG}",
            f"-remoteWrite.tmpDataPath={tmp_path / (label + '-data')}",
            "-remoteWrite.forcePromProto=true", "-remoteWrite.flushInterval=200ms",
            "-loggerLevel=INFO",
        ]
        if keep_input:  # a second, unaggregated remote write to the same Prometheus
            args[2:4] = [f"-remoteWrite.url={remote_write_url}",
                         f"-remoteWrite.url={remote_write_url}",
                         f"-remoteWrite.streamAggr.config={AGGREGATION_CONFIG},"]
        if otlp:  # the gateway sends OTLP (OTLP_TO_VMAGENT)
            args.extend(VMAGENT_OTLP_FLAGS)
        full_env = {**os.environ, **AGGREGATION_ENV, **(env or {})}
        proc = ManagedProcess(args, tmp_path / f"{label}.log", env=full_env, name=label)
        agent = Vmagent(port=port, process=proc)
        started.append(agent)
        agent.start()
        return agent

    yield start
    for agent in reversed(started):
        agent.stop()


@pytest.fixture(scope="session")
def prometheus_bin() -> Path:
    """Path of the Prometheus server (Debian's), installed by the script if missing."""
    if not PROMETHEUS.exists():
        done = subprocess.run(
            ["bash", str(INSTALL_PROMETHEUS)],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if done.returncode != 0 or not PROMETHEUS.exists():
            pytest.fail(
                f"no {PROMETHEUS} and {INSTALL_PROMETHEUS} failed "
                f"({done.returncode}):\n{done.stderr[-3000:]}",
                pytrace=False,
            )
    return PROMETHEUS


@dataclass
class Collector(_Server):
    """A running otelcol-sparse with one of our configs, every port a free loopback one."""

    config: Path
    env: dict[str, str]
    ports: dict[str, int]
    process: ManagedProcess

    @property
    def grpc_endpoint(self) -> str:
        """host:port of the OTLP gRPC receiver."""
        return f"{LOOPBACK}:{self.ports['grpc']}"

    @property
    def http_endpoint(self) -> str:
        """Base URL of the OTLP HTTP receiver (append /v1/metrics)."""
        return f"http://{LOOPBACK}:{self.ports['http']}"

    @property
    def prometheus_target(self) -> str:
        """host:port that serves the prometheus exporter's /metrics."""
        return f"{LOOPBACK}:{self.ports['prometheus']}"

    @property
    def telemetry_target(self) -> str:
        """host:port that serves the collector's own metrics."""
        return f"{LOOPBACK}:{self.ports['telemetry']}"

    @property
    def health_url(self) -> str:
        """The health_check extension's URL."""
        return f"http://{LOOPBACK}:{self.ports['health']}/"

    @property
    def ready_url(self) -> str:
        """The health_check extension: ready once it answers 200."""
        return self.health_url


@pytest.fixture
def collector_factory(otelcol_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Collector]]:
    """Start collectors: `collector_factory("single.yaml", env={...}, name="single")`.

    `config` is a shipped config's file name or a path; `overlays` are further ``--config``
    sources merged over it (e.g. REMOTE_WRITE_ONLY). Every port variable of the
    shipped configs gets a free port, OTEL_SPARSE_LISTEN_HOST is 127.0.0.1, and `env`
    adds or overrides variables. Every collector started is stopped after the test.
    """
    started: list[Collector] = []

    def start(
        config: str | Path,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        overlays: Sequence[str | Path] = (),
    ) -> Collector:
        path = Path(config)
        if not path.is_absolute() and not path.exists():
            path = CONFIG_DIR / path
        if not path.is_file():
            raise FileNotFoundError(path)
        label = name or f"otelcol-{path.stem}-{len(started)}"
        ports = dict(zip(PORT_VARS, free_ports(len(PORT_VARS)), strict=True))
        full_env = dict(os.environ)
        full_env["OTEL_SPARSE_LISTEN_HOST"] = LOOPBACK
        full_env.update({var: str(ports[key]) for key, var in PORT_VARS.items()})
        full_env.update(env or {})
        proc = ManagedProcess(
            [otelcol_bin, "--config", path, *(f"--config={o}" for o in overlays)],
            tmp_path / f"{label}.log",
            env=full_env,
            name=label,
        )
        collector = Collector(config=path, env=full_env, ports=ports, process=proc)
        started.append(collector)
        collector.start()
        return collector

    yield start
    for collector in reversed(started):
        collector.stop()


@dataclass
class Prometheus(_Server):
    """A running Prometheus with its own TSDB under tmp_path."""

    port: int
    config_path: Path
    tsdb: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        """Base URL (HTTP API and UI)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def remote_write_url(self) -> str:
        """Remote-write receiver URL (needs remote_write_receiver=True)."""
        return f"{self.url}/api/v1/write"

    @property
    def ready_url(self) -> str:
        """Prometheus' readiness endpoint."""
        return f"{self.url}/-/ready"

    def query(self, promql: str) -> list[Sample]:
        """Instant query; see _procs.query."""
        return query(self.url, promql)

    def wait_for_query(
        self,
        promql: str,
        predicate: Callable[[list[Sample]], bool] = bool,
        timeout: float = 30.0,
        procs: Sequence[ManagedProcess] = (),
    ) -> list[Sample]:
        """Poll until `predicate(result)`; see _procs.wait_for_query."""
        return wait_for_query(
            self.url, promql, predicate, timeout=timeout, procs=(self.process, *procs)
        )

    def load_rules(self, rule_files: Sequence[Path], timeout: float = 60.0) -> None:
        """Set the config's rule_files, reload (SIGHUP) and wait until every file's groups
        are loaded. Their evaluation starts now (every second)."""
        config: dict[str, Any] = yaml.safe_load(self.config_path.read_text())
        config["rule_files"] = [str(path) for path in rule_files]
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGHUP)
        want = {str(path) for path in rule_files}

        def loaded(_: list[Sample]) -> bool:
            groups = requests.get(f"{self.url}/api/v1/rules", timeout=5).json()["data"]
            return {g["file"] for g in groups["groups"]} == want

        self.wait_for_query("vector(1)", loaded, timeout=timeout)


@pytest.fixture
def prometheus_factory(prometheus_bin: Path, tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start Prometheus servers: `prometheus_factory(["127.0.0.1:8889"])`.

    Args of the returned callable:
        targets: host:port list (job "otelcol"), or a mapping job -> host:port list,
            scraped every second with honor_labels (so the exporter's job/instance,
            i.e. service.name/service.instance.id, stay as they are).
        remote_write_receiver: start with --web.enable-remote-write-receiver.
        name: used for the log file and TSDB directory.
        native_histograms: start with --enable-feature=native-histograms (scrapes then
            ask for the protobuf format, the one that carries native histograms).
        out_of_order_window: storage.tsdb.out_of_order_time_window (e.g. "10m"), as
            Prometheus behind the aggregator runs.
        rule_files: rule files to load (e.g. the shipped alerts.yml), evaluated every
            second.
    """
    started: list[Prometheus] = []

    def start(
        targets: Sequence[str] | Mapping[str, Sequence[str]] = (),
        remote_write_receiver: bool = False,
        name: str | None = None,
        timeout: float = 60.0,
        native_histograms: bool = False,
        out_of_order_window: str | None = None,
        rule_files: Sequence[Path] = (),
    ) -> Prometheus:
        label = name or f"prometheus-{len(started)}"
        jobs = (
            dict(targets)
            if isinstance(targets, Mapping)
            else ({"otelcol": list(targets)} if targets else {})
        )
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": True,
                    "static_configs": [{"targets": list(hosts)}],
                }
                for job, hosts in jobs.items()
            ],
        }
        if rule_files:
            config["rule_files"] = [str(path) for path in rule_files]
        if out_of_order_window:
            config["storage"] = {"tsdb": {"out_of_order_time_window": out_of_order_window}}
        config_path = tmp_path / f"{label}.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        tsdb = tmp_path / f"{label}-tsdb"
        tsdb.mkdir()
        (port,) = free_ports(1)
        args = [
            str(prometheus_bin),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tsdb}",
            f"--web.listen-address={LOOPBACK}:{port}",
            "--log.level=info",
        ]
        if remote_write_receiver:
            args.append("--web.enable-remote-write-receiver")
        if native_histograms:
            args.append("--enable-feature=native-histograms")
        proc = ManagedProcess(args, tmp_path / f"{label}.log", name=label)
        prom = Prometheus(port=port, config_path=config_path, tsdb=tsdb, process=proc)
        started.append(prom)
        prom.start(timeout=timeout)
        return prom

    yield start
    for prom in reversed(started):
        prom.stop()


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    """collector-config/manifest.yaml, parsed."""
    doc: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "manifest.yaml").read_text())
    return doc


@dataclass
class AggregatedPath:
    """The aggregation tier, started: [agent ->] gateway --remote write--> vmagent
    (aggregation.yaml) --remote write--> Prometheus."""

    prom: Prometheus
    vmagent: Vmagent
    gateway: Collector
    agent: Collector | None

    @property
    def otlp_endpoint(self) -> str:
        """host:port where ranks send OTLP/gRPC: the agent if there is one, else the gateway."""
        return (self.agent or self.gateway).grpc_endpoint

    @property
    def procs(self) -> list[ManagedProcess]:
        """The collector tier's processes (vmagent, gateway, agent), for waits to watch."""
        return [self.vmagent.process, self.gateway.process,
                *([self.agent.process] if self.agent else [])]


@pytest.fixture
def aggregated_path_factory(
    collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus],
    vmagent_factory: Callable[..., Vmagent],
) -> Callable[..., AggregatedPath]:
    """Start the aggregation tier: ``aggregated_path_factory(agent=True)``.

    Args of the returned callable:
        agent: put a node agent (agent.yaml) in front of the gateway.
        out_of_order_window: Prometheus' storage.tsdb.out_of_order_time_window.
        vmagent_env: extra environment of vmagent (aggregation.yaml's placeholders).
        keep_input: vmagent also writes the raw per-rank series (the debugging opt-in).
        rule_files: rule files Prometheus loads from the start.
        protocol: how the gateway sends to vmagent, one of PROTOCOLS: "prw" (remote write,
            gateway.yaml as shipped) or "otlp" (OTLP_TO_VMAGENT; vmagent with
            VMAGENT_OTLP_FLAGS).
        name: suffix of the processes' names (two paths in one test).
    """

    def start(agent: bool = False, out_of_order_window: str = "10m",
              vmagent_env: Mapping[str, str] | None = None, keep_input: bool = False,
              rule_files: Sequence[Path] = (), protocol: str = "prw",
              name: str = "") -> AggregatedPath:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} is none of {PROTOCOLS}")
        otlp = protocol == "otlp"
        prom = prometheus_factory(remote_write_receiver=True, name=f"prom{name}",
                                  out_of_order_window=out_of_order_window,
                                  rule_files=rule_files)
        vmagent = vmagent_factory(prom.remote_write_url, name=f"vmagent{name}",
                                  env=vmagent_env, keep_input=keep_input, otlp=otlp)
        env = {"OTEL_SPARSE_REMOTE_WRITE_URL": vmagent.remote_write_url}
        if otlp:
            env["OTEL_SPARSE_VMAGENT_OTLP_URL"] = vmagent.otlp_url
        gateway = collector_factory(
            "gateway.yaml", env=env, name=f"gateway{name}",
            overlays=(OTLP_TO_VMAGENT,) if otlp else ())
        node = collector_factory(
            "agent.yaml", env={"OTEL_SPARSE_GATEWAY_ENDPOINT": gateway.grpc_endpoint},
            name=f"agent{name}") if agent else None
        return AggregatedPath(prom, vmagent, gateway, node)

    return start
