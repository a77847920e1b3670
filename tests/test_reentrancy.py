"""Signal handlers, finalisers, Ctrl-C, SIGTERM and exit: no hang, nothing log() took is lost.

Issue 11, items 1 and 3. A signal handler runs on the main thread between two bytecodes,
possibly inside one of the logger's locked sections; so does a ``__del__`` run by the garbage
collector on any thread. The tests put them there on purpose: a hook replaces the pipeline's
``submit`` (called inside the locked section of ``flush()`` and of the hand-off) and fires a
real signal, or drops the last reference to an object whose ``__del__`` logs, from inside it.
A hang is broken by a SIGALRM that raises ``Deadlock`` (lock waits are interruptible), so a
regression fails instead of hanging the run. Process-ending faults run in real subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from tests._helpers import read_jsonl, wait_for

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")

DENSITY = "research_attention_density"
DEADLOCK_AFTER_S = 5.0
"""A section of ours that has not ended by then is waiting on itself."""
EXIT_LIMIT_S = 60.0
"""How long a subprocess may take to react; generous: only a hang should ever reach it."""


class Deadlock(BaseException):
    """Raised by SIGALRM into a stuck main thread (a BaseException: log() swallows Exception)."""


@pytest.fixture
def deadlock_alarm() -> Iterator[None]:
    """SIGALRM after DEADLOCK_AFTER_S raises Deadlock; SIGUSR1 and SIGINT restored after."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadlock(f"still waiting after {DEADLOCK_AFTER_S}s: a lock waits on itself")

    saved = {s: signal.getsignal(s) for s in (signal.SIGALRM, signal.SIGUSR1, signal.SIGINT)}
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, DEADLOCK_AFTER_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _logger(cls: type[MicroMetricLogger], path: Path, monkeypatch: pytest.MonkeyPatch,
            **kwargs: Any) -> MicroMetricLogger:
    monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "3600")  # only flushes and hand-offs write
    cls.register_metric(DENSITY, float)
    return cls(log_path=str(path), enabled_metrics="all", exporters=["jsonl"], **kwargs)


def _hook_submit(logger: MicroMetricLogger, inside: Callable[[], None]) -> list[int]:
    """Run ``inside()`` the first time the pipeline's submit() is called (in the locked
    section of a flush or hand-off); returns a list that counts the calls."""
    pipeline = logger._pipeline
    assert pipeline is not None
    original = pipeline.submit
    calls: list[int] = []

    def submit(batch: Any) -> None:
        calls.append(len(batch))
        if len(calls) == 1:
            inside()
        original(batch)

    pipeline.submit = submit  # type: ignore[method-assign]
    return calls


def _items(path: Path) -> list[int]:
    return [e["metadata"]["i"] for e in read_jsonl(path / "micro_metrics.jsonl")]


def _signal_self(signum: int) -> Callable[[], None]:
    def fire() -> None:
        os.kill(os.getpid(), signum)
        for _ in range(3):  # a few calls: the handler runs at the next check, still in here
            len(())
    return fire


