"""deploy/kubernetes (up to about 8 nodes) and deploy/kubernetes/two-level (128 nodes):
manifests validate against the Kubernetes JSON schemas (offline), the ConfigMaps are the
shipped Collector and vmagent configs, and workloads, Services and configs agree."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _deploy import (
    COLLECTOR_CONFIG,
    K8S_DIR,
    REPO,
    collector_ports,
    env_refs,
    load_yaml,
    load_yaml_all,
    merge_configs,
    resolve,
)

# vmagent's flags for the gateway's OTLP, defined once (the benches and integration tests use them)
sys.path.insert(0, str(REPO / "bench"))
from bench_cluster import VMAGENT_OTLP_FLAGS, VMAGENT_OTLP_RELABEL

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the message is the point
    kubernetes_validate = None

NAMESPACE = "otel-sparse"
# Oldest supported (internalTrafficPolicy is GA since 1.26) and the newest schemas shipped.
K8S_VERSIONS = ("1.29.0", "latest")
TWO_LEVEL_DIR = K8S_DIR / "two-level"
LAYOUT_DIRS = (K8S_DIR, TWO_LEVEL_DIR)


def _manifest_files(folder: Path = K8S_DIR) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


MANIFEST_FILES = _manifest_files()
# (ConfigMap name, data key) -> shipped config it must hold verbatim (both layouts).
CONFIGMAP_SOURCES = {
    ("otelcol-sparse-agent", "config.yaml"): COLLECTOR_CONFIG / "agent.yaml",
    ("otelcol-sparse-gateway", "config.yaml"): COLLECTOR_CONFIG / "gateway.yaml",
    ("otelcol-sparse-gateway", "remote-write-only.yaml"):
        COLLECTOR_CONFIG / "remote-write-only.yaml",
    ("otelcol-sparse-gateway", "otlp-to-vmagent.yaml"): COLLECTOR_CONFIG / "otlp-to-vmagent.yaml",
    ("otelcol-sparse-node", "config.yaml"): COLLECTOR_CONFIG / "gateway.yaml",
    ("otelcol-sparse-node", "remote-write-only.yaml"): COLLECTOR_CONFIG / "remote-write-only.yaml",
    ("otel-sparse-aggregator", "aggregation.yaml"): COLLECTOR_CONFIG / "aggregation.yaml",
    ("otel-sparse-aggregator", "vmagent-otlp-relabel.yaml"):
        COLLECTOR_CONFIG / "vmagent-otlp-relabel.yaml",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _objects(folder: Path = K8S_DIR) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in _manifest_files(folder) for doc in load_yaml_all(path)]


def _of_kind(*kinds: str, folder: Path = K8S_DIR) -> list[dict]:
    return [doc for _, doc in _objects(folder) if doc["kind"] in kinds]


def _named(kind: str, name: str, folder: Path = K8S_DIR) -> dict:
    (doc,) = [d for d in _of_kind(kind, folder=folder) if d["metadata"]["name"] == name]
    return doc


def _workloads(folder: Path = K8S_DIR) -> list[dict]:
    return _of_kind("DaemonSet", "Deployment", folder=folder)


def _container(workload: dict, image: str) -> dict:
    """The one container of ``workload`` whose image starts with ``image``."""
    (container,) = [c for c in workload["spec"]["template"]["spec"]["containers"]
                    if c["image"].startswith(image)]
    return container


def _runs(workload: dict, image: str) -> bool:
    return any(c["image"].startswith(image)
               for c in workload["spec"]["template"]["spec"]["containers"])


def _collectors(folder: Path = K8S_DIR) -> list[dict]:
    """The workloads that run otelcol-sparse."""
    return [w for w in _workloads(folder) if _runs(w, "otelcol-sparse")]


def _all_collectors() -> list[dict]:
    return [w for folder in LAYOUT_DIRS for w in _collectors(folder)]


def _object_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    return f"{path.relative_to(K8S_DIR)}:{doc['kind']}/{doc['metadata']['name']}"


def _container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _config_files(workload: dict) -> list[Path]:
    """The shipped config files the workload's otelcol runs, in --config order: each path
    is a mount of a ConfigMap volume, each key a file of collector-config/."""
    pod = workload["spec"]["template"]["spec"]
    container = _container(workload, "otelcol-sparse")
    files = []
    for arg in container["args"]:
        assert arg.startswith("--config="), arg
        path = Path(arg.split("=", 1)[1])
        (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        (item,) = [i for i in volume["configMap"]["items"] if i["path"] == path.name]
        files.append(CONFIGMAP_SOURCES[(volume["configMap"]["name"], item["key"])])
    return files


def _config_of(workload: dict, env: dict[str, str]) -> dict:
    """The workload's collector config: its files merged in order, env resolved."""
    merged: dict = {}
    for path in _config_files(workload):
        merged = merge_configs(merged, load_yaml(path))
    return resolve(merged, env)


