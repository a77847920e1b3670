"""Disk faults: a full disk (a file at RLIMIT_FSIZE), a read-only folder, a folder deleted mid-run; file modes.

Under each fault: one clear warning, nothing raised into the training loop, the refused data
counted (``otel_sparse.events.dropped{reason="event_file_error"}`` for events,
``otel_sparse.export.failures{exporter="jsonl"}`` for metric rows), every other exporter
still fed, and the files written again once the disk takes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import latest_points, read_jsonl

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
FILE_LIMIT = 4 << 20
EVENT_ERRORS = {"reason": "event_file_error", "metric": "*"}
SINK = "InMemoryMetricExporter"


def _logger(
    cls: type[MicroMetricLogger], path: Path
) -> tuple[MicroMetricLogger, InMemoryMetricExporter]:
    sink = InMemoryMetricExporter()
    cls.register_metric(DENSITY, float)
    return cls(log_path=str(path), enabled_metrics="all", exporters=["jsonl", sink]), sink


def _log_and_flush(logger: MicroMetricLogger, n: int = 10) -> None:
    for i in range(n):
        logger.log(DENSITY, (i % 8) / 8, {"layer_idx": 0})
    logger.flush()  # raises nothing, whatever the disk does


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def _file_count(path: Path) -> int:
    rows = latest_points(path, NAME)
    return int(sum(row["count"] for row in rows.values()))


@contextlib.contextmanager
def refusing(path: Path) -> Iterator[None]:
    """``path`` takes no further byte: filled to RLIMIT_FSIZE, every append fails (EFBIG).

    A per-file full disk that needs no root and no /dev/full symlink (log files are never
    written through links). Removing the file is "space again": a new file starts small.
    """
    line = b'{"metric": "filler"}\n'
    path.write_bytes(line * (FILE_LIMIT // len(line)))
    with path.open("ab") as f:
        f.write(b"\n" * (FILE_LIMIT - path.stat().st_size))
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)
        signal.signal(signal.SIGXFSZ, handler)


class TestDiskFull:
    """A file the disk takes no more bytes of: every append refused (EFBIG), as when full."""

    def test_event_file_on_a_full_disk(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Events are counted as dropped and warned once; metrics go on; writing resumes."""
        events = tmp_path / "micro_metrics.jsonl"
        with refusing(events), caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger, sink = _logger(fresh_logger, tmp_path)
            _log_and_flush(logger)
            _log_and_flush(logger)
            assert sink.value("otel_sparse.events.dropped", **EVENT_ERRORS) == 20
            assert sink.histogram(NAME).count == 20  # aggregation never needed the file
            assert _file_count(tmp_path / "metrics.jsonl") == 20
            warned = _messages(caplog, "event_file_error")
            assert len(warned) == 1 and "File too large" in warned[0]
            assert events.stat().st_size == FILE_LIMIT  # refused batches cut back, whole

            events.unlink()  # space again
            _log_and_flush(logger)
            assert len(read_jsonl(events)) == 10
            assert len(_messages(caplog, "writing")) == 1
            assert sink.histogram(NAME).count == 30
            assert sink.value("otel_sparse.events.dropped", **EVENT_ERRORS) == 20
            assert sink.value("otel_sparse.events.logged", metric=DENSITY) == 10

    def test_metrics_file_on_a_full_disk(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The jsonl exporter fails (counted, warned once); events and other exporters go on."""
        metrics = tmp_path / "metrics.jsonl"
        with refusing(metrics), caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger, sink = _logger(fresh_logger, tmp_path)
            for _ in range(3):
                _log_and_flush(logger)
            assert sink.value("otel_sparse.export.failures", exporter="jsonl") >= 2
            assert len(_messages(caplog, "exporter jsonl failed")) == 1
            assert len(_messages(caplog, "cannot write")) == 1
            assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == 30
            assert sink.histogram(NAME).count == 30

            metrics.unlink()
            _log_and_flush(logger)
            assert _file_count(metrics) == 40  # cumulative rows: nothing lost in the totals
            assert len(_messages(caplog, "exporter jsonl recovered")) == 1


class ReadOnlySwitch:
    """Makes one folder read-only and writable again, in a way that stops root too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False
        self.how = "bind mount" if os.geteuid() == 0 else "chmod"

    def _mount(self, *args: str) -> None:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"mount {' '.join(args)}: {done.stderr.strip()}")

    def read_only(self) -> None:
        """From now on, writes under the folder fail (EROFS for root, EACCES otherwise)."""
        if self.how == "chmod":
            for folder in (self.path, *[p for p in self.path.rglob("*") if p.is_dir()]):
                folder.chmod(0o555)
            for file in (p for p in self.path.rglob("*") if p.is_file()):
                file.chmod(0o444)
            return
        if not self.mounted:
            self._mount("--bind", str(self.path), str(self.path))
            self.mounted = True
        self._mount("-o", "remount,ro,bind", str(self.path))

    def writable(self) -> None:
        """Undo ``read_only``."""
        if self.how == "chmod":
            for p in (self.path, *self.path.rglob("*")):
                p.chmod(0o755 if p.is_dir() else 0o644)
            return
        self._mount("-o", "remount,rw,bind", str(self.path))

    def cleanup(self) -> None:
        """Remove the bind mount (if any)."""
        if self.mounted:
            if subprocess.run(["umount", str(self.path)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
        elif self.how == "chmod" and self.path.exists():
            self.writable()


@pytest.fixture
def read_only_switch(tmp_path: Path) -> Iterator[ReadOnlySwitch]:
    """A ReadOnlySwitch over ``tmp_path/run``; skips only if nothing can make it read-only."""
    run = tmp_path / "run"
    run.mkdir()
    switch = ReadOnlySwitch(run)
    try:
        try:
            switch.read_only()
            probe = run / "probe"
            try:
                probe.write_text("x")
            except OSError:
                pass
            else:
                probe.unlink()
                pytest.skip(f"{switch.how} did not make {run} read-only here")
            switch.writable()
        except OSError as exc:
            pytest.skip(f"cannot make a read-only folder here (root, and {exc})")
        yield switch
    finally:
        switch.cleanup()


class TestReadOnlyFolder:
    """The run folder turns read-only mid-run, then writable again."""

    def test_read_only_then_writable_again(
        self, fresh_logger: type[MicroMetricLogger], read_only_switch: ReadOnlySwitch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Refused writes are warned once and counted; the sink goes on; files resume."""
        run = read_only_switch.path
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger, sink = _logger(fresh_logger, run)
            _log_and_flush(logger)
            read_only_switch.read_only()
            _log_and_flush(logger)
            _log_and_flush(logger)
            assert sink.value("otel_sparse.events.dropped", **EVENT_ERRORS) == 20
            assert sink.value("otel_sparse.export.failures", exporter="jsonl") >= 1
            assert sink.histogram(NAME).count == 30
            assert len(_messages(caplog, "event_file_error")) == 1
            assert len(_messages(caplog, "exporter jsonl failed")) == 1

            read_only_switch.writable()
            _log_and_flush(logger)
            assert len(read_jsonl(run / "micro_metrics.jsonl")) == 20  # 10 before, 10 after
            assert _file_count(run / "metrics.jsonl") == 40
            assert len(_messages(caplog, "writing")) == 1
            logger.close()


class TestFolderDeleted:
    """Someone deletes the run folder while the run goes on."""

    def test_folder_is_created_again_with_one_warning(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The files start again in a new folder; one warning however often it happens."""
        run = tmp_path / "run"
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger, sink = _logger(fresh_logger, run)
            _log_and_flush(logger)
            shutil.rmtree(run)
            _log_and_flush(logger)
            assert len(read_jsonl(run / "micro_metrics.jsonl")) == 10
            assert _file_count(run / "metrics.jsonl") == 20  # cumulative totals
            shutil.rmtree(run)
            _log_and_flush(logger)
            assert len(read_jsonl(run / "micro_metrics.jsonl")) == 10
        assert len(_messages(caplog, "disappeared")) == 1
        assert sink.histogram(NAME).count == 30

    def test_writing_resumes_when_the_folder_can_exist_again(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A file where the folder was blocks it (counted, warned once); removing it heals."""
        run = tmp_path / "run"
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            logger, sink = _logger(fresh_logger, run)
            _log_and_flush(logger)
            shutil.rmtree(run)
            run.write_text("not a folder")
            _log_and_flush(logger)
            _log_and_flush(logger)
            assert sink.value("otel_sparse.events.dropped", **EVENT_ERRORS) == 20
            assert len(_messages(caplog, "event_file_error")) == 1
            run.unlink()
            _log_and_flush(logger)
            assert len(read_jsonl(run / "micro_metrics.jsonl")) == 10
            assert _file_count(run / "metrics.jsonl") == 40
            assert sink.histogram(NAME).count == 40


class TestFileModes:
    """Files and folders otel_sparse creates follow the user's umask."""

    def test_umask_027(self, tmp_path: Path) -> None:
        """umask 027: files rw-r-----, folders rwxr-x---, none readable by others."""
        script = """
            import os, sys
            os.umask(0o027)
            import otel_sparse
            from otel_sparse import MicroMetricLogger
            MicroMetricLogger.register_metric("research_attention_density", float)
            logger = otel_sparse.start_run(sys.argv[1], exporters=["jsonl", "otlp_file"])
            logger.log("research_attention_density", 0.5, {"layer_idx": 0})
            otel_sparse.end_run(logger)
        """
        run = tmp_path / "runs" / "r1"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(run)],
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        files = {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in run.rglob("*")}
        assert set(files) >= {"micro_metrics.jsonl", "metrics.jsonl", "otlp",
                              "otlp/metrics.jsonl", "run.json"}
        for name, mode in files.items():
            expected = 0o750 if (run / name).is_dir() else 0o640
            assert mode == expected, f"{name}: {oct(mode)}"
        assert stat.S_IMODE(run.stat().st_mode) == 0o750
