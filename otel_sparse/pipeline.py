"""The background side of one logger: event file, aggregation, OTel MetricsData, exporters.

One writer thread per logger takes the batches ``log()`` handed over, writes them to the
event file, folds their values into the Aggregator, and every export interval turns the
aggregate into standard OTel ``MetricsData`` for standard push ``MetricExporter``s. Each
exporter runs on its own thread behind a bounded slot, so a slow or dead collector delays
neither the event file nor the training loop. The writer holds its logger only weakly:
garbage collection of the logger still flushes, as the old API promised.
"""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any, Protocol, cast

import numpy as np
import orjson
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_sparse._instruments import (
    AttributeKey,
    InstrumentKind,
    MetricSpec,
    attribute_key,
    instrument_name,
)
from otel_sparse._safety import mask_text
from otel_sparse._values import HostValues, is_tensor
from otel_sparse._version import __version__
from otel_sparse.aggregator import Aggregator, State, SumState, add_values
from otel_sparse.config import Settings
from otel_sparse.event import LogEvent, event_context
from otel_sparse.exporters import build_exporter
from otel_sparse.exporters.events import (
    EVENT_FILE_NAME,
    EventEncoder,
    EventFileWriter,
    line_openings,
)
from otel_sparse.resource import ProcessIdentity

_logger = logging.getLogger("otel_sparse")

_SCOPE = InstrumentationScope("otel_sparse", __version__)
_POLL_S = 0.001  # how often a flush re-checks an unfinished device-to-host copy

# The library's own counters, exported beside the user's metrics.
EVENTS_LOGGED = MetricSpec("events.logged", int, InstrumentKind.COUNTER, unit="{event}",
                           description="Events written by otel_sparse, per metric")
EVENTS_DROPPED = MetricSpec("events.dropped", int, InstrumentKind.COUNTER, unit="{event}",
                            description="Events or values otel_sparse dropped, per reason")
EXPORT_FAILURES = MetricSpec("export.failures", int, InstrumentKind.COUNTER, unit="{export}",
                             description="Failed exports, per exporter")
_OWN_NAMESPACE = "otel_sparse"


class QueueOwner(Protocol):
    """What the writer needs from its logger: the events that waited too long."""

    def _take_stale_queue(self, max_age_s: float) -> deque[LogEvent] | None: ...


