"""docker/docker-compose.yml: parses, references only files that exist, and agrees with the
Collector config, prometheus.yml and the Grafana provisioning it mounts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml
from _deploy import (
    COLLECTOR_CONFIG,
    COMPOSE_FILE,
    DOCKER,
    PROMETHEUS_DIR,
    collector_config,
    collector_ports,
    load_yaml,
)

ALLOWED_TOP_LEVEL = {"name", "services", "volumes", "networks", "configs", "secrets"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def collector(compose) -> dict:
    return compose["services"]["collector"]


@pytest.fixture(scope="module")
def gateway(collector) -> dict:
    """collector-config/gateway.yaml resolved with the collector service's environment."""
    return collector_config("gateway.yaml", collector.get("environment", {}))


@pytest.fixture(scope="module")
def prometheus(compose) -> dict:
    return compose["services"]["prometheus"]


@pytest.fixture(scope="module")
def grafana(compose) -> dict:
    return compose["services"]["grafana"]


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of each bind mount (short syntax); named volumes left out."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((DOCKER / source).resolve(), target))
    return mounts


def _published(service: dict) -> dict[int, int]:
    """host port -> container port."""
    ports = {}
    for spec in service.get("ports", []):
        host, container = str(spec).split("/")[0].rsplit(":", 2)[-2:]
        ports[int(host)] = int(container)
    return ports


def _mount_source(service: dict, container_path: str) -> Path:
    """The host path mounted at (or above) container_path."""
    for source, target in _bind_mounts(service):
        try:
            rel = PurePosixPath(container_path).relative_to(target)
        except ValueError:
            continue
        return source / rel
    raise AssertionError(f"nothing is mounted at {container_path}")


def _flag(command: list[str], name: str) -> str:
    for arg in command:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"--{name} missing from {command}")


class TestStructure:
    def test_top_level(self, compose):
        """Only Compose-spec top-level keys; the three services exist."""
        assert set(compose) <= ALLOWED_TOP_LEVEL
        assert {"collector", "prometheus", "grafana"} <= set(compose["services"])

    def test_every_service_has_image_or_build(self, compose):
        for name, service in compose["services"].items():
            assert "image" in service or "build" in service, name

    def test_named_volumes_declared(self, compose):
        declared = set(compose.get("volumes", {}))
        for service in compose["services"].values():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if not source.startswith((".", "/")):
                    assert source in declared, source

    def test_depends_on_known_services(self, compose):
        for service in compose["services"].values():
            assert set(service.get("depends_on", [])) <= set(compose["services"])

    def test_public_ports(self, compose):
        """OTLP 4317/4318, Prometheus 9090, Grafana 3000 on the host."""
        services = compose["services"]
        assert {4317, 4318} <= set(_published(services["collector"]))
        assert 9090 in _published(services["prometheus"])
        assert 3000 in _published(services["grafana"])

    def test_compose_loader_accepts_the_file(self):
        """compose-go, the loader `docker compose` uses, loads the file (no daemon needed)."""
        result = _compose_check(COMPOSE_FILE)
        assert result.returncode == 0, result.stderr
        assert sorted(result.stdout.split()) == sorted(compose_services())

    def test_compose_loader_rejects_a_broken_file(self, tmp_path):
        """The same check fails on a service with an unknown key (so it can fail)."""
        broken = tmp_path / "docker-compose.yml"
        broken.write_text("services:\n  x:\n    image: busybox\n    imagee: typo\n")
        result = _compose_check(broken)
        assert result.returncode != 0
        assert "imagee" in result.stderr


class TestReferencedFilesExist:
    def test_bind_mount_sources(self, compose):
        """Every bind-mounted file or directory exists."""
        for name, service in compose["services"].items():
            for source, _ in _bind_mounts(service):
                assert source.exists(), f"{name}: {source} does not exist"

    def test_build_context_and_dockerfile(self, compose):
        build = compose["services"]["collector"]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context.is_dir()
        dockerfile = (context / build["dockerfile"]).resolve()
        assert dockerfile == DOCKER / "collector.Dockerfile"
        assert dockerfile.is_file()

    def test_dockerfile_copy_sources_exist_in_context(self, compose):
        """Every COPY source (not --from a stage) is in the build context."""
        build = compose["services"]["collector"]["build"]
        context = (DOCKER / build["context"]).resolve()
        text = (DOCKER / "collector.Dockerfile").read_text()
        copies = [
            line.split()[1:-1]
            for line in text.splitlines()
            if line.startswith("COPY ") and "--from=" not in line
        ]
        assert copies
        for sources in copies:
            for source in sources:
                assert (context / source).exists(), f"COPY {source}: not in {context}"


