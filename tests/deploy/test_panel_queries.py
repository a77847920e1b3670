"""tests/integration/dashboards.py: template variable substitution in panel queries."""

from __future__ import annotations

import pytest
from _deploy import REPO, load_module

dashboards = load_module(REPO / "tests" / "integration" / "dashboards.py", "_dashboards")


def _dashboard(*panels, variables=()):
    return {"panels": list(panels), "templating": {"list": list(variables)}}


def _panel(title, *exprs, **extra):
    targets = [{"refId": chr(65 + i), "expr": e} for i, e in enumerate(exprs)]
    return {"type": "timeseries", "title": title, "targets": targets, **extra}


class TestSubstitute:
    def test_all_syntaxes(self):
        """$var, ${var}, [[var]] all resolve."""
        out = dashboards.substitute("$a ${a} [[a]]", {"a": "x"})
        assert out == "x x x"

    def test_builtin_defaults(self):
        """Grafana's interval/range built-ins get sensible defaults."""
        out = dashboards.substitute("rate(m[$__rate_interval]) [$__interval] [$__range]", {})
        assert out == "rate(m[1m]) [15s] [3600s]"

    def test_variables_override_builtins(self):
        out = dashboards.substitute("rate(m[$__rate_interval])", {"__rate_interval": "5m"})
        assert out == "rate(m[5m])"

    def test_longest_name_wins(self):
        """$__range_s is its own variable, not $__range followed by '_s'."""
        assert dashboards.substitute("$__range_s $__range_ms", {}) == "3600 3600000"

    def test_suffix_after_braces(self):
        """${metric}_sum keeps the suffix; $metric_sum would be a variable named metric_sum."""
        assert dashboards.substitute("${metric}_sum", {"metric": "x"}) == "x_sum"
        with pytest.raises(KeyError, match="metric_sum"):
            dashboards.substitute("$metric_sum", {"metric": "x"})

    def test_list_values_become_an_escaped_alternation(self):
        out = dashboards.substitute('rank=~"$rank"', {"rank": ["0", "1.5"]})
        assert out == r'rank=~"(0|1\.5)"'

    def test_formats(self):
        values = {"v": ["a.b", "c"]}
        assert dashboards.substitute("${v:csv}", values) == "a.b,c"
        assert dashboards.substitute("${v:pipe}", values) == "a.b|c"
        assert dashboards.substitute("${v:regex}", values) == r"(a\.b|c)"
        assert dashboards.substitute("${v:regex}", {"v": "a.b"}) == r"a\.b"

    def test_unknown_format_raises(self):
        with pytest.raises(ValueError, match="unsupported format"):
            dashboards.substitute("${v:json}", {"v": "x"})

    def test_regex_backreferences_left_alone(self):
        """label_replace's $1 is not a template variable."""
        expr = 'label_replace(up, "x", "$1", "job", "(.+)")'
        assert dashboards.substitute(expr, {}) == expr

    def test_unknown_variable_raises(self):
        with pytest.raises(KeyError, match="run_idd"):
            dashboards.substitute('m{run_id=~"$run_idd"}', {"run_id": "r"})

    def test_dashboard_defaults(self):
        """Current values of the dashboard's variables fill in what the caller left out."""
        dashboard = _dashboard(
            variables=[
                {
                    "name": "run_id",
                    "includeAll": True,
                    "allValue": ".+",
                    "current": {"value": ["$__all"]},
                },
                {"name": "metric", "current": {"value": "m1"}},
                {"name": "rank", "includeAll": True, "current": {}},
                {"name": "layer", "current": {"value": ["0", "1"]}},
            ]
        )
        out = dashboards.substitute(
            '$metric{run_id=~"$run_id", rank=~"$rank", layer=~"$layer"}', {}, dashboard
        )
        assert out == 'm1{run_id=~".+", rank=~".*", layer=~"(0|1)"}'

    def test_caller_wins_over_dashboard_defaults(self):
        dashboard = _dashboard(variables=[{"name": "metric", "current": {"value": "m1"}}])
        assert dashboards.substitute("$metric", {"metric": "m2"}, dashboard) == "m2"


class TestPanelQueries:
    def test_titles_and_exprs_in_order(self):
        dashboard = _dashboard(
            _panel("A", 'x{run_id="$run_id"}', "y[$__rate_interval]"),
            _panel("B", "z"),
        )
        assert dashboards.panel_queries(dashboard, {"run_id": "r1"}) == [
            ("A", 'x{run_id="r1"}'),
            ("A", "y[1m]"),
            ("B", "z"),
        ]

    def test_nested_row_panels_and_hidden_targets(self):
        """Panels inside collapsed rows count; hidden targets and rows' own entries do not."""
        hidden = _panel("H", "hidden")
        hidden["targets"][0]["hide"] = True
        row = {"type": "row", "title": "R", "collapsed": True, "panels": [_panel("N", "nested")]}
        dashboard = _dashboard(row, hidden, {"type": "text", "title": "T"})
        assert dashboards.panel_queries(dashboard, {}) == [("N", "nested")]

    def test_shipped_dashboards(self):
        """Both shipped dashboards yield queries with no variable left unresolved."""
        import json

        for path in sorted((REPO / "docker" / "grafana" / "dashboards").glob("*.json")):
            queries = dashboards.panel_queries(json.loads(path.read_text()), {"run_id": "r1"})
            assert queries, path.name
            for title, expr in queries:
                assert "$" not in expr.replace("$1", ""), (path.name, title, expr)


class TestPreferAggregated:
    SEL = 'x_count{run_id="r"}'

    def test_prefer_aggregated(self):
        term = f"sum by (layer) (rate({self.SEL}[5m]))"
        assert dashboards.prefer_aggregated(term) == (
            'sum by (layer) (rate(x_count{run_id="r", rank=""}[5m])) or ' + term)

    def test_unguarded_sums_are_found(self):
        """A plain cluster-wide sum, a bare selector and a lone aggregated half are flagged."""
        plain = f"sum by (layer, head) ({self.SEL})"
        assert dashboards.unguarded_cluster_wide(plain) == [plain]
        assert dashboards.unguarded_cluster_wide(f"{self.SEL} / 2") == [self.SEL]
        half = 'sum (x_bucket{le="1", rank=""})'
        assert dashboards.unguarded_cluster_wide(half) == [half]

    def test_guarded_per_rank_and_other_series_pass(self):
        guarded = dashboards.prefer_aggregated(f"sum by (layer) ({self.SEL})")
        assert dashboards.unguarded_cluster_wide(f"({guarded}) / ({guarded})") == []
        assert dashboards.unguarded_cluster_wide(
            dashboards.prefer_aggregated("sum by (le) (rate(${metric}_bucket{a=\"b\"}[1m]))")
            + " or sum (rate(${metric}{a=\"b\"}[1m]))") == []
        assert dashboards.unguarded_cluster_wide('sum by (rank) (x_sum{rank!=""})') == []
        assert dashboards.unguarded_cluster_wide("sum (rate(otel_sparse_events_logged_total[1m]))") == []
