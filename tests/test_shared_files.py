"""Line files shared by several writers, torn tails of any length, hostile paths, honest counts.

Several processes without RANK (``multiprocessing`` / ``torch.multiprocessing.spawn`` workers)
and several loggers in one process append to the same ``micro_metrics.jsonl``: every
byte-changing operation (append, torn-tail repair, the rollback after a failed write) holds a
file lock, so nobody cuts bytes another writer is still writing. Race tests repeat a bounded
number of rounds; before the lock they lost lines in at least 9 runs of 10 here (see each test).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.exporters._files import AppendOnlyFile
from otel_sparse.testing import InMemoryMetricExporter

DENSITY = "research_attention_density"
EVENT_ERRORS = {"reason": "event_file_error", "metric": "*"}
LIMIT_S = 120
THREAD_ROUNDS = 160

# A writer appending ~1 MB batches while another writer opens the file afresh before each of
# its one-line appends (a new process or logger checks the file's tail when it first opens it).
_RACE = """
    import json, os, sys, time
    from otel_sparse.exporters._files import AppendOnlyFile
    path, role, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    started = path + ".started"
    if role == "big":
        while not os.path.exists(started):
            time.sleep(0.001)
        f = AppendOnlyFile(path)
        pad = "x" * 30000
        for b in range(rounds):
            f.append_lines([json.dumps({"w": "big", "i": b * 32 + j, "pad": pad}).encode()
                            for j in range(32)])
        open(path + ".done", "w").close()
    else:
        open(started, "w").close()
        i = 0
        while not os.path.exists(path + ".done") and i < rounds:
            AppendOnlyFile(path).append_lines([json.dumps({"w": "small", "i": i}).encode()])
            i += 1
        print(i)
"""


def _lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), f"{path} ends in a partial line"
    out = []
    for n, line in enumerate(raw.splitlines()):
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"line {n} does not parse: {line[:80]!r}...") from None
    return out


def _python(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class TestSharedFile:
    """Writers that share one file never cut each other's lines."""

    def test_fresh_opener_never_cuts_another_process_append(self, tmp_path: Path) -> None:
        """A process opening the file while another is mid-append leaves that append whole.

        Before the file lock, the opener's torn-tail repair truncated the other process's
        half-written batch: lines lost in 10 runs of 10 here (40 batches of 1 MB each).
        """
        path = tmp_path / "micro_metrics.jsonl"
        big = _python(_RACE, str(path), "big", "40")
        small = _python(_RACE, str(path), "small", "200000")
        try:
            out, err = small.communicate(timeout=LIMIT_S)
            assert small.returncode == 0, err
            _, big_err = big.communicate(timeout=LIMIT_S)
            assert big.returncode == 0, big_err
        finally:
            for proc in (big, small):
                if proc.poll() is None:
                    proc.kill()
        rows = _lines(path)
        assert sorted(r["i"] for r in rows if r["w"] == "big") == list(range(40 * 32))
        assert sorted(r["i"] for r in rows if r["w"] == "small") == list(range(int(out)))

    def test_two_writers_in_one_process_lose_nothing(self, tmp_path: Path) -> None:
        """Two loggers' files on one path, on two threads: every line of both arrives.

        Before the lock: lines lost in 9 runs of 10 here with 120 rounds (7 of 10 with 40);
        160 rounds leave a margin.
        """
        path = tmp_path / "micro_metrics.jsonl"
        done = threading.Event()
        pad = "x" * 30000

        def big() -> None:
            f = AppendOnlyFile(str(path))
            for b in range(THREAD_ROUNDS):
                f.append_lines([json.dumps({"w": "big", "i": b * 32 + j, "pad": pad}).encode()
                                for j in range(32)])
            done.set()

        writer = threading.Thread(target=big)
        writer.start()
        small = 0
        while not done.is_set() and small < 200_000:
            AppendOnlyFile(str(path)).append_lines([json.dumps({"w": "small", "i": small}).encode()])
            small += 1
        writer.join(LIMIT_S)
        rows = _lines(path)
        assert sorted(r["i"] for r in rows if r["w"] == "big") == list(range(THREAD_ROUNDS * 32))
        assert sorted(r["i"] for r in rows if r["w"] == "small") == list(range(small))

    def test_rankless_processes_share_micro_metrics_jsonl(self, tmp_path: Path) -> None:
        """Four workers without RANK log into one folder: one shared event file, every event."""
        script = """
            import os, sys
            from otel_sparse import MicroMetricLogger
            MicroMetricLogger.register_metric("research_attention_density", float)
            logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                                       exporters=["jsonl"], flush_every=64)
            pad = "y" * 4000
            for i in range(2000):
                logger.log("research_attention_density", 0.5,
                           {"layer_idx": i % 4, "worker": sys.argv[2], "i": i, "pad": pad})
            logger.close()
        """
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("OTEL_") and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(tmp_path),
                                   str(w)], env=env, stderr=subprocess.PIPE, text=True)
                 for w in range(4)]
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=LIMIT_S)
                assert proc.returncode == 0, err
                assert "partial line" not in err, err
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        assert sorted(p.name for p in tmp_path.glob("micro_metrics*.jsonl")) == [
            "micro_metrics.jsonl"]
        rows = _lines(tmp_path / "micro_metrics.jsonl")
        seen = sorted((r["metadata"]["worker"], r["metadata"]["i"]) for r in rows)
        assert seen == [(str(w), i) for w in range(4) for i in range(2000)]