@dataclass
class DropCounter:
    """Counts dropped data per (reason, metric) and says so once per reason via logging."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    _reported: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
        self.local = bool(getattr(exporter, "is_local", False))
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
            error = getattr(self.exporter, "last_error", None) or "returned FAILURE"
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
    """Writer thread, aggregator and exporters of one logger."""

    def __init__(
        self,
        owner: QueueOwner,
        log_path: str,
        settings: Settings,
        drops: DropCounter,
        is_fork_child: bool = False,
        extra_exporters: Sequence[MetricExporter] = (),
    ) -> None:
        self._owner_ref: Callable[[], QueueOwner | None] = weakref.ref(owner)
        self.settings = settings
        self.drops = drops
        self.identity = ProcessIdentity.current()
        self.resource: Resource = self.identity.resource()
        suffix = self.identity.file_suffix(is_fork_child)
        base, ext = os.path.splitext(EVENT_FILE_NAME)
        self.event_file = EventFileWriter(os.path.join(log_path, base + suffix + ext))
        self.specs: dict[str, MetricSpec] = {}
        """Identifier -> spec for every metric ever enabled on this logger."""
        self._names: dict[str, str] = {}
        self.aggregator = Aggregator(settings.max_series, settings.temporality, time.time_ns())
        self._pending: deque[deque[LogEvent]] = deque()
        self._pending_events = 0
        self._pending_lock = threading.Lock()
        self._logged: Counter[str] = Counter()
        self._column_keys: dict[tuple[AttributeKey, tuple[int, ...]], list[AttributeKey]] = {}
        self._retired: deque[deque[LogEvent]] = deque(maxlen=8)
        self._encoder = EventEncoder()
        self._series_cache: dict[str, dict[Any, State | None]] = {}
        self._known: dict[Any, _KnownLine] = {}
        """(metric, location, metadata items, context) -> what the fast loop needs."""
        self._state_generation = 0
        self._batches_written = 0
        self._array_keys: dict[tuple[str, Any], Any] = {}
        """(identifier, metadata key) -> (spec, attribute key) of tensor events."""
        self._write_lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        """Set by submit(): a handed-off batch is written at once, not after the next tick.
        Events that wait die old: the garbage collector promotes them to its oldest
        generation, and full collections of a process with torch loaded take tens of ms."""
        self._event_file_failing = False
        self.workers = [
            ExportWorker(
                name,
                build_exporter(name, log_path, suffix, settings.otlp_file),
                settings.export_timeout_s,
                settings.temporality == "cumulative",
                drops,
            )
            for name in settings.exporters
        ] + [
            ExportWorker(type(exporter).__name__, exporter, settings.export_timeout_s,
                         settings.temporality == "cumulative", drops)
            for exporter in extra_exporters
        ]
        self._next_export = time.monotonic() + settings.export_interval_s
        self._thread = threading.Thread(target=self._run, name="otel-sparse-writer", daemon=True)
        self._thread.start()

    # -- called from the facade -------------------------------------------------------

    def submit(self, batch: deque[LogEvent]) -> None:
        """Hand a full batch to the writer. O(1); never blocks, never does I/O."""
        with self._pending_lock:
            if self._pending_events + len(batch) > self.settings.max_pending_events:
                overflow = True
            else:
                overflow = False
                self._pending_events += len(batch)
                self._pending.append(batch)
        if overflow:
            self.drops.add("queue_overflow", "*", len(batch),
                           why="the writer is behind by more than OTEL_SPARSE_MAX_PENDING_EVENTS")
        else:
            self._wake.set()

    def enable(self, spec: MetricSpec) -> None:
        """Make ``spec`` the way its identifier is exported from now on."""
        self.specs[spec.identifier] = spec
        self._series_cache.pop(spec.identifier, None)
        self._array_keys.clear()
        self._known.clear()
        self._names[spec.identifier] = self._unique_name(spec.identifier)

    def _unique_name(self, identifier: str) -> str:
        """The instrument name of ``identifier``, with a short digest appended when another
        identifier already has that name (``"密度"`` and ``"注意"`` both clean to ``"__"``)."""
        name = instrument_name(self.settings.namespace, identifier)
        other = next((i for i, n in self._names.items() if n == name and i != identifier), None)
        if other is None:
            return name
        try:
            text = repr(identifier)
        except Exception:
            text = type(identifier).__qualname__
        digest = hashlib.blake2s(text.encode("utf-8", "surrogatepass"), digest_size=4)
        unique = f"{name[:246]}_{digest.hexdigest()}"
        if self._names.get(identifier) != unique:
            _logger.warning(
                "otel_sparse: identifiers %r and %r both make the instrument name %s; "
                "exporting %r as %s", other, identifier, name, identifier, unique,
            )
        return unique

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
        if threading.current_thread() is not self._thread:
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
                stale = owner._take_stale_queue(self.settings.write_delay_s)
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
        events: list[LogEvent] = []
        for _ in range(len(self._pending)):
            with self._pending_lock:
                batch = self._pending.popleft()
                self._pending_events -= len(batch)
            self._retired.append(batch)
            events += _take_all(batch)
            if len(events) >= _EVENTS_PER_WRITE:
                self._write_batch(events)
                events = []
        for batch in self._retired:
            if batch:  # a log() on another thread appended just as the queue was swapped
                events += _take_all(batch)
        self._write_batch(events)

    def _write_batch(self, events: list[LogEvent]) -> None:
        """Aggregate ``events`` and append their lines to the event file in one write.

        Pending batches are written together: each write is a few system calls, each of
        which gives up the GIL, and a thread that gives it up waits a switch interval (5 ms)
        to get it back from a training loop that keeps logging.
        """
        if not events:
            return
        values = list(map(_VALUE, events))
        host_by_event, errors = self._host_copies(values)
        if self._state_generation != self.aggregator.generation:
            self._series_cache.clear()
            self._known.clear()
            self._state_generation = self.aggregator.generation
        metrics = list(map(_METRIC, events))
        # without openings (a timestamp that is no datetime) no line is known
        openings = line_openings(events)
        known = self._known_lookup(events, metrics) if openings is not None else None
        out = _BatchOut()
        text = None
        if known is not None and openings is not None:
            text = self._known_batch_text(known, openings, values, out)
        if text is None:
            self._write_each(events, known, openings, values, host_by_event, errors, out)
            text = "\n".join(out.lines) + "\n"
        try:
            add_values(out.states, out.numbers)
        except Exception as exc:  # the lines of the batch are written regardless
            self.drops.add("internal_error", "*", len(out.numbers),
                           why=f"{type(exc).__name__}: {exc}")
        for (metric, key, shape), arrays in out.blocks.items():
            try:
                self._record_block(metric, key, shape, arrays)
            except Exception as exc:  # the lines of the batch are written regardless
                self.drops.add("internal_error", str(metric), len(arrays),
                               why=f"{type(exc).__name__}: {exc}")
        self._batches_written += 1
        if self._write_text(text, len(events)):
            # counted once written: accepted = logged + dropped, even on a full disk
            self._logged.update(metrics)

    def _known_batch_text(
        self, known: list[_KnownLine | None], openings: list[str], values: list[Any],
        out: _BatchOut,
    ) -> str | None:
        """The batch's lines when every event is a plain number on a known line, else None.

        The usual batch of a steady run. Every step is one C-level pass over the batch (no
        bytecode per event): the writer shares the GIL with the training loop.
        """
        if None in known:
            return None
        types = set(map(type, values))
        if not _NUMBER_TYPES.issuperset(types):
            return None
        try:
            total = sum(values)
            low, high = min(values), max(values)
        except OverflowError:  # an int too large for a float
            return None
        if total - total != 0 or low < -_FAST_INT_BOUND or high > _FAST_INT_BOUND:
            return None  # a NaN or infinity somewhere, or huge ints: checked one by one
        entries = cast(list[_KnownLine], known)  # no None among them
        if low < 0 and 0 in map(_FLOOR, entries):
            return None  # a negative value for a counter, refused one by one
        states = list(map(_STATE, entries))
        numbers = list(map(float, values)) if int in types else values
        if None in states:  # events-only metrics have no series
            numbers = list(compress(numbers, states))
            states = list(filter(None, states))
        out.states = states
        out.numbers = numbers
        # One list of every piece, filled by slice assignment: no tuple per line.
        pieces = ["\n"] * (5 * len(values))
        pieces[0::5] = openings
        pieces[1::5] = map(_HEAD, entries)
        pieces[2::5] = _number_texts(values)
        pieces[3::5] = map(_TAIL, entries)
        return "".join(pieces)

    def _write_each(
        self,
        events: list[LogEvent],
        known: list[_KnownLine | None] | None,
        openings: list[str] | None,
        values: list[Any],
        host_by_event: dict[int, np.ndarray | None],
        errors: dict[int, str],
        out: _BatchOut,
    ) -> None:
        """Events one at a time: known lines from their cached parts, the rest in full."""
        add_line, add_state, add_number = out.lines.append, out.states.append, out.numbers.append
        nothing: list[Any] = [None] * len(events)
        rows = zip(known or nothing, openings or nothing, values, strict=True)
        for i, (parts, opening, value) in enumerate(rows):
            if parts is not None:
                head, tail, state, floor = parts
                tp = type(value)
                if tp is float:
                    if value - value == 0.0 and value >= floor:
                        add_line(f"{opening}{head}{value!r}{tail}")
                        if state is not None:
                            add_state(state)
                            add_number(value)
                        continue
                elif tp is int and floor <= value <= _FAST_INT_BOUND:
                    add_line(f"{opening}{head}{value!r}{tail}")
                    if state is not None:
                        add_state(state)
                        add_number(float(value))
                    continue
            self._write_event(events[i], i, host_by_event, errors, out)

    def _host_copies(
        self, values: list[Any]
    ) -> tuple[dict[int, np.ndarray | None], dict[int, str]]:
        """Host copies of the batch's tensors and arrays (batched), by position in the batch."""
        if _NUMBER_TYPES.issuperset(map(type, values)):
            return {}, {}
        # capture() queues arrays only as numpy copies or tensors; any other object with a
        # .shape (a pandas Series, say) is an ordinary value for the event file.
        array_at = [i for i, value in enumerate(values)
                    if type(value) not in _NUMBER_TYPES and _is_array(value)]
        if not array_at:
            return {}, {}
        try:
            copies = HostValues([values[i] for i in array_at])
            while not copies.ready():
                time.sleep(_POLL_S)
            return (dict(zip(array_at, copies.arrays(), strict=True)),
                    {array_at[k]: why for k, why in copies.errors.items()})
        except Exception as exc:  # the copy failed as a whole: the other lines still go out
            return (dict.fromkeys(array_at),
                    dict.fromkeys(array_at, f"{type(exc).__name__}: {exc}"))

    def _known_lookup(
        self, events: list[LogEvent], metrics: list[str]
    ) -> list[_KnownLine | None] | None:
        """Each event's cached line parts (None where unknown), looked up in C; None when the
        batch cannot use the cache.

        The key is (metric, location, metadata as orjson writes it, context). One orjson
        call encodes the whole batch's metadata, split at the "},{" between the dicts; the
        text tells 1, 1.0 and True apart (equal in Python, written differently). Two things
        orjson writes like plain values, an Enum (as its value) and a UUID (as its string),
        would find the line of that plain value if one was logged at the same place before:
        a known limit, where json.dumps would have failed and the line shown their repr. No
        key outlives its lookup: thousands of live objects would be promoted by the garbage
        collector and bring on full collections, the largest cost a writer could add.
        """
        metadata = list(map(_METADATA, events))
        if not _DICT_ONLY.issuperset(map(type, metadata)):
            return None
        try:
            encoded = orjson.dumps(metadata, option=_KEY_OPTIONS)[2:-2].decode()
        except TypeError:  # a value orjson refuses (orjson.JSONEncodeError is a TypeError)
            return None
        texts = encoded.split("},{")
        if len(texts) != len(events):
            return None  # "},{" inside a string or nested metadata: not one piece per dict
        keys = zip(metrics, map(_LOCATION, events), texts, map(event_context, events),
                   strict=True)
        return list(map(self._known.get, keys))

    def _write_event(
        self,
        ev: LogEvent,
        i: int,
        host_by_event: dict[int, np.ndarray | None],
        errors: dict[int, str],
        out: _BatchOut,
    ) -> None:
        """One event the line cache did not take: encoded, checked and aggregated in full.

        Where the event is an ordinary number, what it needed is remembered, so that the next
        events of its series and call site take the fast path.
        """
        value: Any = ev.value
        metadata_key = _metadata_key(ev.metadata, event_context(ev))
        state = _UNSEEN
        if metadata_key is not None:
            cache = self._series_cache.get(ev.metric)
            if cache is not None:
                state = cache.get(metadata_key, _UNSEEN)
        encode = self._encoder.encode
        if i in host_by_event:
            array = host_by_event[i]
            if array is None:
                self.drops.add("unreadable_tensor", ev.metric,
                               why=errors.get(i, "unreadable tensor"))
                out.lines.append(encode(ev, None, metadata_key))
                return
            out.lines.append(encode(ev, array, metadata_key))
            try:
                found = self._array_keys.get((ev.metric, metadata_key), _UNSEEN)
                if found is _UNSEEN:
                    found = self._spec_and_key(ev)
                    if metadata_key is not None:
                        if len(self._array_keys) > 4 * self.settings.max_series:
                            self._array_keys.clear()
                        self._array_keys[(ev.metric, metadata_key)] = found
                if found is not None:
                    self._stage_array(ev, found[1], array, out.blocks)
            except Exception as exc:  # one odd event must not cost the batch its lines
                self.drops.add("internal_error", str(ev.metric),
                               why=f"{type(exc).__name__}: {exc}")
            return
        line = encode(ev, value, metadata_key)
        out.lines.append(line)
        if len(line) > _MAX_CACHED_LINE:
            metadata_key = None  # huge metadata is kept alive by no cache
        try:
            cacheable = True
            if state is _UNSEEN:
                state, cacheable = self._series_state(ev, metadata_key)
            if state is not None:
                tp = type(value)
                if tp is not float and tp is not int:
                    value = _real_number(value)
                    tp = type(value)
                if tp is int:
                    value = self._int_value(ev.metric, value)
                    tp = float if value is not None else int
                if tp is float and value - value == 0.0:
                    if value < 0 and type(state) is SumState and self._monotonic(ev.metric):
                        self.drops.add("negative_counter", ev.metric, why="counters only go up")
                    else:
                        out.states.append(state)
                        out.numbers.append(value)
                elif tp is not int:
                    self._refuse_value(ev.metric, value)
            if metadata_key is not None and cacheable and type(ev.value) in _NUMBER_TYPES:
                self._remember_line(ev, metadata_key, state)
        except Exception as exc:  # one odd event must not cost the batch its lines
            self.drops.add("internal_error", str(ev.metric), why=f"{type(exc).__name__}: {exc}")

    def _remember_line(self, ev: LogEvent, metadata_key: Any, state: State | None) -> None:
        """Cache the line parts of a number logged with flat metadata.

        Only ints, strs, bools and finite floats: orjson writes None, NaN and infinity all
        as null, so a key holding null could stand for any of them, and nested values
        could be lists or tuples alike. Events with such metadata never find a line.
        """
        metadata = ev.metadata
        if type(metadata) is not dict or not _PLAIN_TYPES.issuperset(map(type, metadata.values())):
            return
        if any(type(v) is float and v - v != 0.0 for v in metadata.values()):
            return
        try:
            head, tail = self._encoder.line_parts(ev, metadata_key)
            # the key _known_lookup makes of this metadata in a batch
            keyed = orjson.dumps(metadata, option=_KEY_OPTIONS)[1:-1].decode()
        except (TypeError, ValueError, RecursionError):  # keys orjson or json.dumps refuse
            return
        # counters take no negative values: those go the long way, to be counted as dropped
        monotonic = type(state) is SumState and self._monotonic(ev.metric)
        if len(self._known) > 4 * self.settings.max_series:
            self._known.clear()
        key = (ev.metric, ev.location, keyed, event_context(ev))
        self._known[key] = (head, tail, state, 0 if monotonic else -_FAST_INT_BOUND)

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

    def _spec_and_key(self, ev: LogEvent) -> tuple[MetricSpec, AttributeKey] | None:
        """The spec and attribute set of an event; None if it only goes to the event file."""
        spec = self.specs.get(ev.metric)
        if spec is None or spec.kind is InstrumentKind.EVENTS_ONLY:
            return None
        metadata: Any = ev.metadata
        if not isinstance(metadata, dict):
            self.drops.add("invalid_metadata", ev.metric,
                           why=f"metadata must be a dict, got {type(metadata).__name__}")
            return spec, ()
        context = event_context(ev)
        if context is not None:
            metadata = {**context.values, **metadata}
        key, refused = attribute_key(spec, metadata)
        if refused:
            self.drops.add("invalid_attribute", ev.metric,
                           why=f"attribute values of {refused} are not str/int/float/bool")
        return spec, key

    def _series_state(self, ev: LogEvent, metadata_key: Any) -> tuple[State | None, bool]:
        """The aggregator state an event's scalar goes to (cached per distinct metadata), and
        whether later events of that metadata may reuse it."""
        found = self._spec_and_key(ev)
        state = None
        overflowed = False
        if found is not None:
            spec, key = found
            name = self._names[ev.metric]
            before = self.aggregator.overflowed_points(name)
            state = self.aggregator.series_state(name, spec, key)
            # A point folded into the overflow series must pass through the aggregator each
            # time, or the overflow counter would count the attribute set only once.
            overflowed = self.aggregator.overflowed_points(name) != before
        if metadata_key is not None and not overflowed:
            cache = self._series_cache.setdefault(ev.metric, {})
            if len(cache) > 4 * self.settings.max_series:
                cache.clear()
            cache[metadata_key] = state
        return state, not overflowed

    def _monotonic(self, metric: str) -> bool:
        return self.specs[metric].kind is InstrumentKind.COUNTER

    def _int_value(self, metric: str, value: int) -> float | None:
        """An int as a float, or None (counted) when it is too large for one."""
        try:
            return float(value)
        except OverflowError:
            self.drops.add("invalid_value", metric, why="integer too large for a float")
            return None

    def _refuse_value(self, metric: str, value: Any) -> None:
        if type(value) is float:
            self.drops.add("non_finite", metric, why="NaN/inf values are kept in the event "
                           "file but cannot enter a histogram sum")
        else:
            self.drops.add("invalid_value", metric,
                           why=f"metric values must be numbers, got {type(value).__name__}")

    def _stage_array(
        self,
        ev: LogEvent,
        key: AttributeKey,
        array: np.ndarray,
        blocks: dict[tuple[str, AttributeKey, tuple[int, ...]], list[np.ndarray]],
    ) -> None:
        if array.dtype.kind not in "iuf":
            self.drops.add("invalid_value", ev.metric,
                           why=f"tensor values must be real numbers, got dtype {array.dtype}")
            return
        blocks.setdefault((ev.metric, key, array.shape), []).append(array)

    def _record_block(
        self, metric: str, key: AttributeKey, shape: tuple[int, ...], arrays: list[np.ndarray]
    ) -> None:
        spec = self.specs[metric]
        values = np.stack(arrays).astype(np.float64, copy=False).reshape(len(arrays), -1)
        if values.shape[1] == 0:
            return
        keys = self._column_keys.get((key, shape))
        if keys is None:
            keys = self._column_keys[(key, shape)] = _column_keys(key, shape)
        skipped = self.aggregator.record_columns(self._names[metric], spec, keys, values)
        if skipped:
            self.drops.add("non_finite", metric, skipped,
                           why="NaN/inf values are kept in the event file but cannot enter a sum")

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
        data = self.collect()
        version = (self._batches_written, sum(self.drops.snapshot().values()),
                   sum(w.failures for w in self.workers))
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
        for metric, n in self._logged.items():
            own.record(f"{_OWN_NAMESPACE}.{EVENTS_LOGGED.identifier}", EVENTS_LOGGED,
                       (("metric", metric),), n)
        for (reason, metric), n in self.drops.snapshot().items():
            own.record(f"{_OWN_NAMESPACE}.{EVENTS_DROPPED.identifier}", EVENTS_DROPPED,
                       (("metric", metric), ("reason", reason)), n)
        for identifier, name in self._names.items():
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


