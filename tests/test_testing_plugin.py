"""otel_sparse.testing as a pytest plugin: the otel_sparse_capture fixture for users' tests."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.testing import MetricCapture, capture_logger

pytest_plugins = ("pytester",)

HEAVY = ("numpy", "opentelemetry", "orjson", "torch", "pandas", "matplotlib",
         "otel_sparse.facade", "otel_sparse.pipeline", "otel_sparse._memory_sink")
"""What loading the plugin must not import: only a test that uses the fixture pays for it."""

USER_TESTS = '''
from otel_sparse import MicroMetricLogger

MicroMetricLogger.register_metric("density", float)   # at import, as user code does


def attention(layer, value):
    MicroMetricLogger().log("density", value, {"layer_idx": layer})


def test_first(otel_sparse_capture):
    attention(0, 0.25)
    assert otel_sparse_capture.histogram("density", layer=0).sum == 0.25


def test_second(otel_sparse_capture):
    attention(1, 0.5)
    assert otel_sparse_capture.histogram("density", layer=1).sum == 0.5
    assert [e["value"] for e in otel_sparse_capture.events()] == [0.5]
'''

WITHOUT_THE_FIXTURE = '''
from otel_sparse import MicroMetricLogger
from otel_sparse.testing import InMemoryMetricExporter

MicroMetricLogger.register_metric("density", float)


def _run(tmp_path, layer, value):
    sink = InMemoryMetricExporter()
    logger = MicroMetricLogger(log_path=str(tmp_path), enabled_metrics="all", exporters=[sink])
    logger.log("density", value, {"layer_idx": layer})
    logger.flush()
    return sink.histogram("sparse_attention.density", layer=layer).sum


def test_first(tmp_path):
    assert _run(tmp_path, 0, 0.25) == 0.25


def test_second(tmp_path):
    assert _run(tmp_path, 1, 0.5) == 0.5
'''


class TestPlugin:
    """Installed through the pytest11 entry point; light until a test asks for the fixture."""

    def test_entry_point_names_this_module(self) -> None:
        """pyproject's pytest11 entry point loads otel_sparse.testing."""
        found = metadata.entry_points()
        # 3.10+ selects by keyword; 3.9 returns a dict of groups
        group = found.select(group="pytest11") if hasattr(found, "select") else found["pytest11"]
        points = {ep.name: ep.value for ep in group}
        assert points.get("otel_sparse") == "otel_sparse.testing"

    def test_loading_the_plugin_imports_nothing_heavy(self) -> None:
        """What pytest imports at start-up (the plugin and its fixture module) stays light."""
        code = ("import json, sys, otel_sparse.testing, otel_sparse._pytest_fixture; "
                f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} "
                f"or m in {HEAVY!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=120)
        assert json.loads(out.stdout) == []

    def test_two_user_tests_that_log_both_pass(self, pytester: pytest.Pytester) -> None:
        """Each test gets its own singleton and sink: the second no longer fails (KeyError)."""
        pytester.makepyfile(test_user=USER_TESTS)
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=2)

    def test_without_the_fixture_the_second_test_fails(self, pytester: pytest.Pytester) -> None:
        """The bug the fixture exists for: the singleton outlives the first test."""
        pytester.makepyfile(test_user=WITHOUT_THE_FIXTURE)
        result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines(["*KeyError*"])


class TestCapture:
    """The fixture's body, in this process: a fresh singleton, then the old one put back."""

    def test_previous_singleton_and_registrations_come_back(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A configured logger survives a capture; registrations made inside are undone."""
        fresh_logger.register_metric("outer", float)
        outer = fresh_logger(log_path=str(tmp_path / "outer"), enabled_metrics="all")
        capture_block = capture_logger(str(tmp_path / "inner"))
        capture = next(capture_block)
        assert isinstance(capture, MetricCapture)
        assert fresh_logger() is capture.logger is not outer
        fresh_logger.register_metric("inner", float)
        fresh_logger().log("outer", 0.5)
        fresh_logger().log("inner", 1.0)
        assert [e["metric"] for e in capture.events()] == ["outer", "inner"]
        with pytest.raises(StopIteration):
            next(capture_block)
        assert fresh_logger() is outer
        assert fresh_logger.get_registered_metrics() == {"outer": float}
        assert capture.logger._pipeline is None  # closed

    def test_fixture_in_this_suite(self, otel_sparse_capture: MetricCapture) -> None:
        """The plugin is active here too: the fixture gives a logger that records everything."""
        MicroMetricLogger.register_metric("plugin_check", float)
        MicroMetricLogger().log("plugin_check", 0.75, {"layer_idx": 2, "head_idx": 1})
        point = otel_sparse_capture.histogram("plugin_check", layer=2, head=1)
        assert point.count == 1 and point.sum == 0.75
        assert otel_sparse_capture.events()[0]["metadata"] == {"layer_idx": 2, "head_idx": 1}
