"""Helpers shared by the deploy tests: paths, YAML loading, Collector config resolution."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE_FILE = DOCKER / "docker-compose.yml"
PROMETHEUS_DIR = DOCKER / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
GRAFANA_DIR = DOCKER / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
K8S_DIR = REPO / "deploy" / "kubernetes"
COLLECTOR_CONFIG = REPO / "collector-config"

# ${env:NAME}, ${env:NAME:-default}, ${NAME} (env is the Collector's default URI scheme).
_ENV_REF = re.compile(r"\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    """Every non-empty document of a multi-document YAML file."""
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def env_refs(text: str) -> dict[str, str | None]:
    """Every ${env:NAME[:-default]} in a Collector config: NAME -> default (None: required)."""
    refs: dict[str, str | None] = {}
    for match in _ENV_REF.finditer(text):
        name, default = match.group(1), match.group(2)
        if refs.get(name) is None:
            refs[name] = default
    return refs


def resolve(value: Any, env: Mapping[str, str]) -> Any:
    """A config value with ${env:...} expanded as the Collector would, given ``env``.

    Raises:
        KeyError: a reference without a default to a variable ``env`` lacks.
    """
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def expand(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(f"${{env:{name}}} has no default and is not set")

    expanded = _ENV_REF.sub(expand, value)
    # The Collector types a value that is a whole ${...} reference from its YAML form.
    if _ENV_REF.fullmatch(value):
        return yaml.safe_load(expanded) if expanded else expanded
    return expanded


def collector_config(name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """collector-config/<name> with env references resolved against ``env``."""
    return resolve(load_yaml(COLLECTOR_CONFIG / name), env)


def host_port(endpoint: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def collector_ports(config: Mapping[str, Any]) -> dict[str, tuple[str, int]]:
    """The listening (host, port) of each endpoint a resolved Collector config opens."""
    ports: dict[str, tuple[str, int]] = {}
    protocols = config["receivers"]["otlp"]["protocols"]
    for proto in ("grpc", "http"):
        if proto in protocols:
            ports[f"otlp-{proto}"] = host_port(protocols[proto]["endpoint"])
    health = config.get("extensions", {}).get("health_check")
    if health is not None:
        ports["health"] = host_port(health.get("endpoint", "localhost:13133"))
    exporter = config.get("exporters", {}).get("prometheus")
    pipelines = config["service"].get("pipelines", {}).values()
    # A component no pipeline uses is never started (remote-write-only.yaml relies on it).
    if exporter is not None and any("prometheus" in p.get("exporters", []) for p in pipelines):
        ports["prom-exporter"] = host_port(exporter["endpoint"])
    readers = config["service"].get("telemetry", {}).get("metrics", {}).get("readers", [])
    for reader in readers:
        prom = reader.get("pull", {}).get("exporter", {}).get("prometheus")
        if prom is not None:
            ports["metrics"] = (str(prom.get("host", "localhost")), int(prom["port"]))
    return ports


def merge_configs(base: Any, overlay: Any) -> Any:
    """Two ``--config`` sources merged as the Collector merges them: maps key by key,
    anything else (lists included) replaced by the overlay's value."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = merge_configs(base[key], value) if key in base else value
        return merged
    return overlay


def load_module(path: Path, name: str) -> ModuleType:
    """Import a file that is not on sys.path (scripts/, tests/integration/)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