class TestSignalHandlerInsideLockedSection:
    """A SLURM-style SIGUSR1 handler calls the logger while main holds its lock (item 1)."""

    @pytest.mark.usefixtures("deadlock_alarm")
    @pytest.mark.parametrize("call", ["flush", "close", "log"])
    def test_handler_interrupting_a_hand_off_returns_and_everything_is_written(
        self, call: str, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The 10th log() hands the batch off; SIGUSR1 lands inside that locked section and
        its handler calls flush(), close() or log() (enough to hand off again)."""
        logger = _logger(fresh_logger, tmp_path, monkeypatch, flush_every=10)
        in_handler: list[int] = []

        def handler(signum: int, frame: Any) -> None:
            if call == "log":
                for i in range(100, 110):
                    logger.log(DENSITY, 0.5, {"i": i})
            else:
                getattr(logger, call)()
            in_handler.append(signum)

        signal.signal(signal.SIGUSR1, handler)
        _hook_submit(logger, _signal_self(signal.SIGUSR1))
        for i in range(10):
            logger.log(DENSITY, 0.25, {"i": i})
        assert in_handler == [signal.SIGUSR1]
        expected = list(range(10)) + (list(range(100, 110)) if call == "log" else [])
        wait_for(lambda: len(_items(tmp_path)) >= 10, timeout=EXIT_LIMIT_S,
                 what="the interrupted batch on disk")
        logger.flush()
        assert _items(tmp_path) == expected

    @pytest.mark.usefixtures("deadlock_alarm")
    def test_handler_interrupting_a_flush(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """flush() interrupted in its locked section by a handler that logs and flushes."""
        logger = _logger(fresh_logger, tmp_path, monkeypatch, flush_every=10**6)

        def handler(signum: int, frame: Any) -> None:
            logger.log(DENSITY, 0.5, {"i": 99})
            logger.flush()

        signal.signal(signal.SIGUSR1, handler)
        _hook_submit(logger, _signal_self(signal.SIGUSR1))
        for i in range(5):
            logger.log(DENSITY, 0.25, {"i": i})
        logger.flush()
        wait_for(lambda: len(_items(tmp_path)) == 6, timeout=EXIT_LIMIT_S,
                 what="both flushes on disk")
        assert _items(tmp_path) == [0, 1, 2, 3, 4, 99]


class _FlushesWhenCollected:
    """Calls the logger from ``__del__``, as researchers' cleanup objects do."""

    def __init__(self, logger: MicroMetricLogger, call: str) -> None:
        self.logger, self.call = logger, call

    def __del__(self) -> None:
        self.logger.log(DENSITY, 0.5, {"i": 77})
        getattr(self.logger, self.call)()


class TestFinalisersInsideLockedSection:
    """``__del__`` and ``weakref.finalize`` running inside the locked section (item 1)."""

    @pytest.mark.usefixtures("deadlock_alarm")
    @pytest.mark.parametrize("call", ["flush", "close"])
    def test_del_inside_hand_off(
        self, call: str, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The last reference to an object dies inside the hand-off; its __del__ logs and
        flushes or closes: it returns, and every event is written."""
        logger = _logger(fresh_logger, tmp_path, monkeypatch, flush_every=10)
        doomed = [_FlushesWhenCollected(logger, call)]
        _hook_submit(logger, doomed.clear)
        for i in range(10):
            logger.log(DENSITY, 0.25, {"i": i})
        assert not doomed
        logger.flush()
        assert sorted(_items(tmp_path)) == [*range(10), 77]

    @pytest.mark.usefixtures("deadlock_alarm")
    def test_weakref_finalize_inside_flush(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A weakref.finalize that closes the logger fires inside flush()'s locked section."""
        logger = _logger(fresh_logger, tmp_path, monkeypatch, flush_every=10**6)

        class Model:
            pass

        model = [Model()]
        weakref.finalize(model[0], logger.close)
        _hook_submit(logger, model.clear)
        for i in range(5):
            logger.log(DENSITY, 0.25, {"i": i})
        logger.flush()
        assert _items(tmp_path) == [0, 1, 2, 3, 4]


class TestKeyboardInterrupt:
    """Ctrl-C between the queue swap and submit() loses nothing (item 3)."""

    @pytest.mark.usefixtures("deadlock_alarm")
    @pytest.mark.parametrize("where", ["hand-off", "flush"])
    def test_sigint_inside_the_locked_section(
        self, where: str, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A real SIGINT raises KeyboardInterrupt inside the section; the batch survives."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logger = _logger(fresh_logger, tmp_path, monkeypatch,
                         flush_every=10 if where == "hand-off" else 10**6)
        _hook_submit(logger, _signal_self(signal.SIGINT))
        with pytest.raises(KeyboardInterrupt):
            for i in range(10):
                logger.log(DENSITY, 0.25, {"i": i})
            logger.flush()
        for i in range(10, 15):
            logger.log(DENSITY, 0.25, {"i": i})
        logger.flush()
        assert _items(tmp_path) == list(range(15))


class TestAfterClose:
    """Events logged after a close still reach the file within the write delay (item 3)."""

    def test_events_after_close_are_written_without_a_flush(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """close(), then 5 events and no flush: the write delay (0.05 s) still holds."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.05")
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              exporters=["jsonl"])
        logger.log(DENSITY, 0.25, {"i": 0})
        logger.close()
        for i in range(1, 6):
            logger.log(DENSITY, 0.25, {"i": i})
        wait_for(lambda: len(_items(tmp_path)) == 6, timeout=EXIT_LIMIT_S,
                 what="the events logged after close() on disk")
        assert _items(tmp_path) == list(range(6))


# -- subprocesses: SIGTERM and interpreter exit ----------------------------------------------


def _run(script: str, *args: str, **env: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update(env)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes() if path.exists() else b""
    assert not raw or raw.endswith(b"\n"), raw[-80:]
    return [json.loads(line) for line in raw.splitlines()]


_CLEANUP_AFTER_SIGTERM = """
    import signal, sys, time
    from otel_sparse import MicroMetricLogger
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                               exporters=["jsonl"])
    for i in range(40):
        logger.log("research_attention_density", 0.25, {"i": i})
    print("ready", flush=True)
    while not stop:
        time.sleep(0.01)
    for i in range(40, 236):  # cleanup and a final eval after SIGTERM, then kill -9
        logger.log("research_attention_density", 0.5, {"i": i})
    print("logged", flush=True)
    while True:
        time.sleep(0.05)
"""

_SIGTERM_INSIDE_FLUSH = """
    import os, signal, sys, time
    from otel_sparse import MicroMetricLogger
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all",
                               flush_every=10**6, exporters=["jsonl"])
    for i in range(40):
        logger.log("research_attention_density", 0.25, {"i": i})
    pipeline = logger._pipeline
    where = sys.argv[2]  # submit: the logger's locked section; _drain: the synchronous write
    original = getattr(pipeline, where)
    def hooked(*args):  # SIGTERM lands inside flush()
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(3):
            len(())
        return original(*args)
    setattr(pipeline, where, hooked)
    logger.flush()
    print("survived", flush=True)
"""

_LOG_AFTER_EXIT = """
    import atexit, sys, weakref
    folder = sys.argv[1]
    found = []  # the class, once imported; bound as a default: globals go first at teardown
    def late(start, found=found):  # user code logging during interpreter exit
        logger = found[0]()
        for i in range(start, start + 5):
            logger.log("research_attention_density", 0.5, {"i": i})
    class Model:
        pass
    model = Model()
    weakref.finalize(model, late, 200)  # made before the import: runs after the exit close
    atexit.register(late, 100)  # registered before the import: runs after the exit close
    from otel_sparse import MicroMetricLogger
    found.append(MicroMetricLogger)
    class Cleanup:  # a module global: its __del__ runs as the interpreter tears down
        def __init__(self):
            self.late = late
        def __del__(self):
            self.late(300)
    cleanup = Cleanup()
    MicroMetricLogger.register_metric("research_attention_density", float)
    logger = MicroMetricLogger(log_path=folder, enabled_metrics="all", exporters=["jsonl"])
    for i in range(40):
        logger.log("research_attention_density", 0.25, {"i": i})
"""


class TestSigtermAndExit:
    """SIGTERM and interpreter exit lose nothing log() accepted (item 3)."""

    def test_events_logged_after_sigterm_are_written_before_kill_nine(
        self, tmp_path: Path
    ) -> None:
        """A handler that lets the job clean up: 196 events after SIGTERM, then kill -9."""
        proc = _run(_CLEANUP_AFTER_SIGTERM, str(tmp_path), OTEL_SPARSE_WRITE_DELAY="0.05")
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            assert proc.stdout.readline().strip() == "logged"
            events = tmp_path / "micro_metrics.jsonl"
            wait_for(lambda: len(_lines(events)) >= 236, timeout=EXIT_LIMIT_S,
                     what="the events logged after SIGTERM on disk")
        finally:
            proc.kill()
            proc.communicate(timeout=EXIT_LIMIT_S)
        assert [e["metadata"]["i"] for e in _lines(events)] == list(range(236))

    @pytest.mark.parametrize("where", ["submit", "_drain"])
    def test_sigterm_inside_flush_closes_when_the_section_ends(
        self, where: str, tmp_path: Path
    ) -> None:
        """SIGTERM lands inside flush() (its locked section, or its synchronous write): the
        process still dies of SIGTERM, every event written, and no timed-out final flush is
        reported."""
        proc = _run(_SIGTERM_INSIDE_FLUSH, str(tmp_path), where,
                    OTEL_SPARSE_WRITE_DELAY="3600", OTEL_SPARSE_SHUTDOWN_TIMEOUT="1000")
        out, err = proc.communicate(timeout=EXIT_LIMIT_S)
        assert proc.returncode == -signal.SIGTERM, (out, err)
        assert "did not finish in time" not in err, err
        assert [e["metadata"]["i"] for e in _lines(tmp_path / "micro_metrics.jsonl")] == (
            list(range(40)))

    def test_events_logged_after_the_exit_close_are_written(self, tmp_path: Path) -> None:
        """atexit hook and weakref.finalize made before the import, and a global's __del__:
        their events reach the event file after the library's exit-time close."""
        proc = _run(_LOG_AFTER_EXIT, str(tmp_path), OTEL_SPARSE_WRITE_DELAY="3600")
        _, err = proc.communicate(timeout=EXIT_LIMIT_S)
        assert proc.returncode == 0, err
        items = sorted(e["metadata"]["i"] for e in _lines(tmp_path / "micro_metrics.jsonl"))
        assert items == [*range(40), *range(100, 105), *range(200, 205), *range(300, 305)], err
