"""Prometheus rules and config: promtool accepts them; rule unit tests pass and cover every rule."""

from __future__ import annotations

import subprocess

import pytest
from _deploy import PROMETHEUS_DIR, REPO, RULE_TESTS_DIR, RULES_DIR, load_module, load_yaml

dashboards = load_module(REPO / "tests" / "integration" / "dashboards.py", "_dashboards")

RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
RULE_TEST_FILES = sorted(RULE_TESTS_DIR.glob("*.yml"))


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _rules(kind: str) -> list[str]:
    """Names of every alert ('alert') or recording rule ('record') in the rule files."""
    names = []
    for path in RULE_FILES:
        for group in load_yaml(path)["groups"]:
            names += [rule[kind] for rule in group["rules"] if kind in rule]
    return names


def _unit_tests() -> list[dict]:
    tests = []
    for path in RULE_TEST_FILES:
        tests += load_yaml(path)["tests"]
    return tests


class TestPromtool:
    def test_rule_files_exist(self):
        """Both rule files and their unit tests are present."""
        assert {p.name for p in RULE_FILES} >= {"recording.yml", "alerts.yml"}
        assert RULE_TEST_FILES, f"no promtool unit tests in {RULE_TESTS_DIR}"

    def test_check_rules(self, promtool):
        """promtool check rules accepts every rule file."""
        result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
        assert result.returncode == 0, result.stdout + result.stderr

    def test_unit_tests_pass(self, promtool):
        """promtool test rules passes every test file (input series -> expected alerts/samples)."""
        result = _run([promtool, "test", "rules", *map(str, RULE_TEST_FILES)])
        assert result.returncode == 0, result.stdout + result.stderr

    def test_check_config(self, promtool):
        """promtool check config accepts prometheus.yml, including the rule files it loads."""
        result = _run([promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


class TestCoverage:
    def test_every_rule_file_is_tested(self):
        """Each rule file is loaded by at least one unit test file."""
        tested = set()
        for path in RULE_TEST_FILES:
            tested |= {(path.parent / f).resolve() for f in load_yaml(path)["rule_files"]}
        assert {p.resolve() for p in RULE_FILES} <= tested

    @pytest.mark.parametrize("alert", _rules("alert"))
    def test_alert_fires_and_stays_quiet(self, alert):
        """Every alert has a case where it fires and a case where it must not."""
        cases = [
            case
            for test in _unit_tests()
            for case in test.get("alert_rule_test", [])
            if case["alertname"] == alert
        ]
        assert any(case.get("exp_alerts") for case in cases), f"{alert}: no firing case"
        assert any(not case.get("exp_alerts") for case in cases), f"{alert}: no silent case"

    @pytest.mark.parametrize("record", _rules("record"))
    def test_recording_rule_is_checked(self, record):
        """Every recording rule's output is compared with expected samples somewhere."""
        exprs = [
            case["expr"] for test in _unit_tests() for case in test.get("promql_expr_test", [])
        ]
        assert any(record in expr for expr in exprs), f"{record}: no promql_expr_test"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_cluster_wide_sum_prefers_the_aggregated_series(path):
    """As for the dashboards (test_grafana.py::TestClusterWideSums): every rule's sum over
    classic histogram series counts each observation once in all three layouts."""
    for group in load_yaml(path)["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule.get("alert")
            assert dashboards.unguarded_cluster_wide(rule["expr"]) == [], (name, rule["expr"])
