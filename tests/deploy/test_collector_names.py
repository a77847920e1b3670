"""The otelcol_* names in the alerts and dashboards are the ones our Collector configs expose.

Read from a running otelcol-sparse v0.145.0 (collector-config/gateway.yaml) at :8888/metrics.
The configs' telemetry reader sets without_type_suffix and without_units, so counters have
no _total suffix (otelcol_exporter_sent_metric_points, not ..._total). If a config drops
those settings, the names change: update docker/prometheus/rules/alerts.yml, the
dashboards, this list and docs/grafana.md together.
"""

from __future__ import annotations

import json
import re

import pytest
from _deploy import COLLECTOR_CONFIG, DASHBOARDS_DIR, REPO, RULES_DIR, load_module, load_yaml

dashboards_mod = load_module(REPO / "tests" / "integration" / "dashboards.py", "_dashboards")

# Observed on otelcol-sparse v0.145.0 (the same on v0.155.0); the enqueue_failed counter follows the same scheme
# (exporterhelper metadata: exporter_enqueue_failed_metric_points) but appears only once a
# queue has overflowed.
VERIFIED = {
    "otelcol_receiver_accepted_metric_points",
    "otelcol_receiver_refused_metric_points",
    "otelcol_receiver_failed_metric_points",
    "otelcol_exporter_sent_metric_points",
    "otelcol_exporter_send_failed_metric_points",
    "otelcol_exporter_enqueue_failed_metric_points",
    "otelcol_exporter_queue_size",
    "otelcol_exporter_queue_capacity",
    "otelcol_process_memory_rss",
}

_NAME = re.compile(r"\botelcol_[a-z0-9_]+")


def _used_names() -> dict[str, set[str]]:
    """otelcol_* names in the PromQL of each rule file and dashboard (not in descriptions)."""
    used: dict[str, set[str]] = {}
    for path in RULES_DIR.glob("*.yml"):
        exprs = [r["expr"] for g in load_yaml(path)["groups"] for r in g["rules"]]
        used[path.name] = {n for e in exprs for n in _NAME.findall(e)}
    for path in DASHBOARDS_DIR.glob("*.json"):
        exprs = [e for _, e in dashboards_mod.panel_queries(json.loads(path.read_text()), {})]
        used[path.name] = {n for e in exprs for n in _NAME.findall(e)}
    return used


@pytest.mark.parametrize("config", ["gateway.yaml", "agent.yaml", "single.yaml"])
def test_telemetry_reader_keeps_suffix_free_names(config):
    """Every shipped config exposes its telemetry without type suffixes and units."""
    telemetry = load_yaml(COLLECTOR_CONFIG / config)["service"].get("telemetry", {})
    readers = telemetry.get("metrics", {}).get("readers")
    if readers is None:
        pytest.skip(f"{config} has no telemetry reader (not scraped by the stack)")
    for reader in readers:
        prom = reader["pull"]["exporter"]["prometheus"]
        assert prom.get("without_type_suffix") is True, config
        assert prom.get("without_units") is True, config


def test_only_verified_names_are_used():
    used = _used_names()
    assert any(used.values()), "no otelcol_* metric used at all"
    for name, names in used.items():
        assert names <= VERIFIED, f"{name}: unverified {sorted(names - VERIFIED)}"
        assert not {n for n in names if n.endswith("_total")}, name