def _vmagent_flags(container: dict) -> dict[str, str]:
    """vmagent's -flag=value arguments, also when a shell starts it (the node sidecar)."""
    args = container.get("args", [])
    if container.get("command", [])[:2] == ["/bin/sh", "-c"]:
        args = shlex.split(args[0])
    flags = {}
    for arg in args:
        if arg.startswith("-") and "=" in arg:
            name, value = arg.split("=", 1)
            flags[name.lstrip("-")] = value
    return flags


def _seconds(duration: str) -> float:
    """A Go duration of one unit (30s, 2m, 1h) in seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    return float(duration[:-1]) * units[duration[-1]]


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / (1024 * 1024)


@pytest.fixture(scope="module")
def validator():
    """kubernetes_validate; fails (never skips) when missing, so CI cannot pass without it."""
    if kubernetes_validate is None:
        pytest.fail(
            "kubernetes-validate is not installed: it ships the Kubernetes JSON schemas "
            "these tests validate against offline (pip install 'kubernetes-validate>=1.30', "
            "part of the project's test extra)",
            pytrace=False,
        )
    return kubernetes_validate


class TestSchemas:
    def test_manifests_found(self):
        kinds = {doc["kind"] for _, doc in _objects()}
        assert kinds >= {"Namespace", "ConfigMap", "DaemonSet", "Deployment", "Service"}

    @pytest.mark.parametrize("version", K8S_VERSIONS)
    @pytest.mark.parametrize("item", [i for d in LAYOUT_DIRS for i in _objects(d)],
                             ids=_object_id)
    def test_validates_strictly(self, validator, item, version):
        """Each object matches its kind's schema; unknown fields (typos) are errors."""
        _, doc = item
        if version == "latest":
            version = validator.utils.latest_version()
        try:
            validator.validate(doc, version, strict=True)
        except validator.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{_object_id(item)} against {version}: {where}: {e.message}")
        except validator.SchemaNotFoundError as e:
            pytest.fail(f"{_object_id(item)}: {e.message}")


class TestConfigMaps:
    def test_generator_check_passes(self):
        """scripts/gen-k8s-configmaps.py --check: the ConfigMaps are what it would write."""
        result = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "gen-k8s-configmaps.py"), "--check"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    @pytest.mark.parametrize("folder", LAYOUT_DIRS, ids=lambda d: d.name)
    def test_holds_shipped_config_verbatim(self, folder):
        """Every data key of every ConfigMap is a file of collector-config/, byte for byte."""
        for configmap in _of_kind("ConfigMap", folder=folder):
            for key, text in configmap["data"].items():
                source = CONFIGMAP_SOURCES[(configmap["metadata"]["name"], key)]
                assert text == source.read_text(), (configmap["metadata"]["name"], key)


