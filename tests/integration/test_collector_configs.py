"""The built otelcol-sparse: shipped configs validate, and it holds exactly the manifest's
components."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    AGGREGATION_CONFIG,
    CONFIG_DIR,
    OTLP_TO_VMAGENT,
    OVERLAYS,
    REMOTE_WRITE_ONLY,
    SHIPPED_CONFIGS,
    VMAGENT_OTLP_RELABEL,
)

pytestmark = pytest.mark.integration

# What each config needs set; the rest have defaults (docs/collector.md).
REQUIRED_ENV = {
    "OTEL_SPARSE_GATEWAY_ENDPOINT": "127.0.0.1:4317",
    "OTEL_SPARSE_REMOTE_WRITE_URL": "http://127.0.0.1:9090/api/v1/write",
}
KINDS = ("receivers", "processors", "exporters", "extensions", "connectors")
# Test-only configs (not shipped) that use components the shipped ones do not.
REPLAY_CONFIG = Path(__file__).resolve().parent / "configs" / "replay.yaml"


def run_otelcol(
    binary: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the collector binary with `args`, env = os.environ + `env`."""
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_shipped_configs_are_all_listed() -> None:
    """Every collector-config/*.yaml other than the manifest is covered by these tests.

    The aggregation tier's config is vmagent's, not the collector's: test_aggregation.py's
    test_shipped_config_validates runs `vmagent -dryRun` on it.
    """
    found = {p.name for p in CONFIG_DIR.glob("*.yaml")} - {
        "manifest.yaml", AGGREGATION_CONFIG.name, VMAGENT_OTLP_RELABEL.name}
    assert found == {*SHIPPED_CONFIGS, *OVERLAYS}


@pytest.mark.parametrize("config", SHIPPED_CONFIGS)
def test_shipped_config_validates(otelcol_bin: Path, config: str) -> None:
    """`otelcol-sparse validate` accepts each shipped config with its variables set."""
    done = run_otelcol(
        otelcol_bin, "validate", "--config", str(CONFIG_DIR / config), env=REQUIRED_ENV
    )
    assert done.returncode == 0, done.stderr


def test_remote_write_only_gateway_validates(otelcol_bin: Path, tmp_path: Path) -> None:
    """gateway.yaml + remote-write-only.yaml (the 8-node aggregated gateway, the 128-node
    node collector) validates; a typo in the overlay's exporter list does not."""
    gateway = str(CONFIG_DIR / "gateway.yaml")
    done = run_otelcol(otelcol_bin, "validate", "--config", gateway,
                       "--config", str(REMOTE_WRITE_ONLY), env=REQUIRED_ENV)
    assert done.returncode == 0, done.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(REMOTE_WRITE_ONLY.read_text().replace("[prometheusremotewrite]",
                                                          "[prometheusremotewrit]"))
    done = run_otelcol(otelcol_bin, "validate", "--config", gateway, "--config", str(typo),
                       env=REQUIRED_ENV)
    assert done.returncode != 0 and "prometheusremotewrit" in done.stderr, done.stderr


def test_otlp_to_vmagent_gateway_validates(otelcol_bin: Path) -> None:
    """gateway.yaml + otlp-to-vmagent.yaml (the aggregated layouts' gateway sending OTLP to
    vmagent) validates with only OTEL_SPARSE_VMAGENT_OTLP_URL set for it, and exports to
    nothing else."""
    gateway = str(CONFIG_DIR / "gateway.yaml")
    env = {**REQUIRED_ENV, "OTEL_SPARSE_VMAGENT_OTLP_URL":
           "http://127.0.0.1:8429/opentelemetry/v1/metrics"}
    done = run_otelcol(otelcol_bin, "validate", "--config", gateway,
                       "--config", str(OTLP_TO_VMAGENT), env=env)
    assert done.returncode == 0, done.stderr
    overlay = yaml.safe_load(OTLP_TO_VMAGENT.read_text())
    assert overlay["service"]["pipelines"]["metrics"]["exporters"] == ["otlp_http/vmagent"]


@pytest.mark.parametrize(
    ("config", "variable"),
    [
        ("agent.yaml", "OTEL_SPARSE_GATEWAY_ENDPOINT"),
        ("gateway.yaml", "OTEL_SPARSE_REMOTE_WRITE_URL"),
    ],
)
def test_required_variable_missing_fails(otelcol_bin: Path, config: str, variable: str) -> None:
    """Without its required variable a config is rejected, not run with an empty endpoint."""
    env = {k: v for k, v in REQUIRED_ENV.items() if k != variable}
    env[variable] = ""
    done = run_otelcol(otelcol_bin, "validate", "--config", str(CONFIG_DIR / config), env=env)
    assert done.returncode != 0
    assert "endpoint" in done.stderr


def test_replay_config_validates(otelcol_bin: Path, tmp_path: Path) -> None:
    """The otlpjsonfile receiver is built in: a config reading a glob validates."""
    include = str(tmp_path / "otlp" / "*.jsonl")
    done = run_otelcol(
        otelcol_bin, "validate", "--config", str(REPLAY_CONFIG),
        env={"OTEL_SPARSE_REPLAY_INCLUDE": include},
    )
    assert done.returncode == 0, done.stderr
    receiver = yaml.safe_load(REPLAY_CONFIG.read_text())["receivers"]["otlpjsonfile"]
    assert receiver["start_at"] == "beginning"
    assert receiver["include"] == ["${env:OTEL_SPARSE_REPLAY_INCLUDE}"]


def test_replay_config_rejects_bad_start_at(otelcol_bin: Path, tmp_path: Path) -> None:
    """validate really checks the receiver's settings (not just that the type exists)."""
    config = tmp_path / "bad.yaml"
    config.write_text(REPLAY_CONFIG.read_text().replace("start_at: beginning", "start_at: middle"))
    done = run_otelcol(
        otelcol_bin, "validate", "--config", str(config),
        env={"OTEL_SPARSE_REPLAY_INCLUDE": str(tmp_path / "*.jsonl")},
    )
    assert done.returncode != 0
    assert "otlpjsonfile" in done.stderr and "middle" in done.stderr, done.stderr


def test_components_match_manifest(otelcol_bin: Path, manifest: dict[str, Any]) -> None:
    """`otelcol-sparse components` lists exactly the manifest's modules, kind by kind."""
    done = run_otelcol(otelcol_bin, "components")
    assert done.returncode == 0, done.stderr
    listed = yaml.safe_load(done.stdout)

    for kind in KINDS:
        want = {m["gomod"] for m in manifest.get(kind) or []}
        got = {c["module"] for c in listed.get(kind) or []}
        assert got == want, kind
    want_providers = {m["gomod"] for m in manifest["providers"]}
    assert {p["module"] for p in listed["providers"]} == want_providers
    assert {p["scheme"] for p in listed["providers"]} == {"env", "file", "yaml"}
    assert listed["buildinfo"]["command"] == "otelcol-sparse"


def test_configs_use_only_built_components(otelcol_bin: Path) -> None:
    """Each component type in a shipped config (or the replay test config) is one the binary
    lists."""
    listed = yaml.safe_load(run_otelcol(otelcol_bin, "components").stdout)
    for config in (*(CONFIG_DIR / c for c in SHIPPED_CONFIGS), REPLAY_CONFIG):
        doc = yaml.safe_load(config.read_text())
        for kind in ("receivers", "processors", "exporters", "extensions"):
            names = {c["name"] for c in listed.get(kind) or []}
            for key in doc.get(kind) or {}:
                assert key.split("/")[0] in names, f"{config.name}: {kind}.{key}"
