"""Grafana provisioning and dashboards: files parse, reference what exists, every panel has a
datasource and PromQL targets, and every query is valid PromQL once variables are filled in."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from _deploy import DASHBOARDS_DIR, GRAFANA_DIR, REPO, load_module, load_yaml

dashboards_mod = load_module(REPO / "tests" / "integration" / "dashboards.py", "_dashboards")

DASHBOARD_FILES = sorted(DASHBOARDS_DIR.glob("*.json"))
PROVISIONING = GRAFANA_DIR / "provisioning"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's dashboard schemaVersion for the classic JSON model, current since Grafana 12.
SCHEMA_VERSION = 42
# Panel types that carry no query.
NO_QUERY_PANELS = {"row", "text", "news", "dashlist"}


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _query_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboards_mod.iter_panels(dashboard) if p["type"] not in NO_QUERY_PANELS]


@pytest.fixture(scope="module", params=DASHBOARD_FILES, ids=lambda p: p.name)
def dashboard(request) -> dict:
    return _load(request.param)


class TestProvisioning:
    def test_datasources(self):
        """Datasource provisioning parses; exactly one default Prometheus with a URL."""
        for path in (PROVISIONING / "datasources").glob("*.yml"):
            doc = load_yaml(path)
            assert doc["apiVersion"] == 1
            prometheus = [ds for ds in doc["datasources"] if ds["type"] == "prometheus"]
            assert prometheus, path
            assert sum(bool(ds.get("isDefault")) for ds in doc["datasources"]) == 1
            for ds in prometheus:
                assert ds["url"].startswith("http")
                assert ds.get("uid")

    def test_dashboard_providers(self):
        """Dashboard provisioning parses; file providers point at an absolute container path."""
        paths = list((PROVISIONING / "dashboards").glob("*.yml"))
        assert paths
        for path in paths:
            doc = load_yaml(path)
            assert doc["apiVersion"] == 1
            for provider in doc["providers"]:
                assert provider["type"] == "file"
                assert provider["options"]["path"].startswith("/")
        # That path is a bind mount of docker/grafana/dashboards: see test_compose.py.

    def test_dashboards_exist(self):
        assert {p.name for p in DASHBOARD_FILES} >= {
            "otel-sparse-attention.json",
            "otel-sparse-pipeline.json",
        }

    def test_unique_uids_and_titles(self):
        docs = [_load(p) for p in DASHBOARD_FILES]
        assert len({d["uid"] for d in docs}) == len(docs)
        assert len({d["title"] for d in docs}) == len(docs)


class TestDashboard:
    def test_model(self, dashboard):
        """Classic JSON model of current Grafana, provisioning-ready (id null, fixed uid)."""
        assert dashboard["schemaVersion"] == SCHEMA_VERSION
        assert dashboard["id"] is None
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
        assert dashboard["title"]
        assert "otel_sparse" in dashboard["tags"]

    def test_datasource_variable(self, dashboard):
        """A ${datasource} variable of type datasource selects any Prometheus."""
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert "run_id" in variables
        for var in variables.values():
            if var["type"] == "query":
                assert var["datasource"] == DATASOURCE_REF, var["name"]
                assert var["definition"] == var["query"]["query"]

    def test_every_panel_has_datasource_and_expr(self, dashboard):
        """Each query panel uses ${datasource} and has targets, each with an expr and refId."""
        panels = _query_panels(dashboard)
        assert panels
        for panel in panels:
            title = panel["title"]
            assert panel.get("datasource") == DATASOURCE_REF, title
            targets = panel.get("targets", [])
            assert targets, f"{title}: no targets"
            ref_ids = [t["refId"] for t in targets]
            assert len(set(ref_ids)) == len(ref_ids), f"{title}: duplicate refId"
            for target in targets:
                assert target.get("datasource") == DATASOURCE_REF, title
                assert target.get("expr", "").strip(), f"{title}: empty expr"

    def test_panel_ids_unique_and_layout_does_not_overlap(self, dashboard):
        panels = list(dashboards_mod.iter_panels(dashboard))
        ids = [p["id"] for p in panels]
        assert len(set(ids)) == len(ids)
        boxes = [(p["title"], p["gridPos"]) for p in panels]
        for i, (title_a, a) in enumerate(boxes):
            assert a["x"] + a["w"] <= 24, title_a
            for title_b, b in boxes[i + 1 :]:
                overlap = (
                    a["x"] < b["x"] + b["w"]
                    and b["x"] < a["x"] + a["w"]
                    and a["y"] < b["y"] + b["h"]
                    and b["y"] < a["y"] + a["h"]
                )
                assert not overlap, f"{title_a!r} overlaps {title_b!r}"

    def test_every_variable_is_defined(self, dashboard):
        """panel_queries substitutes every variable without being told any (no KeyError)."""
        assert dashboards_mod.panel_queries(dashboard, {})

    def test_queries_are_valid_promql(self, dashboard, promtool, tmp_path):
        """Every query, variables filled in, parses as PromQL (promtool check rules)."""
        queries = dashboards_mod.panel_queries(dashboard, {"run_id": "run-1"})
        rules = [
            {"record": f"dashboard_check:query_{i}", "expr": expr}
            for i, (_, expr) in enumerate(queries)
        ]
        path = tmp_path / "queries.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
        result = subprocess.run(
            [promtool, "check", "rules", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        titles = "\n".join(f"query_{i}: {title}" for i, (title, _) in enumerate(queries))
        assert result.returncode == 0, result.stdout + result.stderr + "\n" + titles


def _all_exprs(name: str) -> list[str]:
    return [expr for _, expr in dashboards_mod.panel_queries(_load(DASHBOARDS_DIR / name), {})]


def _squash(expr: str) -> str:
    return re.sub(r"\s+", " ", expr)


class TestRequiredPanels:
    def test_layer_head_heatmap_of_density(self):
        doc = _load(DASHBOARDS_DIR / "otel-sparse-attention.json")
        heatmaps = [
            p
            for p in dashboards_mod.iter_panels(doc)
            if p["type"] == "heatmap"
            and any(
                "sum by (layer, head) (sparse_attention_research_attention_density_sum"
                in _squash(t["expr"])
                for t in p["targets"]
            )
        ]
        assert heatmaps
        transform_ids = [t["id"] for t in heatmaps[0]["transformations"]]
        assert "groupingToMatrix" in transform_ids

    def test_density_by_layer_time_series(self):
        exprs = [_squash(e) for e in _all_exprs("otel-sparse-attention.json")]
        assert any(
            "sum by (layer) (rate(sparse_attention_research_attention_density_sum" in e
            and "rate(sparse_attention_research_attention_density_count" in e
            for e in exprs
        )

    def test_error_quantiles(self):
        exprs = [_squash(e) for e in _all_exprs("otel-sparse-attention.json")]
        assert any(
            e.startswith("histogram_quantile(0.99, sum by (le, layer) (rate(")
            and "sparse_attention_research_attention_output_error_bucket" in e
            for e in exprs
        )

    def test_pipeline_panels(self):
        exprs = " ".join(_squash(e) for e in _all_exprs("otel-sparse-pipeline.json"))
        for needle in (
            "sum by (rank) (rate(otel_sparse_events_logged_total",
            "sum by (reason) (rate(otel_sparse_events_dropped_total",
            'otel_metric_overflow="true"',
            "otel_sparse_export_failures_total",
            "otelcol_receiver_accepted_metric_points",
            "otelcol_receiver_refused_metric_points",
            "otelcol_exporter_sent_metric_points",
            "otelcol_exporter_send_failed_metric_points",
            "otelcol_exporter_queue_size",
        ):
            assert needle in exprs, needle


class TestClusterWideSums:
    def test_every_cluster_wide_sum_prefers_the_aggregated_series(self, dashboard):
        """Every sum over X_bucket/X_count/X_sum that is not a per-rank view is written
        prefer_aggregated(term): exact with no aggregator, the aggregator, and the aggregator
        with the raw per-rank opt-in (tests/integration/dashboards.py, AGGREGATED)."""
        for panel in dashboards_mod.iter_panels(dashboard):
            for target in panel.get("targets", []):
                expr = target.get("expr", "")
                assert dashboards_mod.unguarded_cluster_wide(expr) == [], (panel["title"], expr)
