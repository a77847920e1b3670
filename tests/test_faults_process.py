"""Process faults: kill -9, torn tails, SIGTERM (with and without a handler of the user's), exit.

Each fault that ends a process happens to a real subprocess; the test then reads the files it
left. Nothing here asserts a duration: the one time bound (what a kill -9 loses) is checked
loosely, against a write delay twenty times smaller.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger, lifecycle
from otel_sparse.analysis import read_run
from tests._helpers import latest_points, read_jsonl, wait_for

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
EXIT_LIMIT_S = 60.0
"""How long a subprocess may take to react; generous: only a hang should ever reach it."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(extra)
    return env


def _start(script: str, *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    """Block until the script prints its first line ("ready")."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=EXIT_LIMIT_S)
        pytest.fail(f"subprocess did not start logging: {line!r}\n{err}")


def _whole_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file, asserting the file ends in a newline and each line parses."""
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path} ends in a partial line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.splitlines()]


def _lines_before_a_torn_tail(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a file a kill -9 may have cut in its last line: each one parses.

    The kernel can stop a large write between pages, so only the unterminated tail may be
    partial; the next writer removes it (TestTornTail).
    """
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(line) for line in whole.splitlines()]


# -- kill -9 ------------------------------------------------------------------------------

_LOG_FOREVER = """
    import sys, time
    from otel_sparse import MicroMetricLogger
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                               exporters=["jsonl", "otlp_file"])
    step = 0
    print("ready", flush=True)
    while True:  # a training loop: 32 heads a step, a short pause between steps
        for head in range(32):
            logger.log("research_attention_density", (step % 8) / 8,
                       {"layer_idx": step % 4, "head_idx": head, "step": step})
        step += 1
        time.sleep(0.002)
"""


_LOG_ONCE = """
    import sys
    from otel_sparse import MicroMetricLogger
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                               exporters=["jsonl", "otlp_file"])
    logger.log("research_attention_density", 0.5, {"layer_idx": 0})
    logger.close()
"""


class TestKillNine:
    """kill -9 at random moments: whole lines but a torn last one, repaired by the next run."""

    def test_no_partial_line_and_little_lost(self, tmp_path: Path) -> None:
        """Four kills into one folder: every whole line parses; the last event is recent; the
        next run leaves only whole lines."""
        run = tmp_path / "run"
        rng = random.Random()
        events_before = 0
        for _ in range(4):
            proc = _start(_LOG_FOREVER, str(run), OTEL_SPARSE_WRITE_DELAY="0.05",
                          OTEL_SPARSE_EXPORT_INTERVAL="100")
            try:
                _wait_ready(proc)
                wait_for(lambda n=events_before, f=run / "micro_metrics.jsonl": f.exists()
                         and len(_lines_before_a_torn_tail(f)) > n,
                         timeout=EXIT_LIMIT_S, what="new events on disk")
                time.sleep(rng.uniform(0.05, 0.8))
                killed_at = datetime.now()
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(timeout=EXIT_LIMIT_S) == -signal.SIGKILL
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate(timeout=EXIT_LIMIT_S)
            jsonl = sorted(run.rglob("*.jsonl"))
            assert {p.relative_to(run).as_posix() for p in jsonl} == {
                "micro_metrics.jsonl", "metrics.jsonl", "otlp/metrics.jsonl"}
            for path in jsonl:
                _lines_before_a_torn_tail(path)
            events = _lines_before_a_torn_tail(run / "micro_metrics.jsonl")
            assert len(events) > events_before
            events_before = len(events)
            last = datetime.fromisoformat(events[-1]["timestamp"])
            # write delay 0.05 s: ~0.1-0.3 s are at risk; 3 s leaves room for a busy machine
            assert killed_at - last < timedelta(seconds=3), (killed_at, last)
        # the next run in the folder repairs any torn tail before its first line
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_LOG_ONCE), str(run)], env=_env(),
            capture_output=True, text=True, timeout=EXIT_LIMIT_S, check=False)
        assert done.returncode == 0, done.stderr
        for path in sorted(run.rglob("*.jsonl")):
            _whole_lines(path)
        assert len(_whole_lines(run / "micro_metrics.jsonl")) == events_before + 1


# -- torn tails ---------------------------------------------------------------------------


class TestTornTail:
    """A partial last line from another cause is cut off the first time the file is opened."""

    @pytest.mark.parametrize("name", ["micro_metrics.jsonl", "metrics.jsonl"])
    def test_partial_line_is_repaired_on_next_open(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, name: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Good lines stay, the torn one goes (warned), new lines follow on their own lines."""
        good = [json.dumps({"metric": "old", "n": i}) for i in range(2)]
        (tmp_path / name).write_text("\n".join(good) + '\n{"timestamp": "2024-05-0')
        fresh_logger.register_metric(DENSITY, float)
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                                  exporters=["jsonl"])
            for i in range(3):
                logger.log(DENSITY, i / 8, {"layer_idx": 0})
            logger.close()
        lines = _whole_lines(tmp_path / name)
        assert lines[:2] == [json.loads(g) for g in good]
        assert len(lines) > 2 and all(row.get("metric") != "old" for row in lines[2:])
        repaired = [r for r in caplog.records if "partial line" in r.getMessage()]
        assert len(repaired) == 1 and name in repaired[0].getMessage()
        assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) >= 3