_KnownLine = tuple[str, str, "State | None", int]
"""Head and tail of a line around its value, the series state, and the least value the fast
loop takes (0 for counters, whose negative values are refused)."""


class _BatchOut:
    """What one batch produces: its lines, its scalars by state, its arrays by series."""

    __slots__ = ("blocks", "lines", "numbers", "states")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.states: list[State] = []
        self.numbers: list[float] = []
        self.blocks: dict[tuple[str, AttributeKey, tuple[int, ...]], list[np.ndarray]] = {}


def _number_texts(values: list[float | int]) -> Iterable[str]:
    """``repr()`` of each finite float or int, as json.dumps writes them.

    orjson writes the same shortest round-trip digits ten times faster, and the same text
    wherever Python's repr uses no exponent. Where repr does (|v| < 1e-4 or >= 1e16), orjson
    writes an "e" too, or for 1e-7 <= |v| < 1e-4 four zeros after the point: then repr
    writes them all.
    """
    joined = orjson.dumps(values)[1:-1].decode()
    if "e" not in joined and "0.0000" not in joined:
        return joined.split(",")
    return map(repr, values)


def _metadata_key(metadata: Any, context: Any) -> Any:
    """A key equal for metadata that encodes alike and makes the same series; None if the
    metadata cannot be cached.

    Values *and* their types count: 1, 1.0 and True are equal but differ in JSON. Only flat
    int/str/bool/None values qualify: equal such dicts always encode alike (unlike 0.0 and
    -0.0, or (1, 2) and (True, 2)).
    """
    if type(metadata) is not dict:
        return None
    if not metadata:
        key: Any = _NO_METADATA
    elif len(metadata) <= _MAX_CACHED_KEYS:
        types = tuple(map(type, metadata.values()))
        if not _CACHEABLE_TYPES.issuperset(types):
            return None
        key = (tuple(metadata.items()), types)
    else:
        return None
    if context is not None:
        return (key, context.key) if context.key is not None else None
    return key


