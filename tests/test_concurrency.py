"""Many threads logging at once: every event exactly once, exact totals and limits.

``log()`` takes no lock (an ``itertools.count`` and a deque append); batches change hands
by a swap under a lock in three places: a full queue (``_hand_off``), ``flush()`` and the
writer taking a queue that waited too long. These tests run all three at once, with the
interpreter switching threads every 10 µs instead of every 5 ms to widen each race window.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import latest_points, read_jsonl, thread_switch_interval

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
THREADS = 8
PER_THREAD = 100_000
HEADS = 4


@pytest.fixture
def tight_switching() -> Iterator[None]:
    """Threads switch every 10 µs (default 5 ms), so races show up in a short run."""
    with thread_switch_interval(1e-5):
        yield


def _run_threads(body: Callable[[int], None], n: int = THREADS, timeout: float = 300) -> None:
    """Start ``n`` threads together on ``body(thread_index)``; fail on errors or a hang."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            body(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"log-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "logging threads hung"
    assert not errors, errors


class _Flusher:
    """Calls ``logger.flush()`` in a loop on its own thread until stopped."""

    def __init__(self, logger: MicroMetricLogger, every_s: float = 0.02) -> None:
        self.flushes = 0
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(every_s):
                logger.flush()
                self.flushes += 1

        self._thread = threading.Thread(target=loop, name="flusher", daemon=True)

    def __enter__(self) -> _Flusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "flush() hung"


def _values(path: Path) -> list[Any]:
    """The value of every line of the event file (each line must parse)."""
    with path.open() as lines:
        return [json.loads(line)["value"] for line in lines]