class TestTornTailOfAnyLength:
    """A partial last line is removed whatever its length (kill -9 during a 1-8 MB line)."""

    @pytest.mark.parametrize("size", [70_000, 3_000_000])
    def test_long_partial_line_is_removed(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, size: int,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Whole lines stay, the torn one goes, the next event is a line of its own."""
        path = tmp_path / "micro_metrics.jsonl"
        good = [json.dumps({"metric": "old", "n": i}) for i in range(3)]
        fragment = '{"timestamp": "2026-01-01", "metadata": {"blob": "' + "z" * size
        path.write_text("\n".join(good) + "\n" + fragment)
        fresh_logger.register_metric(DENSITY, float)
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=[])
            logger.log(DENSITY, 0.5, {"layer_idx": 0})
            logger.close()
        rows = _lines(path)
        assert rows[:3] == [json.loads(g) for g in good]
        assert [r["metric"] for r in rows[3:]] == [DENSITY]
        repaired = [r.getMessage() for r in caplog.records if "partial line" in r.getMessage()]
        assert len(repaired) == 1 and f"({len(fragment)} bytes)" in repaired[0]

    def test_tail_torn_by_a_dead_sibling_is_repaired_before_the_next_append(
        self, tmp_path: Path
    ) -> None:
        """A writer already running repairs a tail another writer (killed) left torn."""
        path = tmp_path / "micro_metrics.jsonl"
        f = AppendOnlyFile(str(path))
        f.append_lines([b'{"n": 0}'])
        with open(path, "ab") as sibling:  # killed halfway through its line
            sibling.write(b'{"n": "torn')
        f.append_lines([b'{"n": 1}'])
        assert _lines(path) == [{"n": 0}, {"n": 1}]


class TestHostilePaths:
    """A symlink or a non-file where a log file goes is refused, with one clear warning."""

    @pytest.mark.parametrize("name", ["micro_metrics.jsonl", "metrics.jsonl"])
    def test_symlink_is_not_followed(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, name: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The link's target is left byte for byte; the refused events are counted."""
        target = tmp_path / "precious.txt"
        target.write_bytes(b"keep me\nlast line without newline")
        run = tmp_path / "run"
        run.mkdir()
        (run / name).symlink_to(target)
        fresh_logger.register_metric(DENSITY, float)
        sink = InMemoryMetricExporter()
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger = fresh_logger(log_path=str(run), enabled_metrics="all",
                                  exporters=["jsonl", sink])
            for _ in range(2):
                for i in range(10):
                    logger.log(DENSITY, i / 10, {"layer_idx": 0})
                logger.flush()
            logger.close()
        assert target.read_bytes() == b"keep me\nlast line without newline"
        warned = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
        assert len(warned) == 1 and name in warned[0]
        if name == "micro_metrics.jsonl":
            assert sink.value("otel_sparse.events.dropped", **EVENT_ERRORS) == 20
        else:
            assert len(_lines(run / "micro_metrics.jsonl")) == 20

    def test_fifo_is_refused(self, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
        """A named pipe at the file's path: refused as not a regular file, nothing hangs."""
        path = tmp_path / "micro_metrics.jsonl"
        os.mkfifo(path)
        with pytest.raises(OSError, match="not a regular file"):
            AppendOnlyFile(str(path)).append_lines([b'{"n": 0}'])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a disk that really fills up); skipped where root cannot mount one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], check=False)


class TestHonestCounters:
    """events.logged counts written lines only: accepted = written + dropped, always."""

    def test_full_disk_counts_only_written_events(
        self, fresh_logger: type[MicroMetricLogger], small_disk: Path,
    ) -> None:
        """5,000 events into 256 KiB: logged equals the lines on disk; the rest are drops."""
        fresh_logger.register_metric(DENSITY, float)
        sink = InMemoryMetricExporter()
        logger = fresh_logger(log_path=str(small_disk), enabled_metrics="all",
                              exporters=[sink])
        accepted = 5000
        for i in range(accepted):
            logger.log(DENSITY, 0.5, {"layer_idx": i % 4, "step": i})
            if i % 250 == 249:  # batches of 250 (~30 KB): some fit, the later ones do not
                logger.flush()
        written = len(_lines(small_disk / "micro_metrics.jsonl"))
        logged = sink.value("otel_sparse.events.logged", metric=DENSITY)
        dropped = sink.value("otel_sparse.events.dropped", **EVENT_ERRORS)
        assert 0 < written < accepted
        assert logged == written
        assert logged + dropped == accepted
        logger.close()