_NO_METADATA = ((), ())
_UNSEEN: Any = object()
_CACHEABLE_TYPES = frozenset({int, str, bool, type(None)})
_DICT_ONLY = frozenset({dict})
_PLAIN_TYPES = frozenset({int, str, bool, float})
_KEY_OPTIONS = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                | orjson.OPT_PASSTHROUGH_DATACLASS)
"""Metadata keys refuse what orjson would write like a plain value (str subclasses, dates)."""
_NUMBER_TYPES = frozenset({float, int})
_FAST_INT_BOUND = 2**63
_EVENTS_PER_WRITE = 50_000
"""Most events one write takes (bounds the text held in memory: about 150 bytes each)."""
"""Ints within it become floats and text without the checks huge ints need."""
_HEAD, _TAIL, _STATE, _FLOOR = (itemgetter(i) for i in range(4))
_VALUE = attrgetter("value")
_METRIC = attrgetter("metric")
_METADATA = attrgetter("metadata")
_LOCATION = attrgetter("location")
_MAX_CACHED_KEYS = 64
"""Metadata with more keys is never cached: its key tuple alone would cost more than encoding."""
_MAX_CACHED_LINE = 4096
"""Events with longer lines (megabyte strings in metadata) keep no series-cache entry."""


def _real_number(value: Any) -> Any:
    """A float for any other ``numbers.Real`` (a ``float`` subclass, a Fraction, an IntEnum),
    bools excepted (not a measurement); anything else unchanged (refused by the caller)."""
    if type(value) is not bool and isinstance(value, numbers.Real):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return value
    return value


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_tensor(value)


def _take_all(batch: deque[LogEvent]) -> list[LogEvent]:
    """Pop every event; unlike list()+clear(), loses nothing appended meanwhile."""
    popleft = batch.popleft
    return [popleft() for _ in range(len(batch))]


def _column_keys(key: AttributeKey, shape: tuple[int, ...]) -> list[AttributeKey]:
    base = dict(key)
    if len(shape) == 0:
        return [key]
    if len(shape) == 1:
        return [tuple(sorted({**base, "head": h}.items())) for h in range(shape[0])]
    return [
        tuple(sorted({**base, "layer": layer, "head": h}.items()))
        for layer in range(shape[0])
        for h in range(shape[1])
    ]