def _expected_series() -> dict[tuple[int, int], tuple[int, float]]:
    """(count, sum) per (layer=thread, head) when thread t logs t*PER_THREAD+i at head i%HEADS."""
    out: dict[tuple[int, int], tuple[int, float]] = {}
    for t in range(THREADS):
        for h in range(HEADS):
            values = range(t * PER_THREAD + h, (t + 1) * PER_THREAD, HEADS)
            out[(t, h)] = (len(values), float(sum(values)))
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
class TestEightThreads:
    """8 threads x 100,000 log() calls, while flush() and the writer's own swaps run too."""

    @pytest.mark.parametrize("flush_every", [1000, 10_000])
    def test_every_event_exactly_once_and_exact_histograms(
        self, flush_every: int, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, tight_switching: None,
    ) -> None:
        """Each event is in micro_metrics.jsonl once, in its thread's order; series are exact.

        flush_every=10,000 equals the queue's maxlen: without headroom above the hand-off
        size, an append by a second thread before the swap would silently push out the
        oldest event.
        """
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.01")  # the writer swaps stale queues
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              flush_every=flush_every)
        metadata = [[{"layer_idx": t, "head_idx": h} for h in range(HEADS)]
                    for t in range(THREADS)]

        def body(t: int) -> None:
            log, mine, base = logger.log, metadata[t], t * PER_THREAD
            for i in range(PER_THREAD):
                log(DENSITY, base + i, mine[i % HEADS])

        with _Flusher(logger) as flusher:
            _run_threads(body)
        logger.flush()
        assert flusher.flushes > 0
        total = THREADS * PER_THREAD
        assert logger.get_total_records_logged() == total
        values = _values(tmp_path / "micro_metrics.jsonl")
        assert len(values) == total
        assert sorted(values) == list(range(total))
        for t in range(THREADS):  # one thread's events keep their order in the file
            mine = [v for v in values if t * PER_THREAD <= v < (t + 1) * PER_THREAD]
            assert mine == sorted(mine), f"thread {t}'s events are out of order"
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert {k: (r["count"], r["sum"]) for k, r in points.items()} == _expected_series()
        logged = [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                  if r["metric"] == "otel_sparse.events.logged"]
        assert logged[-1]["value"] == total
        assert not [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                    if r["metric"] == "otel_sparse.events.dropped"]

    def test_max_records_is_exact_under_threads(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, tight_switching: None
    ) -> None:
        """max_records=123456 with 8 threads: exactly that many lines, records and counts."""
        limit = 123_456
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=limit,
                              exporters=["jsonl", sink])
        progress = [0] * THREADS

        def body(t: int) -> None:
            log, base = logger.log, t * PER_THREAD
            for i in range(PER_THREAD // 2):
                log(DENSITY, base + i, {"layer_idx": t})
                progress[t] = i

        with _Flusher(logger):
            _run_threads(body)
        logger.flush()
        assert logger.get_total_records_logged() == limit
        assert logger.is_max_records_reached()
        assert logger.get_records_remaining() == 0
        values = _values(tmp_path / "micro_metrics.jsonl")
        assert len(values) == limit == len(set(values))
        calls = THREADS * (PER_THREAD // 2)
        assert sink.value("otel_sparse.events.logged", metric=DENSITY) == limit
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="max_records") == calls - limit
        assert sum(p.count for p in sink.points(NAME)) == limit  # type: ignore[union-attr,misc]


@pytest.mark.timeout(300)
class TestSmallerRaces:
    """Shorter runs of the same races, in the default test selection."""

    def test_tiny_batches_under_threads(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, tight_switching: None
    ) -> None:
        """flush_every=1 (a swap per event) with 8 threads and a flusher: each event once."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=1)
        n = 5_000

        def body(t: int) -> None:
            for i in range(n):
                logger.log(DENSITY, t * n + i, {"layer_idx": t})

        with _Flusher(logger, every_s=0.001):
            _run_threads(body)
        logger.flush()
        values = _values(tmp_path / "micro_metrics.jsonl")
        assert sorted(values) == list(range(THREADS * n))
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert {layer: row["count"] for (layer, _), row in points.items()} == dict.fromkeys(
            range(THREADS), n)

    def test_sampling_and_drops_count_every_call(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, tight_switching: None
    ) -> None:
        """With sampling, kept + sampled-out equals the calls made, across threads."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              sampling_factor=0.5, exporters=["jsonl", sink])
        n = 10_000

        def body(t: int) -> None:
            for _ in range(n):
                logger.log(DENSITY, 0.5, {"layer_idx": t})

        _run_threads(body)
        logger.flush()
        kept = len(_values(tmp_path / "micro_metrics.jsonl"))
        assert kept == logger.get_total_records_logged()
        sampled = sink.value("otel_sparse.events.dropped", metric=DENSITY, reason="sampling")
        assert kept + sampled == THREADS * n
        assert 0.45 < kept / (THREADS * n) < 0.55

    def test_configure_logging_while_threads_log(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path, tight_switching: None
    ) -> None:
        """Reconfiguring mid-run raises into no thread and loses no event: a + b = calls."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path / "a"), enabled_metrics="all")
        stop = threading.Event()
        calls = [0] * 4

        def body(t: int) -> None:
            while not stop.is_set():
                logger.log(DENSITY, 0.5, {"layer_idx": t})
                calls[t] += 1
                if calls[t] % 100 == 0:
                    time.sleep(0.001)  # leave the reconfiguring thread some of the GIL

        runner = threading.Thread(target=_run_threads, args=(body, 4), daemon=True)
        runner.start()
        time.sleep(0.2)
        logger.configure_logging(str(tmp_path / "b"), enabled_metrics="all")
        time.sleep(0.2)
        stop.set()
        runner.join(60)
        assert not runner.is_alive()
        logger.flush()
        before = len(_values(tmp_path / "a" / "micro_metrics.jsonl"))
        after = len(_values(tmp_path / "b" / "micro_metrics.jsonl"))
        assert before > 0 and after > 0
        assert before + after == sum(calls), (before, after, calls)
        assert after >= logger.get_total_records_logged()


class _StalledWrites:
    """Makes a pipeline's event-file writes wait until released (a stuck disk, say)."""

    def __init__(self, pipeline: Any) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self._write = pipeline.event_file.write
        self._pipeline = pipeline

        def stalled(*args: Any) -> None:
            self.entered.set()
            self.release.wait(60)  # never a hang: the test fails on its own counts instead
            self._write(*args)

        pipeline.event_file.write = stalled

    def __enter__(self) -> _StalledWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()


@pytest.mark.timeout(120)
class TestBackpressure:
    """A stalled writer holds at most OTEL_SPARSE_MAX_PENDING_EVENTS events; the rest drop."""

    def test_pending_events_stay_bounded_while_the_writer_is_stuck(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Batches beyond the cap are dropped whole and counted; memory does not grow."""
        monkeypatch.setenv("OTEL_SPARSE_MAX_PENDING_EVENTS", "1000")
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.02")
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=100)
        pipeline = logger._pipeline
        assert pipeline is not None
        with caplog.at_level("WARNING", logger="otel_sparse"), _StalledWrites(pipeline) as stall:
            for i in range(100):  # one batch: the writer takes it and gets stuck writing it
                logger.log(DENSITY, i, {"layer_idx": 0})
            assert stall.entered.wait(30), "the writer never started writing"
            most = 0
            for i in range(100, 5100):
                logger.log(DENSITY, i, {"layer_idx": 0})
                most = max(most, pipeline._pending_events, len(pipeline._pending) * 100)
            assert most <= 1000
            assert pipeline._pending_events == 1000
            assert len(logger.log_queue) == 0
            assert logger._drops.snapshot() == {("queue_overflow", "*"): 4000}
        logger.flush()
        assert _values(tmp_path / "micro_metrics.jsonl") == list(range(1100))
        assert logger.get_total_records_logged() == 5100
        dropped = [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                   if r["metric"] == "otel_sparse.events.dropped"]
        assert (dropped[-1]["attributes"], dropped[-1]["value"]) == (
            {"metric": "*", "reason": "queue_overflow"}, 4000)
        assert sum("reason=queue_overflow" in r.getMessage() for r in caplog.records) == 1
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert points[(0, None)]["count"] == 1100


class _PausedAppend(deque):  # type: ignore[type-arg]
    """A log queue whose first append waits until released: a thread that read
    ``log_queue`` just before a swap, then lost the processor before its append."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, event: Any) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        super().append(event)


class TestLateAppend:
    """A log() that lost the processor between reading the queue and appending to it."""

    def test_event_appended_to_a_long_retired_queue_is_written(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The paused thread's queue is swapped out, written, and followed by many more
        batches before its append lands: the event is still written, exactly once."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10**6)
        logger.log(DENSITY, 0, {"layer_idx": 0})
        paused = _PausedAppend(logger.log_queue)
        logger.log_queue = paused
        late = threading.Thread(target=logger.log, args=(DENSITY, -1, {"layer_idx": 1}))
        late.start()
        assert paused.entered.wait(30)
        for i in range(1, 21):  # the paused queue is handed off, then 20 batches after it
            logger.flush()
            logger.log(DENSITY, i, {"layer_idx": 0})
        paused.release.set()
        late.join(30)
        logger.flush()
        values = _values(tmp_path / "micro_metrics.jsonl")
        assert sorted(values) == list(range(-1, 21))
        assert logger.get_total_records_logged() == 22

    def test_late_event_keeps_its_place_before_the_threads_next_event(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The paused thread's event lands in a batch already written, its next one in the
        new queue: the file has them in the order the thread logged them."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=10**6)
        logger.log(DENSITY, 0, {"layer_idx": 0})  # something to flush
        paused = _PausedAppend(logger.log_queue)
        logger.log_queue = paused

        def late_body() -> None:
            logger.log(DENSITY, 1000, {"layer_idx": 1})
            logger.log(DENSITY, 1001, {"layer_idx": 1})

        late = threading.Thread(target=late_body)
        late.start()
        assert paused.entered.wait(30)
        logger.flush()  # the paused queue is handed off and written
        paused.release.set()
        late.join(30)
        logger.flush()
        assert _values(tmp_path / "micro_metrics.jsonl") == [0, 1000, 1001]


class TestSnapshotVersion:
    """A local exporter skips a snapshot whose version (what changed the data) it has seen."""

    def test_drop_counted_while_collecting_reaches_the_next_export(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A drop counted between the collection and the version of the same export made the
        next export look unchanged: the sink kept the stale count."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=1,
                              exporters=[sink])
        logger.log(DENSITY, 0.5, {"layer_idx": 0})
        logger.log(DENSITY, 0.5, {"layer_idx": 0})  # one drop: max_records
        pipeline = logger._pipeline
        assert pipeline is not None
        collect = pipeline.collect

        def collect_then_drop() -> Any:
            data = collect()
            logger.log(DENSITY, 0.5, {"layer_idx": 0})  # another thread's drop, just now
            return data

        pipeline.collect = collect_then_drop  # type: ignore[method-assign]
        logger.flush()
        pipeline.collect = collect  # type: ignore[method-assign]
        logger.flush()
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="max_records") == 2
