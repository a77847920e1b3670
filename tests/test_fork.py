"""Forked workers: each writes its own files, the parent's pending events stay the parent's.

DataLoader workers started with ``fork`` log from ``__getitem__`` while a parent thread keeps
logging; plain ``os.fork()`` children log and leave through ``os._exit``. Every wait has a
timeout, so a deadlock fails the test instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.exporters._files import AppendOnlyFile
from tests._helpers import latest_points, read_jsonl

torch = pytest.importorskip("torch")
from torch.utils.data import DataLoader, Dataset  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")]

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
ITEMS = 64
LAYERS = 4


class LoggingDataset(Dataset):  # type: ignore[type-arg]
    """Logs one event per item, from whichever process fetches it; returns (item, pid)."""

    def __len__(self) -> int:
        return ITEMS

    def __getitem__(self, index: int) -> Any:
        MicroMetricLogger().log(DENSITY, 0.5, {"layer_idx": index % LAYERS, "item": index})
        return torch.tensor([index, os.getpid()])


class _ParentLogger:
    """A parent thread that logs 0.25 in a loop (so forks happen mid-log) until stopped."""

    def __init__(self, logger: MicroMetricLogger) -> None:
        self.count = 0
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                logger.log(DENSITY, 0.25, {"layer_idx": 0, "parent": True})
                self.count += 1
                if self.count % 64 == 0:
                    time.sleep(0)  # let the fork-starting thread in as well

        self._thread = threading.Thread(target=loop, name="parent-logger", daemon=True)

    def __enter__(self) -> _ParentLogger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the parent's logging thread hung"


def _wait_child(pid: int, timeout: float = 60.0) -> int:
    """The exit code of a forked child; kills it and fails if it does not end in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"forked child {pid} did not exit within {timeout}s (deadlock?)")


def _child_files(path: Path, pid: int) -> tuple[Path, Path]:
    return (path / f"micro_metrics.rank0.pid{pid}.jsonl", path / f"metrics.rank0.pid{pid}.jsonl")


def _logger(cls: type[MicroMetricLogger], path: Path, **kwargs: Any) -> MicroMetricLogger:
    cls.register_metric(DENSITY, float)
    return cls(log_path=str(path), enabled_metrics="all", **kwargs)