class TestCollectorService:
    def test_mounts_gateway_config_where_command_reads_it(self, collector):
        config_path = _flag(collector["command"], "config")
        wanted = (COLLECTOR_CONFIG / "gateway.yaml").resolve()
        assert _mount_source(collector, config_path) == wanted

    def test_published_ports_are_the_otlp_receivers(self, collector, gateway):
        ports = collector_ports(gateway)
        published = _published(collector)
        assert published[4317] == ports["otlp-grpc"][1]
        assert published[4318] == ports["otlp-http"][1]
        for name in ("otlp-grpc", "otlp-http", "health", "metrics", "prom-exporter"):
            host = ports[name][0]
            assert host not in ("127.0.0.1", "localhost", "::1"), f"{name} listens on {host}"

    def test_remote_write_goes_through_the_aggregator(self, compose, gateway, prometheus):
        """gateway -> aggregator (vmagent) -> the prometheus service's receiver."""
        url = gateway["exporters"]["prometheusremotewrite"]["endpoint"]
        aggregator = compose["services"]["aggregator"]
        flags = dict(a.split("=", 1) for a in aggregator["command"])
        assert url == f"http://aggregator:{flags['-httpListenAddr'].rsplit(':', 1)[1]}/api/v1/write"
        container_port = _published(prometheus)[9090]
        assert flags["-remoteWrite.url"] == f"http://prometheus:{container_port}/api/v1/write"
        assert "--web.enable-remote-write-receiver" in prometheus["command"]
        assert "--enable-feature=native-histograms" in prometheus["command"]

    def test_aggregator_mounts_its_config_and_sets_every_placeholder(self, compose):
        """aggregation.yaml is mounted where -remoteWrite.streamAggr.config reads it, and
        every %{VAR} in it is set (vmagent refuses to start otherwise)."""
        aggregator = compose["services"]["aggregator"]
        flags = dict(a.split("=", 1) for a in aggregator["command"])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in aggregator["volumes"]}
        source = mounts[flags["-remoteWrite.streamAggr.config"]]
        text = "\n".join(line for line in (COMPOSE_FILE.parent / source).read_text().splitlines()
                         if not line.lstrip().startswith("#"))
        placeholders = set(re.findall(r"%\{(\w+)\}", text))
        assert placeholders == set(aggregator["environment"])

    def test_dockerfile_reads_builder_version_from_manifest(self):
        """The sed in the Dockerfile finds the manifest's otlpreceiver version."""
        text = (DOCKER / "collector.Dockerfile").read_text()
        script = re.search(r"sed -n '([^']+)' manifest\.yaml", text)
        assert script, "version-extracting sed not found in collector.Dockerfile"
        manifest = COLLECTOR_CONFIG / "manifest.yaml"
        found = subprocess.run(
            ["sed", "-n", script.group(1), str(manifest)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        receivers = load_yaml(manifest)["receivers"]
        wanted = [
            r["gomod"].split()[1]
            for r in receivers
            if r["gomod"].startswith("go.opentelemetry.io/collector/receiver/otlpreceiver ")
        ]
        assert found[:1] == wanted

    def test_dockerfile_sets_output_path(self):
        """The Dockerfile's second sed gives the manifest a dist.output_path the build uses."""
        text = (DOCKER / "collector.Dockerfile").read_text()
        script = re.search(r'sed "([^"]+)" manifest\.yaml > build-manifest\.yaml', text)
        assert script, "output_path sed not found in collector.Dockerfile"
        sed_script = script.group(1).replace("\\$", "$")
        out = subprocess.run(
            ["sed", sed_script, str(COLLECTOR_CONFIG / "manifest.yaml")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        dist = yaml.safe_load(out)["dist"]
        assert dist["output_path"] == "/src/dist"
        assert f"/src/dist/{dist['name']}" in text


class TestPrometheusService:
    def test_config_and_rules_mounted_where_prometheus_looks(self, prometheus):
        config_path = _flag(prometheus["command"], "config.file")
        wanted = (PROMETHEUS_DIR / "prometheus.yml").resolve()
        assert _mount_source(prometheus, config_path) == wanted
        config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
        for pattern in config["rule_files"]:
            # Relative rule_files resolve against the config file's directory.
            in_container = PurePosixPath(config_path).parent / pattern
            host_dir = _mount_source(prometheus, str(in_container.parent))
            assert sorted(host_dir.glob(in_container.name)), f"{pattern}: no rule file"

    def test_scrapes_collector_telemetry(self, gateway):
        """A scrape job targets the collector service's telemetry port."""
        ports = collector_ports(gateway)
        targets = {
            target
            for job in load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]
            for static in job.get("static_configs", [])
            for target in static["targets"]
        }
        assert f"collector:{ports['metrics'][1]}" in targets


class TestGrafanaService:
    def test_provisioning_mounted(self, grafana):
        for kind in ("datasources", "dashboards"):
            source = _mount_source(grafana, f"/etc/grafana/provisioning/{kind}")
            assert source == (DOCKER / "grafana" / "provisioning" / kind).resolve()
            assert list(source.glob("*.yml")), f"no provisioning file in {source}"

    def test_dashboard_provider_path_is_mounted(self, grafana):
        provisioning = DOCKER / "grafana" / "provisioning" / "dashboards"
        for path in provisioning.glob("*.yml"):
            for provider in load_yaml(path)["providers"]:
                source = _mount_source(grafana, provider["options"]["path"])
                assert source == (DOCKER / "grafana" / "dashboards").resolve()
                assert list(source.glob("*.json"))

    def test_home_dashboard_exists(self, grafana):
        home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
        if home:
            assert _mount_source(grafana, home).is_file()

    def test_datasource_points_at_prometheus_service(self, compose):
        prometheus_port = _published(compose["services"]["prometheus"])[9090]
        path = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
        urls = [ds["url"] for ds in load_yaml(path)["datasources"] if ds["type"] == "prometheus"]
        assert f"http://prometheus:{prometheus_port}" in urls


def compose_services() -> list[str]:
    """Service names declared in the shipped compose file."""
    return list(yaml.safe_load(COMPOSE_FILE.read_text())["services"])


def _compose_check(path):
    """Run tools/compose-check (a compose-go loader) on ``path``."""
    tool = Path(__file__).resolve().parents[2] / "tools" / "compose-check"
    return subprocess.run(
        ["go", "run", ".", str(path)], cwd=tool, capture_output=True, text=True,
        check=False, timeout=900,
    )
