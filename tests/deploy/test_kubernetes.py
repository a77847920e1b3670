"""deploy/kubernetes: manifests validate against the Kubernetes JSON schemas (offline), the
ConfigMaps are the shipped Collector configs, and workloads, Services and configs agree."""

from __future__ import annotations

import re
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
    resolve,
)

try:
    import kubernetes_validate
except ImportError:  # pragma: no cover - the message is the point
    kubernetes_validate = None

NAMESPACE = "otel-sparse"
# Oldest supported (internalTrafficPolicy is GA since 1.26) and the newest schemas shipped.
K8S_VERSIONS = ("1.29.0", "latest")
MANIFEST_FILES = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
# ConfigMap name -> shipped config it must hold verbatim.
CONFIGMAP_SOURCES = {
    "otelcol-sparse-agent": COLLECTOR_CONFIG / "agent.yaml",
    "otelcol-sparse-gateway": COLLECTOR_CONFIG / "gateway.yaml",
}
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in MANIFEST_FILES for doc in load_yaml_all(path)]


def _of_kind(*kinds: str) -> list[dict]:
    return [doc for _, doc in _objects() if doc["kind"] in kinds]


def _workloads() -> list[dict]:
    return _of_kind("DaemonSet", "Deployment")


def _collectors() -> list[dict]:
    """The workloads that run otelcol-sparse (not the vmagent aggregator)."""
    return [w for w in _workloads()
            if w["metadata"]["labels"]["app.kubernetes.io/name"] == "otelcol-sparse"]


def _object_id(item: tuple[Path, dict]) -> str:
    path, doc = item
    return f"{path.name}:{doc['kind']}/{doc['metadata']['name']}"


def _container_env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _config_of(workload: dict) -> Path:
    """The shipped config file a workload runs (through its ConfigMap volume)."""
    volumes = workload["spec"]["template"]["spec"]["volumes"]
    names = [v["configMap"]["name"] for v in volumes if "configMap" in v]
    assert len(names) == 1, names
    return CONFIGMAP_SOURCES[names[0]]


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
    @pytest.mark.parametrize("item", _objects(), ids=_object_id)
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

    @pytest.mark.parametrize("name", sorted(CONFIGMAP_SOURCES))
    def test_holds_shipped_config_verbatim(self, name):
        """data['config.yaml'] equals the file in collector-config/, byte for byte."""
        (configmap,) = [d for d in _of_kind("ConfigMap") if d["metadata"]["name"] == name]
        assert configmap["data"]["config.yaml"] == CONFIGMAP_SOURCES[name].read_text()


class TestConsistency:
    def test_kustomization_lists_every_manifest(self):
        kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
        assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFEST_FILES)

    def test_namespace(self):
        (namespace,) = _of_kind("Namespace")
        assert namespace["metadata"]["name"] == NAMESPACE
        for item in _objects():
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

    @pytest.mark.parametrize("workload", _collectors(), ids=lambda w: w["metadata"]["name"])
    def test_workload_matches_its_collector_config(self, workload):
        """Ports, probes, listen address, required env and memory limits agree with the config."""
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = workload["metadata"]["name"]
        config_path = _config_of(workload)
        env = _container_env(container)

        # Every ${env:X} without a default is set (or the Collector refuses to start).
        required = {
            k for k, default in env_refs(config_path.read_text()).items() if default is None
        }
        assert required <= set(env), f"{name}: unset {sorted(required - set(env))}"

        config = resolve(load_yaml(config_path), env)
        listening = collector_ports(config)
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

        # The config file is mounted where --config points.
        config_arg = next(a for a in container["args"] if a.startswith("--config="))
        mounted = Path(config_arg.split("=", 1)[1])
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
        assert Path(mount["mountPath"]) == mounted.parent
        (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
        assert {"key": "config.yaml", "path": mounted.name} in volume["configMap"]["items"]

        # memory_limiter stays below the container's memory limit.
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), name
        assert {"cpu", "memory"} <= set(resources["limits"]), name
        limiter = config["processors"]["memory_limiter"]
        assert int(limiter["limit_mib"]) < _mib(resources["limits"]["memory"]), name
        assert int(limiter["spike_limit_mib"]) < int(limiter["limit_mib"]), name

    def test_gateway_writes_to_aggregator_and_aggregator_config_is_complete(self):
        """gateway -> aggregator Service; the aggregator mounts aggregation.yaml where its
        flag reads it and sets every %{VAR} placeholder in it (vmagent refuses otherwise)."""
        (gateway,) = [w for w in _collectors() if w["kind"] == "Deployment"]
        env = _container_env(gateway["spec"]["template"]["spec"]["containers"][0])
        (service,) = [s for s in _of_kind("Service")
                      if s["metadata"]["name"] == "otel-sparse-aggregator"]
        port = service["spec"]["ports"][0]["port"]
        host = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert env["OTEL_SPARSE_REMOTE_WRITE_URL"] == f"http://{host}:{port}/api/v1/write"
        (aggregator,) = [w for w in _workloads()
                         if w["metadata"]["name"] == "otel-sparse-aggregator"]
        pod = aggregator["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        flags = dict(a.split("=", 1) for a in container["args"])
        config = Path(flags["-remoteWrite.streamAggr.config"])
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
        assert Path(mount["mountPath"]) == config.parent
        (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
        assert {"key": config.name, "path": config.name} in volume["configMap"]["items"]
        (configmap,) = [d for d in _of_kind("ConfigMap")
                        if d["metadata"]["name"] == volume["configMap"]["name"]]
        text = configmap["data"][config.name]
        assert text == (COLLECTOR_CONFIG / "aggregation.yaml").read_text()
        code = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))
        assert set(re.findall(r"%\{(\w+)\}", code)) <= set(_container_env(container))
        assert flags["-remoteWrite.url"] == "$(OTEL_SPARSE_AGGR_REMOTE_WRITE_URL)"

    def test_agent_forwards_to_gateway_service(self):
        (agent,) = [w for w in _collectors() if w["kind"] == "DaemonSet"]
        env = _container_env(agent["spec"]["template"]["spec"]["containers"][0])
        config = resolve(load_yaml(_config_of(agent)), env)
        exporters = [e for k, e in config["exporters"].items() if k.startswith("otlp")]
        (endpoint,) = [e["endpoint"] for e in exporters]
        (gateway,) = [s for s in _of_kind("Service") if s["metadata"]["name"].endswith("-gateway")]
        grpc_port = next(p["port"] for p in gateway["spec"]["ports"] if p["name"] == "otlp-grpc")
        host = f"{gateway['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        assert endpoint == f"{host}:{grpc_port}"


def test_configmap_yaml_round_trips():
    """The generated files are plain YAML that kubectl reads (no tabs, one document each)."""
    for name in ("agent-configmap.yaml", "gateway-configmap.yaml"):
        text = (K8S_DIR / name).read_text()
        assert "\t" not in text.split("config.yaml:")[0]
        assert len(list(yaml.safe_load_all(text))) == 1