class TestDataLoaderWorkers:
    """torch DataLoader, num_workers=2, multiprocessing_context="fork"."""

    @pytest.mark.timeout(240)
    @pytest.mark.parametrize("rounds", [1, 2], ids=["one-epoch", "two-epochs"])
    def test_workers_log_into_their_own_files(
        self, rounds: int, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Workers' events land in their pid files (flushed at exit), the parent's in its own."""
        logger = _logger(fresh_logger, tmp_path, flush_every=100_000)
        for i in range(50):  # queued in the parent when the workers fork
            logger.log(DENSITY, 0.125, {"layer_idx": 1, "before_fork": i})
        assert len(logger.log_queue) == 50
        loader = DataLoader(LoggingDataset(), batch_size=4, num_workers=2,
                            multiprocessing_context="fork", timeout=60)
        fetched: list[tuple[int, int]] = []
        with _ParentLogger(logger) as parent:
            for _ in range(rounds):
                for batch in loader:  # the workers are joined when each epoch ends
                    fetched.extend((int(i), int(pid)) for i, pid in batch)
        logger.flush()

        worker_pids = {pid for _, pid in fetched}
        assert len(worker_pids) == 2 * rounds and os.getpid() not in worker_pids
        assert Counter(i for i, _ in fetched) == Counter({i: rounds for i in range(ITEMS)})
        for pid in worker_pids:
            events_file, metrics_file = _child_files(tmp_path, pid)
            mine = sorted(i for i, p in fetched if p == pid)
            events = read_jsonl(events_file)
            assert sorted(e["metadata"]["item"] for e in events) == mine
            assert all(e["value"] == 0.5 for e in events)  # nothing of the parent's
            rows = [r for r in read_jsonl(metrics_file) if r["metric"] == NAME]
            assert rows and {r["pid"] for r in rows} == {pid}
            counts = {layer: row["count"]
                      for (layer, _), row in latest_points(metrics_file, NAME).items()}
            assert counts == dict(Counter(i % LAYERS for i in mine))

        parent_events = read_jsonl(tmp_path / "micro_metrics.jsonl")
        before = [e["metadata"]["before_fork"] for e in parent_events
                  if "before_fork" in e["metadata"]]
        assert before == list(range(50))  # written once, by the parent only
        assert sum(1 for e in parent_events if e["metadata"].get("parent")) == parent.count
        assert len(parent_events) == 50 + parent.count
        assert parent.count > 0
        parent_rows = read_jsonl(tmp_path / "metrics.jsonl")
        assert {r["pid"] for r in parent_rows} == {os.getpid()}
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert points[(1, None)]["count"] == 50
        assert points[(0, None)]["count"] == parent.count
        assert logger.get_total_records_logged() == 50 + parent.count
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["micro_metrics.jsonl", "metrics.jsonl"]
            + [name for pid in worker_pids for name in (
                f"micro_metrics.rank0.pid{pid}.jsonl", f"metrics.rank0.pid{pid}.jsonl")]
        )


class TestPlainFork:
    """os.fork() children that log, flush/close and leave through os._exit."""

    @pytest.mark.timeout(120)
    @pytest.mark.parametrize("ending", ["flush", "close", "flush-then-close"])
    def test_child_writes_its_events_before_os_exit(
        self, ending: str, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The child's events reach its pid files; the parent's queued event is not copied."""
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.125, {"layer_idx": 0})  # queued in the parent at fork time
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                child = MicroMetricLogger()
                for _ in range(5):
                    child.log(DENSITY, 0.5, {"layer_idx": 7})
                if ending.startswith("flush"):
                    child.flush()
                if ending.endswith("close"):
                    child.close()
                code = 0
            finally:
                os._exit(code)
        assert _wait_child(pid) == 0
        logger.flush()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [0.125]
        events_file, metrics_file = _child_files(tmp_path, pid)
        assert [e["value"] for e in read_jsonl(events_file)] == [0.5] * 5
        rows = [r for r in read_jsonl(metrics_file) if r["metric"] == NAME]
        assert {r["pid"] for r in rows} == {pid}
        assert latest_points(metrics_file, NAME)[(7, None)]["count"] == 5
        assert latest_points(tmp_path / "metrics.jsonl", NAME)[(0, None)]["count"] == 1

    @pytest.mark.timeout(120)
    def test_fork_while_the_writer_holds_pending_batches(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Batches handed to the parent's writer but not yet written stay the parent's."""
        logger = _logger(fresh_logger, tmp_path, flush_every=10)
        pipeline = logger._pipeline
        assert pipeline is not None
        with pipeline._write_lock:  # the parent's writer cannot drain while we fork
            for i in range(100):
                logger.log(DENSITY, 0.125, {"layer_idx": 0, "i": i})
            assert pipeline._pending_events == 100
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    child = MicroMetricLogger()
                    child.log(DENSITY, 0.5, {"layer_idx": 7})
                    child.close()
                    code = 0
                finally:
                    os._exit(code)
        assert _wait_child(pid) == 0
        logger.flush()
        assert [e["metadata"]["i"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == (
            list(range(100)))
        events_file, _ = _child_files(tmp_path, pid)
        assert [e["value"] for e in read_jsonl(events_file)] == [0.5]

    @pytest.mark.timeout(120)
    def test_many_forks_while_threads_log(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Twenty forks taken mid-log() from a busy parent: no child hangs, none loses data."""
        logger = _logger(fresh_logger, tmp_path, flush_every=7)
        children: list[int] = []
        with _ParentLogger(logger) as parent:
            for _ in range(20):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    code = 1
                    try:
                        child = MicroMetricLogger()
                        for _ in range(3):
                            child.log(DENSITY, 0.5, {"layer_idx": 7})
                        child.close()
                        code = 0
                    finally:
                        os._exit(code)
                children.append(pid)
                time.sleep(0.005)
        for pid in children:
            assert _wait_child(pid) == 0
        logger.flush()
        for pid in children:
            events_file, _ = _child_files(tmp_path, pid)
            assert [e["value"] for e in read_jsonl(events_file)] == [0.5] * 3
        parent_events = read_jsonl(tmp_path / "micro_metrics.jsonl")
        assert len(parent_events) == parent.count
        assert {e["value"] for e in parent_events} == {0.25}


class TestForkWhileConstructing:
    """The singleton's construction lock, held by a parent thread at the fork, is new in the
    child (issue 11 item 5: every new lock is fork-safe)."""

    @pytest.mark.timeout(120)
    def test_child_constructs_while_a_parent_thread_held_the_lock(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A parent thread sits inside the construction lock when the main thread forks; the
        child builds its logger (the locked path: arguments given) and writes its event."""
        from otel_sparse import facade

        fresh_logger.register_metric(DENSITY, float)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with facade._constructing.lock:
                held.set()
                release.wait(60)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert held.wait(60)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                code = 1
                try:
                    child = MicroMetricLogger(log_path=str(tmp_path / "child"),
                                              enabled_metrics="all")
                    child.configure_logging(str(tmp_path / "child"), "all")
                    child.log(DENSITY, 0.5, {"layer_idx": 7})
                    child.close()
                    code = 0
                finally:
                    os._exit(code)
        finally:
            release.set()
            holder.join(60)
        assert _wait_child(pid) == 0
        files = list((tmp_path / "child").glob("micro_metrics*.jsonl"))
        assert [e["value"] for f in files for e in read_jsonl(f)] == [0.5]


FORK_KILL_ROUNDS = 2
_FORK_WHILE_LOCKED = """
    import os, signal, sys, threading, time
    from otel_sparse.exporters._files import AppendOnlyFile
    f = AppendOnlyFile(sys.argv[1])
    pad = b"x" * 250_000

    def write_forever():  # 8 MB appends: holds the file lock most of the time
        while True:
            f.append_lines([pad] * 32)

    threading.Thread(target=write_forever, daemon=True).start()
    time.sleep(0.1)
    pid = os.fork()
    if pid == 0:  # a long-lived worker that never writes
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the parent dies, most likely mid-append
"""


class TestFileLockAcrossFork:
    """Forked children never keep the event file's lock held for others."""

    @pytest.mark.timeout(200)
    def test_parent_killed_while_locked_leaves_the_file_writable(self, tmp_path: Path) -> None:
        """A parent killed mid-append right after forking a long-lived worker: others write.

        Without closing the child's copy of the locked descriptor, the lock outlived the
        parent until the child exited: the other writer waited in 9 runs of 10 here (two
        rounds each).
        """
        path = tmp_path / "micro_metrics.jsonl"
        children: list[int] = []
        try:
            for _ in range(FORK_KILL_ROUNDS):
                proc = subprocess.Popen(
                    [sys.executable, "-c", textwrap.dedent(_FORK_WHILE_LOCKED), str(path)],
                    stdout=subprocess.PIPE, text=True)
                assert proc.stdout is not None
                out = proc.stdout.readline()  # the child keeps the pipe open: no communicate()
                assert proc.wait(60) == -signal.SIGKILL, out
                proc.stdout.close()
                children.append(int(out))
                wrote = threading.Event()

                def append(done: threading.Event = wrote) -> None:
                    AppendOnlyFile(str(path)).append_lines([b'{"after": true}'])
                    done.set()

                threading.Thread(target=append, daemon=True).start()
                assert wrote.wait(20), "the file lock outlived the killed writer"
                assert path.read_bytes().endswith(b'{"after": true}\n')
        finally:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
