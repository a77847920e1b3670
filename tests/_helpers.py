"""Small readers shared by tests: the files a run leaves, read back as plain Python."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from otel_sparse import MicroMetricLogger

_T = TypeVar("_T")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, parsed (each line must parse)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The events of a run's micro_metrics.jsonl; the file must exist."""
    return [json.loads(line) for line in (run_dir / "micro_metrics.jsonl").read_text().splitlines()]


@contextmanager
def jsonl_logger(run_dir: Path, *metrics: str,
                 timers: tuple[str, ...] = ()) -> Iterator[MicroMetricLogger]:
    """A fresh singleton writing JSONL into ``run_dir``, every metric (float) and timer
    registered, all enabled; closed and reset afterwards."""
    MicroMetricLogger._instance = None
    MicroMetricLogger._initialized = False
    MicroMetricLogger._registered_metrics.clear()
    MicroMetricLogger._metric_specs.clear()
    for timer in timers:
        MicroMetricLogger.register_timer(timer)
    for metric in metrics:
        MicroMetricLogger.register_metric(metric, float)
    log = MicroMetricLogger(log_path=str(run_dir), enabled_metrics="all", exporters=["jsonl"])
    try:
        yield log
    finally:
        log.close()
        MicroMetricLogger._instance = None
        MicroMetricLogger._initialized = False


def latest_points(path: Path, metric: str) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The last metrics.jsonl row per (layer, head) of one metric: its totals."""
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in read_jsonl(path):
        if row["metric"] == metric:
            latest[(row["layer"], row["head"])] = row
    return latest


def wait_for(predicate: Callable[[], _T], timeout: float = 10.0, what: str = "condition") -> _T:
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def cli_runner() -> Any:
    """A ``typer.testing.CliRunner`` with stdout and stderr apart on every click version.

    Newer typer/click keep them apart by default and have no ``mix_stderr``; click 8.1 (the
    last for Python 3.9) mixes them unless told not to.
    """
    import inspect

    from typer.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


@contextmanager
def thread_switch_interval(seconds: float) -> Iterator[None]:
    """Threads switch every ``seconds`` inside the block (CPython's default is 5 ms): race
    windows a thread switch must fall into show up in a bounded run."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