class TestTruncatedByAnotherTool:
    """read_run skips only the line another tool cut in half, with one warning."""

    def test_read_run_skips_only_the_cut_line(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Events and points files cut mid-line: every whole line is still read."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=["jsonl"])
        for i in range(10):
            logger.log(DENSITY, i / 8, {"layer_idx": 0, "head_idx": i})
        logger.close()
        for name in ("micro_metrics.jsonl", "metrics.jsonl"):
            path = tmp_path / name
            data = path.read_bytes()
            last_start = data.rstrip(b"\n").rfind(b"\n") + 1
            os.truncate(path, last_start + (len(data) - last_start) // 2)  # cut the last line
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            result = read_run(tmp_path)
        assert sorted(result.events["value"].tolist()) == [i / 8 for i in range(9)]
        assert len(result.points) >= 1
        skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
        assert len(skipped) == 1
        assert "2 unreadable line(s)" in skipped[0].getMessage()


# -- SIGTERM and normal exit --------------------------------------------------------------

_LOG_THEN_WAIT = """
    import os, signal, sys, time
    from otel_sparse import MicroMetricLogger
    folder, mode = sys.argv[1], sys.argv[2]
    if mode == "exit_handler":  # the user's handler: writes a marker, then exits
        def on_term(signum, frame):
            events = os.path.join(folder, "micro_metrics.jsonl")
            on_disk = sum(1 for _ in open(events)) if os.path.exists(events) else 0
            with open(os.path.join(folder, "marker"), "w") as f:
                f.write(f"{signum} {on_disk}")  # events already written when it ran
            os._exit(0)  # no atexit: only the SIGTERM flush can have written them
        signal.signal(signal.SIGTERM, on_term)
    elif mode == "flag_handler":  # the user's handler: asks the loop to stop after this step
        stop = []
        def on_term(signum, frame):
            stop.append(signum)
        signal.signal(signal.SIGTERM, on_term)
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=folder, enabled_metrics="all", flush_every=10**6,
                               exporters=["jsonl"])
    for i in range(40):
        logger.log("research_attention_density", (i % 8) / 8, {"layer_idx": i % 4})
    print("ready", flush=True)
    if mode == "flag_handler":
        while not stop:
            time.sleep(0.01)
        for i in range(40, 50):  # logging goes on after the handler ran
            logger.log("research_attention_density", (i % 8) / 8, {"layer_idx": i % 4})
        sys.exit(0)
    while True:
        time.sleep(0.05)
"""

# No write, no export happens by itself: only a flush can put the 40 events on disk.
_QUIET = {"OTEL_SPARSE_WRITE_DELAY": "3600", "OTEL_SPARSE_EXPORT_INTERVAL": "3600000"}


def _terminate(mode: str, folder: Path) -> subprocess.CompletedProcess[str]:
    proc = _start(_LOG_THEN_WAIT, str(folder), mode, **_QUIET)
    try:
        _wait_ready(proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=EXIT_LIMIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=EXIT_LIMIT_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class TestSigterm:
    """SIGTERM flushes every logger and keeps the process's own handling of SIGTERM."""

    def test_users_handler_still_runs_after_the_flush(self, tmp_path: Path) -> None:
        """Flush first, then the user's handler: it sees the 40 events on disk, then exits."""
        done = _terminate("exit_handler", tmp_path)
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "marker").read_text() == f"{int(signal.SIGTERM)} 40"
        assert len(_whole_lines(tmp_path / "micro_metrics.jsonl")) == 40
        totals = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert sum(row["count"] for row in totals.values()) == 40

    def test_handler_that_does_not_exit_lets_logging_go_on(self, tmp_path: Path) -> None:
        """A handler that only sets a flag: flushed at the signal, later events at exit."""
        done = _terminate("flag_handler", tmp_path)
        assert done.returncode == 0, done.stderr
        assert len(_whole_lines(tmp_path / "micro_metrics.jsonl")) == 50

    def test_default_action_still_kills_with_sigterm(self, tmp_path: Path) -> None:
        """Without a handler the process still dies of SIGTERM, after writing its events."""
        done = _terminate("default", tmp_path)
        assert done.returncode == -signal.SIGTERM, done.stderr
        assert len(_whole_lines(tmp_path / "micro_metrics.jsonl")) == 40
        totals = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert sum(row["count"] for row in totals.values()) == 40

    def test_normal_exit_without_close_writes_everything(self, tmp_path: Path) -> None:
        """sys.exit() without close(): the atexit flush writes the 40 waiting events."""
        script = _LOG_THEN_WAIT.replace('print("ready", flush=True)', "sys.exit(3)")
        proc = _start(script, str(tmp_path), "default", **_QUIET)
        _, err = proc.communicate(timeout=EXIT_LIMIT_S)
        assert proc.returncode == 3, err
        assert len(_whole_lines(tmp_path / "micro_metrics.jsonl")) == 40


@pytest.fixture
def sigterm_restored() -> Iterator[None]:
    """Put the test process's SIGTERM handler (and the facade's memory of it) back."""
    before = signal.getsignal(signal.SIGTERM)
    previous = lifecycle._previous_sigterm
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
        lifecycle._previous_sigterm = previous


class TestSigtermInstallation:
    """When the handler is (not) installed: lazily, main thread only, never over SIG_IGN."""

    def _configure(self, cls: type[MicroMetricLogger], path: Path) -> MicroMetricLogger:
        cls.register_metric(DENSITY, float)
        return cls(log_path=str(path), enabled_metrics="all")

    @pytest.mark.usefixtures("sigterm_restored")
    def test_installed_when_logging_is_configured(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Configuring logging chains the handler in front of the previous Python one."""
        def mine(signum: int, frame: Any) -> None:
            return None

        signal.signal(signal.SIGTERM, mine)
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger()  # no log path: nothing installed yet
        assert signal.getsignal(signal.SIGTERM) is mine
        logger.configure_logging(str(tmp_path), "all")
        assert signal.getsignal(signal.SIGTERM) is lifecycle._on_sigterm
        assert lifecycle._previous_sigterm is mine

    @pytest.mark.usefixtures("sigterm_restored")
    def test_ignored_sigterm_stays_ignored(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """SIG_IGN means the process wants to survive SIGTERM: no handler of ours."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._configure(fresh_logger, tmp_path)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN

    @pytest.mark.usefixtures("sigterm_restored")
    def test_not_installed_from_another_thread_or_when_disabled(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Configured on a worker thread, or with OTEL_SPARSE_SIGTERM_HANDLER=false: nothing."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        errors: list[BaseException] = []

        def configure() -> None:
            try:
                self._configure(fresh_logger, tmp_path / "thread")
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=configure)
        worker.start()
        worker.join()
        assert not errors
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        monkeypatch.setenv("OTEL_SPARSE_SIGTERM_HANDLER", "false")
        fresh_logger().configure_logging(str(tmp_path / "main"), "all")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
