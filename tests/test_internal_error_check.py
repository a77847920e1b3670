"""tests/conftest.py's test-wide check: a test during which the library swallowed one of its
own exceptions (an ``internal_error`` drop) fails, whichever thread counted it.

The check is run on small test files in a separate pytest process that uses this suite's
conftest, and the outcomes of those inner tests are asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INNER = textwrap.dedent('''
    import pytest

    import otel_sparse.series
    from otel_sparse import MicroMetricLogger


    class Unreadable(dict):
        """Metadata whose truth value raises: log() swallows that as internal_error."""

        def __bool__(self):
            raise RuntimeError("metadata exploded")


    def _logger(fresh_logger, tmp_path):
        MicroMetricLogger.register_metric("m", float)
        return fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10**6)


    def test_swallowed_in_log(fresh_logger, tmp_path):
        _logger(fresh_logger, tmp_path).log("m", 1.0, Unreadable(a=1))


    def test_swallowed_in_the_writer(fresh_logger, tmp_path, monkeypatch):
        def broken(states, values):
            raise RuntimeError("aggregate exploded")

        monkeypatch.setattr(otel_sparse.series, "add_values", broken)
        # Queued only: the writer meets the error when the check closes the logger.
        _logger(fresh_logger, tmp_path).log("m", 1.0)


    @pytest.mark.internal_error_expected
    def test_swallowed_on_purpose(fresh_logger, tmp_path):
        _logger(fresh_logger, tmp_path).log("m", 1.0, Unreadable(a=1))


    def test_clean(fresh_logger, tmp_path):
        logger = _logger(fresh_logger, tmp_path)
        logger.log("m", 1.0, {"layer": 1})
        logger.flush()
''')


def test_internal_errors_fail_the_test_that_caused_them(tmp_path: Path) -> None:
    inner = REPO / "tests" / f"test_zz_inner_{tmp_path.name}.py"
    inner.write_text(INNER, encoding="utf-8")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
             str(inner)],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
        )
    finally:
        inner.unlink()
    out = done.stdout
    reported = set(re.findall(r"^(PASSED|ERROR|FAILED) \S+::(\w+)", out, re.M))
    # The two that swallowed an error pass, then fail at teardown, where the check runs.
    assert {name for status, name in reported if status == "ERROR"} == {
        "test_swallowed_in_log", "test_swallowed_in_the_writer"
    }, out
    assert {name for status, name in reported if status == "FAILED"} == set(), out
    assert {("PASSED", "test_swallowed_on_purpose"), ("PASSED", "test_clean")} <= reported, out
    assert "metadata exploded" in out and "aggregate exploded" in out, out