class TestConsistency:
    @pytest.mark.parametrize("folder", LAYOUT_DIRS, ids=lambda d: d.name)
    def test_kustomization_lists_every_manifest(self, folder):
        kustomization = load_yaml(folder / "kustomization.yaml")
        assert sorted(kustomization["resources"]) == sorted(
            p.name for p in _manifest_files(folder))

    @pytest.mark.parametrize("folder", LAYOUT_DIRS, ids=lambda d: d.name)
    def test_namespace(self, folder):
        (namespace,) = _of_kind("Namespace", folder=folder)
        assert namespace["metadata"]["name"] == NAMESPACE
        for item in _objects(folder):
            if item[1]["kind"] != "Namespace":
                assert item[1]["metadata"]["namespace"] == NAMESPACE, _object_id(item)

    def test_agent_is_a_daemonset_and_gateway_a_deployment(self):
        components = {
            w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: w["kind"]
            for w in _workloads()
        }
        assert components == {"agent": "DaemonSet", "gateway": "Deployment",
                              "aggregator": "Deployment"}

    def test_selectors_match_pod_labels(self):
        for workload in _workloads():
            selector = workload["spec"]["selector"]["matchLabels"]
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), workload["metadata"]["name"]

    @pytest.mark.parametrize("service", _of_kind("Service"), ids=lambda s: s["metadata"]["name"])
    def test_service_reaches_a_workload_port(self, service):
        """Each Service selects one workload's pods, and its targetPorts are named ports there."""
        matches = [
            w
            for w in _workloads()
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matches) == 1, service["metadata"]["name"]
        (container,) = matches[0]["spec"]["template"]["spec"]["containers"]
        port_names = {p["name"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, port

    def test_agent_service_is_node_local(self):
        (agent,) = [s for s in _of_kind("Service") if s["metadata"]["name"].endswith("-agent")]
        assert agent["spec"]["internalTrafficPolicy"] == "Local"

    @pytest.mark.parametrize("workload", _all_collectors(), ids=lambda w: w["metadata"]["name"])
    def test_workload_matches_its_collector_config(self, workload):
        """Ports, probes, listen address, required env and memory limits agree with the config
        (its files merged in --config order)."""
        container = _container(workload, "otelcol-sparse")
        name = workload["metadata"]["name"]
        env = _container_env(container)

        # Every ${env:X} without a default is set (or the Collector refuses to start).
        required = {
            k for path in _config_files(workload)
            for k, default in env_refs(path.read_text()).items() if default is None
        }
        assert required <= set(env), f"{name}: unset {sorted(required - set(env))}"

        config = _config_of(workload, env)
        listening = collector_ports(config)
        # and nothing declared that the collector does not open (the dropped exporter's port)
        assert {p["name"] for p in container["ports"]} == set(listening), name
        declared = {p["name"]: p for p in container["ports"]}
        for port_name, (host, port) in listening.items():
            assert host not in LOOPBACK, f"{name}: {port_name} listens on {host}"
            assert declared[port_name]["containerPort"] == port, f"{name}: {port_name}"
            if "hostPort" in declared[port_name]:
                assert declared[port_name]["hostPort"] == port

        # Probes hit the health_check extension.
        for probe in ("readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] == "health", f"{name}: {probe}"
            assert config["extensions"]["health_check"].get("path", "/") == get["path"]

        # memory_limiter stays below the container's memory limit.
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert {"cpu", "memory"} <= set(resources["limits"]), name
        limiter = config["processors"]["memory_limiter"]
        assert int(limiter["limit_mib"]) < _mib(resources["limits"]["memory"]), name
        assert int(limiter["spike_limit_mib"]) < int(limiter["limit_mib"]), name

    def test_gateway_writes_to_aggregator_and_aggregator_config_is_complete(self):
        """gateway -> aggregator Service as OTLP (otlp-to-vmagent.yaml: no prometheus exporter
        behind the aggregator, no remote write), the aggregator with the OTLP intake's flags
        (VMAGENT_OTLP_FLAGS, the relabel file mounted verbatim where its flag reads it) and
        the shipped aggregation.yaml with every placeholder set, one level (first samples in
        full, no node label). Remote write to the aggregator stays configured for
        remote-write-only.yaml."""
        (gateway,) = [w for w in _collectors() if w["kind"] == "Deployment"]
        env = _container_env(_container(gateway, "otelcol-sparse"))
        assert _config_files(gateway) == [COLLECTOR_CONFIG / "gateway.yaml",
                                          COLLECTOR_CONFIG / "otlp-to-vmagent.yaml"]
        config = _config_of(gateway, env)
        assert config["service"]["pipelines"]["metrics"]["exporters"] == ["otlp_http/vmagent"]
        service = _named("Service", "otelcol-sparse-gateway")
        assert "prom-exporter" not in {p["name"] for p in service["spec"]["ports"]}
        assert env["OTEL_SPARSE_REMOTE_WRITE_URL"] == _aggregator_url(K8S_DIR)
        assert env["OTEL_SPARSE_VMAGENT_OTLP_URL"] == _aggregator_url(K8S_DIR).replace(
            "/api/v1/write", "/opentelemetry/v1/metrics")
        aggregator = _named("Deployment", "otel-sparse-aggregator")
        agg_env = _check_vmagent(aggregator, K8S_DIR)
        assert agg_env["OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW"] == "0s"
        assert agg_env["OTEL_SPARSE_AGGR_NODE"] == ""
        container = _container(aggregator, "victoriametrics/vmagent")
        flags = _vmagent_flags(container)
        relabel = Path(flags["remoteWrite.relabelConfig"])
        assert relabel.name == VMAGENT_OTLP_RELABEL.name
        assert [a for a in container["args"] if a.startswith("-opentelemetry")] == [
            f for f in VMAGENT_OTLP_FLAGS if f.startswith("-opentelemetry")]
        pod = aggregator["spec"]["template"]["spec"]
        (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == relabel.parent]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert {"key": relabel.name, "path": relabel.name} in volume["configMap"]["items"]
        configmap = _named("ConfigMap", volume["configMap"]["name"], K8S_DIR)
        assert configmap["data"][relabel.name] == VMAGENT_OTLP_RELABEL.read_text()

    def test_agent_forwards_to_gateway_service(self):
        (agent,) = [w for w in _collectors() if w["kind"] == "DaemonSet"]
        env = _container_env(_container(agent, "otelcol-sparse"))
        config = _config_of(agent, env)
        exporters = [e for k, e in config["exporters"].items() if k.startswith("otlp")]
        (endpoint,) = [e["endpoint"] for e in exporters]
        (gateway,) = [s for s in _of_kind("Service") if s["metadata"]["name"].endswith("-gateway")]
        grpc_port = next(p["port"] for p in gateway["spec"]["ports"] if p["name"] == "otlp-grpc")
        host = f"{gateway['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert endpoint == f"{host}:{grpc_port}"


def _aggregator_url(folder: Path) -> str:
    """The remote-write URL of the (central) aggregator Service of a layout."""
    service = _named("Service", "otel-sparse-aggregator", folder)
    port = service["spec"]["ports"][0]["port"]
    host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    return f"http://{host}:{port}/api/v1/write"


def _check_vmagent(workload: dict, folder: Path) -> dict[str, str]:
    """A vmagent container mounts the shipped aggregation.yaml where its flag reads it, sets
    every %{VAR} placeholder in it (vmagent refuses otherwise) and writes to
    $(OTEL_SPARSE_AGGR_REMOTE_WRITE_URL); returns its env."""
    pod = workload["spec"]["template"]["spec"]
    container = _container(workload, "victoriametrics/vmagent")
    flags = _vmagent_flags(container)
    config = Path(flags["remoteWrite.streamAggr.config"])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert {"key": config.name, "path": config.name} in volume["configMap"]["items"]
    configmap = _named("ConfigMap", volume["configMap"]["name"], folder)
    text = configmap["data"][config.name]
    assert text == (COLLECTOR_CONFIG / "aggregation.yaml").read_text()
    code = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
    env = _container_env(container)
    assert set(re.findall(r"%\{(\w+)\}", code)) <= set(env)
    assert flags["remoteWrite.url"] in ("$(OTEL_SPARSE_AGGR_REMOTE_WRITE_URL)",
                                        "$OTEL_SPARSE_AGGR_REMOTE_WRITE_URL")
    (data,) = [m for m in container["volumeMounts"]
               if m["mountPath"] == flags["remoteWrite.tmpDataPath"]]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == data["name"])
    return env


class TestTwoLevel:
    """deploy/kubernetes/two-level: a node collector + node vmagent per node, a central
    vmagent, no gateway (docs/kubernetes.md, "Three sizes")."""

    def test_components(self):
        components = {
            w["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: w["kind"]
            for w in _workloads(TWO_LEVEL_DIR)
        }
        assert components == {"node": "DaemonSet", "aggregator": "Deployment"}

    @pytest.mark.parametrize(("kind", "name"), [("Namespace", NAMESPACE),
                                                ("Service", "otel-sparse-aggregator"),
                                                ("ConfigMap", "otel-sparse-aggregator")])
    def test_shared_objects_equal_the_base_layout(self, kind, name):
        assert _named(kind, name, TWO_LEVEL_DIR) == _named(kind, name, K8S_DIR)

    def test_node_collector_writes_to_its_vmagent_only(self):
        (node,) = _collectors(TWO_LEVEL_DIR)
        env = _container_env(_container(node, "otelcol-sparse"))
        assert _config_files(node) == [COLLECTOR_CONFIG / "gateway.yaml",
                                       COLLECTOR_CONFIG / "remote-write-only.yaml"]
        config = _config_of(node, env)
        assert config["service"]["pipelines"]["metrics"]["exporters"] == ["prometheusremotewrite"]
        vmagent = _container(node, "victoriametrics/vmagent")
        port = _vmagent_flags(vmagent)["httpListenAddr"].rsplit(":", 1)[1]
        assert {"name": "http", "containerPort": int(port), "protocol": "TCP"} in vmagent["ports"]
        assert config["exporters"]["prometheusremotewrite"]["endpoint"] == (
            f"http://127.0.0.1:{port}/api/v1/write")
        service = _named("Service", "otelcol-sparse-node", TWO_LEVEL_DIR)
        assert service["spec"]["internalTrafficPolicy"] == "Local"

    def test_node_vmagent_is_the_node_level(self):
        """Every placeholder set; the node label is the node's name plus the start time
        (appended by the shell); first samples are baselines for longer than an export
        interval; writes to the central aggregator."""
        (node,) = _collectors(TWO_LEVEL_DIR)
        vmagent = _container(node, "victoriametrics/vmagent")
        env = _check_vmagent(node, TWO_LEVEL_DIR)
        (node_name,) = [e for e in vmagent["env"] if e["name"] == "NODE_NAME"]
        assert node_name["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["OTEL_SPARSE_AGGR_NODE"] == "$(NODE_NAME)"
        assert vmagent["args"][0].startswith(
            'export OTEL_SPARSE_AGGR_NODE="$OTEL_SPARSE_AGGR_NODE@$(date +%s)" && exec ')
        window = _seconds(env["OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW"])
        assert window > _seconds(env["OTEL_SPARSE_AGGR_INTERVAL"]) >= 60  # exports every 60 s
        assert env["OTEL_SPARSE_AGGR_REMOTE_WRITE_URL"] == _aggregator_url(TWO_LEVEL_DIR)

    def test_central_vmagent_is_the_central_level(self):
        (node,) = _collectors(TWO_LEVEL_DIR)
        node_env = _container_env(_container(node, "victoriametrics/vmagent"))
        central = _named("Deployment", "otel-sparse-aggregator", TWO_LEVEL_DIR)
        env = _check_vmagent(central, TWO_LEVEL_DIR)
        assert env["OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW"] == "0s"
        assert env["OTEL_SPARSE_AGGR_NODE"] == ""
        # a node total must not go stale between two node flushes or across a node restart
        assert _seconds(env["OTEL_SPARSE_AGGR_STALENESS"]) > (
            _seconds(node_env["OTEL_SPARSE_AGGR_INTERVAL"])
            + _seconds(node_env["OTEL_SPARSE_AGGR_FIRST_SAMPLE_WINDOW"]))
        assert env["OTEL_SPARSE_AGGR_SIGNED_SUMS"] == node_env["OTEL_SPARSE_AGGR_SIGNED_SUMS"]


def test_configmap_yaml_round_trips():
    """The generated files are plain YAML that kubectl reads (no tabs, one document each)."""
    for name in ("agent-configmap.yaml", "gateway-configmap.yaml"):
        text = (K8S_DIR / name).read_text()
        assert "\t" not in text.split("config.yaml:")[0]
        assert len(list(yaml.safe_load_all(text))) == 1
