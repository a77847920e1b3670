"""The background side of one logger: event file, aggregation, OTel MetricsData, exporters.

One writer thread per logger takes the batches ``log()`` handed over, writes them to the
event file, folds their values into the Aggregator, and every export interval turns the
aggregate into standard OTel ``MetricsData`` for standard push ``MetricExporter``s. Each
exporter runs on its own thread behind a bounded slot, so a slow or dead collector delays
neither the event file nor the training loop. The writer holds its logger only weakly:
garbage collection of the logger still flushes, as the old API promised.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_sparse._instruments import InstrumentKind, MetricSpec
from otel_sparse._safety import mask_text
from otel_sparse._version import __version__
from otel_sparse.aggregator import Aggregator
from otel_sparse.config import Settings
from otel_sparse.event import LogEvent
from otel_sparse.exporters import build_exporter
from otel_sparse.exporters.events import EventFileWriter
from otel_sparse.exporters.extras import is_local, last_error
from otel_sparse.layout import EVENT_FILE_NAME, process_file_name
from otel_sparse.lines import make_lines
from otel_sparse.resource import ProcessIdentity
from otel_sparse.series import BatchOut, SeriesBook

_logger = logging.getLogger("otel_sparse")

_SCOPE = InstrumentationScope("otel_sparse", __version__)

# The library's own counters, exported beside the user's metrics.
EVENTS_LOGGED = MetricSpec("events.logged", int, InstrumentKind.COUNTER, unit="{event}",
                           description="Events written by otel_sparse, per metric")
EVENTS_DROPPED = MetricSpec("events.dropped", int, InstrumentKind.COUNTER, unit="{event}",
                            description="Events or values otel_sparse dropped, per reason")
EXPORT_FAILURES = MetricSpec("export.failures", int, InstrumentKind.COUNTER, unit="{export}",
                             description="Failed exports, per exporter")
_OWN_NAMESPACE = "otel_sparse"


class QueueOwner(Protocol):
    """What the writer needs from its logger (``MicroMetricLogger`` implements it)."""

    def take_stale_queue(self, max_age_s: float) -> deque[LogEvent] | None:
        """The logger's queue if its oldest event waited ``max_age_s``, else None.

        Called by the writer thread every tick. The owner may instead submit the queue to
        this pipeline itself, under its own lock (and return None), so that batches reach
        the writer in the order they were swapped out.
        """


@dataclass
class DropCounter:
    """Counts dropped data per (reason, metric) and says so once per reason via logging."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    """Re-entrant: a signal handler that logs a dropped event may interrupt an add()."""

    def add(self, reason: str, metric: str, n: int = 1, why: str | None = None) -> None:
        """Count ``n`` drops; the first drop of a reason is reported through logging."""
        key = (reason, metric)
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + n
            first = reason not in self._reported
            if first:
                self._reported.add(reason)
        if first:
            _logger.warning(
                "otel_sparse: dropping data (reason=%s, metric=%r)%s; counted in "
                "otel_sparse.events.dropped, reported once per reason",
                reason, metric, f": {why}" if why else "",
            )

    def snapshot(self) -> dict[tuple[str, str], int]:
        """A copy of the counts."""
        with self._lock:
            return dict(self.counts)


class ExportWorker:
    """One exporter on its own daemon thread, fed through a bounded slot.

    With cumulative temporality the slot holds only the newest snapshot: an older one is
    superseded, not lost. With delta every snapshot matters, so the slot is a bounded queue
    and an overflow is counted as a drop.
    """

    def __init__(
        self, name: str, exporter: MetricExporter, timeout_s: float, cumulative: bool,
        drops: DropCounter,
    ) -> None:
        self.name = name
        self.exporter = exporter
        self.local = is_local(exporter)
        self._timeout_s = timeout_s
        self._cumulative = cumulative
        self._drops = drops
        self._slot: deque[tuple[MetricsData, Any]] = deque(maxlen=1 if cumulative else 64)
        self._exported_version: Any = None
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self.failures = 0
        self._failing = False
        self._thread: threading.Thread | None = None

    def offer(self, data: MetricsData, version: Any = None) -> None:
        """Queue a snapshot for export; never blocks.

        A local exporter skips a snapshot whose ``version`` (what changed the data) equals
        that of its last successful export: files need no copy of an unchanged state.
        """
        with self._cond:
            if self.local and version is not None and version == self._exported_version:
                return
            if not self._cumulative and len(self._slot) == self._slot.maxlen:
                self._drops.add("export_queue_full", self.name,
                                why=f"exporter {self.name} is slower than the export interval")
            self._slot.append((data, version))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"otel-sparse-export-{self.name}", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._slot and not self._closing:
                    self._cond.wait()
                if not self._slot:
                    return
                data, version = self._slot.popleft()
                self._busy = True
            try:
                if self.export_now(data):
                    self._exported_version = version
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def export_now(self, data: MetricsData) -> bool:
        """Export on the calling thread; True on success. Never raises."""
        try:
            result = self.exporter.export(data, timeout_millis=self._timeout_s * 1000)
            ok = result is MetricExportResult.SUCCESS
            # an exporter may say why (QuietOtlpExporter: the first suppressed library line)
            error = last_error(self.exporter) or "returned FAILURE"
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        if ok:
            if self._failing:
                _logger.warning("otel_sparse: exporter %s recovered", self.name)
            self._failing = False
        else:
            self.failures += 1
            if not self._failing:
                _logger.warning(
                    "otel_sparse: exporter %s failed (%s); retrying every interval, failures "
                    "counted in otel_sparse.export.failures (reported again after recovery)",
                    self.name, mask_text(error),
                )
            self._failing = True
        return ok

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every offered snapshot is exported; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._slot or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float) -> None:
        """Export what is queued (within ``timeout_s``), then shut the exporter down."""
        self.wait_idle(timeout_s)
        with self._cond:
            self._closing = True
            self._slot.clear()
            self._cond.notify_all()
        try:
            self.exporter.shutdown(timeout_millis=max(1.0, timeout_s * 1000))
        except Exception as exc:
            _logger.warning("otel_sparse: exporter %s failed to shut down: %s", self.name, exc)


class Pipeline:
    """Writer thread, aggregator and exporters of one logger.

    The thread takes handed-off batches, has the line engine (``otel_sparse.lines``) turn
    them into event-file text and staged values, folds those into the aggregate
    (``SeriesBook``), appends the text to the event file, and every export interval offers
    a collection to the export workers.

    Args:
        owner: the logger (``QueueOwner``), held weakly.
        log_path: the run folder.
        settings: every tunable (``Settings.from_env``).
        drops: the logger's drop counter.
        is_fork_child: a forked worker writes files of its own.
        extra_exporters: ready exporter instances, beside ``settings.exporters``.
        line_cache: False runs the plain reference engine (no caches); None takes
            ``settings.line_cache`` (``OTEL_SPARSE_LINE_CACHE``).
    """

    def __init__(
        self,
        owner: QueueOwner,
        log_path: str,
        settings: Settings,
        drops: DropCounter,
        is_fork_child: bool = False,
        extra_exporters: Sequence[MetricExporter] = (),
        line_cache: bool | None = None,
        background: bool = True,
    ) -> None:
        self.background = background
        """False at interpreter exit: no writer thread; ``write_now()`` writes and exports
        the local files on the caller's thread, other exporters are left out (warned)."""
        self._owner_ref: Callable[[], QueueOwner | None] = weakref.ref(owner)
        self.settings = settings
        self.drops = drops
        self.identity = ProcessIdentity.current()
        self.resource: Resource = self.identity.resource()
        suffix = self.identity.file_suffix(is_fork_child)
        self.event_file = EventFileWriter(
            os.path.join(log_path, process_file_name(EVENT_FILE_NAME, suffix))
        )
        self.aggregator = Aggregator(settings.max_series, settings.temporality, time.time_ns(),
                                     settings.histogram, settings.histogram_max_buckets)
        self.series = SeriesBook(self.aggregator, settings.namespace, drops)
        self.lines = make_lines(
            self.series, settings.line_cache if line_cache is None else line_cache,
            cache_limit=4 * settings.max_series,
        )
        self._pending: deque[deque[LogEvent]] = deque()
        self._pending_sizes: dict[int, int] = {}
        """id() of each pending batch -> the events its submit() counted (and its drain
        subtracts): a batch is pending at most once."""
        self._pending_events = 0
        self._pending_lock = threading.Lock()
        self._batches_written = 0
        self._write_lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set by submit(): a handed-off batch is written at once, not after the next tick.
        Events that wait die old: the garbage collector promotes them to its oldest
        generation, and full collections of a process with torch loaded take tens of ms."""
        self._event_file_failing = False
        self._skipped_remote = False
        self.workers = _workers(settings, log_path, suffix, drops, extra_exporters)
        self._next_export = time.monotonic() + settings.export_interval_s
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="otel-sparse-writer",
                                            daemon=True)
            self._thread.start()

    @property
    def specs(self) -> dict[str, MetricSpec]:
        """Identifier -> spec for every metric ever enabled on this logger."""
        return self.series.specs

    # -- called from the facade -------------------------------------------------------

    def submit(self, batch: deque[LogEvent]) -> None:
        """Hand a full batch to the writer. O(1); never blocks, never does I/O.

        A batch may come again: a ``log()`` that read the queue just before its swap appends
        after it, and its thread submits it again. Still pending, nothing changes (its drain
        takes every event in it); drained, its late events wait their turn behind the batches
        submitted before.
        """
        key = id(batch)  # alive while pending: no other batch has its id meanwhile
        with self._pending_lock:
            if key in self._pending_sizes:
                return
            count = len(batch)
            overflow = self._pending_events + count > self.settings.max_pending_events
            if not overflow:  # queued first: an exception (Ctrl-C) here never loses it
                self._pending.append(batch)
                self._pending_sizes[key] = count
                self._pending_events += count
        if overflow:
            # emptied: were it submitted again, only events appended later would go
            dropped = len(_take_all(batch))
            self.drops.add("queue_overflow", "*", dropped,
                           why="the writer is behind by more than OTEL_SPARSE_MAX_PENDING_EVENTS")
        else:
            self._wake.set()

    def enable(self, spec: MetricSpec) -> None:
        """Make ``spec`` the way its identifier is exported from now on."""
        self.series.enable(spec)
        self.lines.forget()

    def busy_here(self) -> bool:
        """Whether the calling thread is writing (holds the write lock): a signal handler or
        finaliser that interrupted it must not wait for that lock."""
        return bool(self._write_lock._is_owned())  # type: ignore[attr-defined]

    def write_now(self, batch: deque[LogEvent] | None = None, export: bool = True) -> None:
        """Write every pending batch (and ``batch``) synchronously; then export local files."""
        with self._write_lock:
            if batch:
                self.submit(batch)
            self._drain()
            if export:
                self._export(wait_local=True)

    def close(self) -> None:
        """Final write and export; stops the threads. Waits at most the shutdown timeout."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout=self.settings.shutdown_timeout_s)
        with self._write_lock:
            self._drain()
            self._export(wait_local=False)
            deadline = time.monotonic() + self.settings.shutdown_timeout_s
            for worker in self.workers:
                worker.close(max(0.05, deadline - time.monotonic()))

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        tick = min(0.25, self.settings.write_delay_s / 4)
        # No pause while batches wait: _drain() takes what was pending when it began.
        while True:
            if not self._pending:
                self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            owner = self._owner_ref()
            if owner is None:
                return
            try:
                stale = owner.take_stale_queue(self.settings.write_delay_s)
                del owner
                with self._write_lock:
                    if stale:
                        self.submit(stale)
                    self._drain()
                    if time.monotonic() >= self._next_export:
                        self._export(wait_local=False)
            except Exception:  # the writer must outlive any bug in one batch
                _logger.exception("otel_sparse: background writer error (continuing)")

    def _drain(self) -> None:
        # Only the batches pending now: threads that keep logging must not keep a flush()
        # or close() draining forever (later batches wait for the next round).
        # A log() that appends to a batch after this takes it submits the batch again.
        events: list[LogEvent] = []
        for _ in range(len(self._pending)):
            with self._pending_lock:
                batch = self._pending.popleft()
                self._pending_events -= self._pending_sizes.pop(id(batch), 0)
            events += _take_all(batch)
            if len(events) >= _EVENTS_PER_WRITE:
                self._write_batch(events)
                events = []
        self._write_batch(events)

    def _write_batch(self, events: list[LogEvent]) -> None:
        """Encode and aggregate ``events`` and append their lines to the event file in one
        write.

        Pending batches are written together: each write is a few system calls, each of
        which gives up the GIL, and a thread that gives it up waits a switch interval (5 ms)
        to get it back from a training loop that keeps logging.
        """
        if not events:
            return
        out = BatchOut()
        text = self.lines.write(events, out)
        self.series.apply(out)
        self._batches_written += 1
        if self._write_text(text, len(events)):
            # counted once written: accepted = logged + dropped, even on a full disk
            self.series.logged.update(map(_METRIC, events))

    def _write_text(self, text: str, count: int) -> bool:
        """Append a batch's lines (all or none); False when the disk refused them (counted)."""
        try:
            self.event_file.write(text)
        except OSError as exc:
            self.drops.add("event_file_error", "*", count,
                           why=f"cannot write {self.event_file.path}: {exc}")
            self._event_file_failing = True
            return False
        if self._event_file_failing:
            self._event_file_failing = False
            _logger.warning("otel_sparse: writing %s again", self.event_file.path)
        return True

    def _export(self, wait_local: bool) -> None:
        self._next_export = time.monotonic() + self.settings.export_interval_s
        if not self.workers:
            return
        for name, limit in self.aggregator.overflow_events:
            _logger.warning(
                "otel_sparse: metric %s has more than %d attribute sets; further points go to "
                "the series otel.metric.overflow=\"true\" (counted)", name, limit,
            )
        self.aggregator.overflow_events.clear()
        # The version first: a change after it (a drop counted while collecting) then makes
        # the next export's version differ, instead of hiding behind the one taken late.
        version = (self._batches_written, sum(self.drops.snapshot().values()),
                   sum(w.failures for w in self.workers))
        data = self.collect()
        if not self.background:  # no thread may start: the local files, written here
            for worker in self.workers:
                if worker.local:
                    worker.export_now(data)
                elif not self._skipped_remote:
                    self._skipped_remote = True
                    _logger.warning(
                        "otel_sparse: events logged during interpreter exit are written to the "
                        "local files only; exporter %s no longer runs", worker.name)
            return
        for worker in self.workers:
            worker.offer(data, version)
        if wait_local:
            for worker in self.workers:
                if worker.local:
                    worker.wait_idle(self.settings.export_timeout_s)

    def collect(self) -> MetricsData:
        """Snapshot the aggregate and the library's own counters as OTel MetricsData."""
        now = time.time_ns()
        own = Aggregator(start_ns=self.aggregator.start_ns)
        for metric, n in self.series.logged.items():
            own.record(f"{_OWN_NAMESPACE}.{EVENTS_LOGGED.identifier}", EVENTS_LOGGED,
                       (("metric", metric),), n)
        for (reason, metric), n in self.drops.snapshot().items():
            own.record(f"{_OWN_NAMESPACE}.{EVENTS_DROPPED.identifier}", EVENTS_DROPPED,
                       (("metric", metric), ("reason", reason)), n)
        for identifier, name in self.series.names.items():
            overflowed = self.aggregator.overflowed_points(name)
            if overflowed:
                own.record(f"{_OWN_NAMESPACE}.{EVENTS_DROPPED.identifier}", EVENTS_DROPPED,
                           (("metric", identifier), ("reason", "cardinality_overflow")),
                           overflowed)
        for worker in self.workers:
            if worker.failures:
                own.record(f"{_OWN_NAMESPACE}.{EXPORT_FAILURES.identifier}", EXPORT_FAILURES,
                           (("exporter", worker.name),), worker.failures)
        metrics = self.aggregator.collect(now) + own.collect(now)
        return MetricsData(resource_metrics=[
            ResourceMetrics(
                resource=self.resource,
                scope_metrics=[ScopeMetrics(scope=_SCOPE, metrics=metrics, schema_url="")],
                schema_url="",
            )
        ])


def _workers(
    settings: Settings, log_path: str, suffix: str, drops: DropCounter,
    extra_exporters: Sequence[MetricExporter],
) -> list[ExportWorker]:
    """One export worker per exporter: those named in ``settings``, then the instances."""
    cumulative = settings.temporality == "cumulative"
    named = [
        ExportWorker(name, build_exporter(name, log_path, suffix, settings.otlp_file),
                     settings.export_timeout_s, cumulative, drops)
        for name in settings.exporters
    ]
    return named + [
        ExportWorker(type(exporter).__name__, exporter, settings.export_timeout_s, cumulative,
                     drops)
        for exporter in extra_exporters
    ]


_METRIC = attrgetter("metric")
_EVENTS_PER_WRITE = 50_000
"""Most events one write takes (bounds the text held in memory: about 150 bytes each)."""


def _take_all(batch: deque[LogEvent]) -> list[LogEvent]:
    """Pop every event; unlike list()+clear(), loses nothing appended meanwhile."""
    popleft = batch.popleft
    return [popleft() for _ in range(len(batch))]
