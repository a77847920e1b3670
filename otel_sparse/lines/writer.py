"""Turning a batch of events into event-file text and what the batch adds to the aggregate.

Two engines behind one seam (``make_lines``):

- ``PlainLines``, the reference: every event encoded by ``encode_event`` and its series
  looked up afresh. No cache at all; 9-12 us per event.
- ``CachedLines``, the fast path: remembered lines (``LineCache``) and cached pieces
  (``LineEncoder``); 1-2 us per event in a steady run.

Both write the same bytes and add the same values; tests/test_lines.py checks it on random
event streams. ``Pipeline(line_cache=False)`` or ``OTEL_SPARSE_LINE_CACHE=false`` picks the
plain one.
"""

from __future__ import annotations

import time
from itertools import compress
from operator import attrgetter, itemgetter
from typing import Any, Protocol

import numpy as np

from otel_sparse._cuda import GpuTime, resolve_times
from otel_sparse._values import HostValues, is_tensor
from otel_sparse.event import LogEvent
from otel_sparse.lines import accept
from otel_sparse.lines.accept import ANY_FLOOR, COUNTER_FLOOR, NUMBER_TYPES
from otel_sparse.lines.cache import MAX_KEY_TEXT, KnownLine, LineCache, event_key, key_text
from otel_sparse.lines.encoder import LineEncoder, join_lines, line_openings, number_texts, one_line
from otel_sparse.lines.reference import encode_event
from otel_sparse.series import BatchOut, SeriesBook

_POLL_S = 0.001  # how often a write re-checks an unfinished device-to-host copy or GPU timer
_VALUE = attrgetter("value")
_HEAD, _TAIL, _STATE, _FLOOR = (itemgetter(i) for i in range(4))  # KnownLine's fields, in C
_UNSEEN: Any = object()
HostCopies = tuple[dict[int, "np.ndarray | None"], dict[int, str]]
"""Host copies of a batch's tensors by position (None: unreadable), and why each failed."""


class LineEngine(Protocol):
    """What the pipeline asks of an engine: one batch's text, and the batch's values staged
    in ``out`` for the aggregate."""

    def write(self, events: list[LogEvent], out: BatchOut) -> str:
        """The batch's lines, each ending in a newline; never raises for one odd event."""

    def forget(self) -> None:
        """Drop every cached decision (a metric's spec changed)."""


def make_lines(series: SeriesBook, line_cache: bool, cache_limit: int) -> LineEngine:
    """The fast engine, or the plain reference when ``line_cache`` is False."""
    return CachedLines(series, cache_limit) if line_cache else PlainLines(series)


class PlainLines:
    """The reference engine: one event at a time, ``encode_event`` and a fresh series lookup.

    Args:
        series: specs and aggregator of the logger.
    """

    def __init__(self, series: SeriesBook) -> None:
        self.series = series

    def forget(self) -> None:
        """Nothing is cached."""

    def write(self, events: list[LogEvent], out: BatchOut) -> str:
        """Every event encoded and checked on its own."""
        host, errors = host_copies(events, list(map(_VALUE, events)))
        lines = [self.write_event(ev, i, host, errors, out) for i, ev in enumerate(events)]
        return "\n".join(lines) + "\n"

    def write_event(self, ev: LogEvent, i: int, host: dict[int, np.ndarray | None],
                    errors: dict[int, str], out: BatchOut) -> str:
        """One event's line; its value staged in ``out``. Never raises for an odd event."""
        key = self._key(ev)
        if i in host:
            return self._write_array(ev, key, host[i], errors.get(i), out)
        line = self._encode(ev, ev.value, key)
        if len(line) > MAX_KEY_TEXT * 4:
            key = None  # huge lines are kept alive by no cache
        try:
            self._stage_number(ev, key, out)
        except Exception as exc:  # one odd event must not cost the batch its lines
            self.series.drops.add("internal_error", str(ev.metric),
                                  why=f"{type(exc).__name__}: {exc}")
        return line

    def _write_array(self, ev: LogEvent, key: Any, array: np.ndarray | None, error: str | None,
                     out: BatchOut) -> str:
        if array is None:
            self.series.drops.add("unreadable_tensor", ev.metric,
                                  why=error or "unreadable tensor")
            return self._encode(ev, None, key)
        line = self._encode(ev, array, key)
        try:
            found = self._array_series(ev, key)
            if found is not None:
                self.series.stage_array(ev, found[1], array, out)
        except Exception as exc:  # one odd event must not cost the batch its lines
            self.series.drops.add("internal_error", str(ev.metric),
                                  why=f"{type(exc).__name__}: {exc}")
        return line

    # Hooks the cached engine fills in; here each one is the plain thing.

    def _key(self, ev: LogEvent) -> Any:
        return None

    def _encode(self, ev: LogEvent, value: Any, key: Any) -> str:
        return encode_event(ev, value)

    def _array_series(self, ev: LogEvent, key: Any) -> Any:
        return self.series.spec_and_key(ev)

    def _stage_number(self, ev: LogEvent, key: Any, out: BatchOut) -> None:
        state, _ = self.series.series_state(ev)
        self.series.add_number(ev.metric, ev.value, state, out)


class CachedLines(PlainLines):
    """The fast engine: remembered lines for numbers of known series, cached pieces for the
    rest, the plain engine's per-event steps (with cached lookups) for what the rule refuses.

    Args:
        series: specs and aggregator of the logger.
        cache_limit: most entries each cache holds.
    """

    def __init__(self, series: SeriesBook, cache_limit: int) -> None:
        super().__init__(series)
        self.cache = LineCache(cache_limit)
        self.encoder = LineEncoder(cache_limit, MAX_KEY_TEXT)

    def forget(self) -> None:
        """Drop every remembered line, state and piece."""
        self.cache.clear()
        self.encoder.clear()

    def write(self, events: list[LogEvent], out: BatchOut) -> str:
        """The whole batch from remembered lines when it can, else event by event."""
        self.cache.follow(self.series.aggregator.generation)
        values = list(map(_VALUE, events))
        openings = line_openings(events)  # None: a timestamp that is no datetime
        known = self.cache.lookup(events) if openings is not None else None
        if known is not None and openings is not None and None not in known:
            text = self._known_batch(known, openings, values, out)  # type: ignore[arg-type]
            if text is not None:
                return text
        host, errors = host_copies(events, values)
        lines: list[str] = []
        add_line = lines.append
        for i, ev in enumerate(events):  # in event order: the order values are summed in
            parts = known[i] if known is not None else None
            line = None
            if parts is not None and openings is not None:
                line = self._known_event(parts, openings[i], values[i], out)
            add_line(line if line is not None else self.write_event(ev, i, host, errors, out))
        return "\n".join(lines) + "\n"

    def _known_batch(self, known: list[KnownLine], openings: list[str], values: list[Any],
                     out: BatchOut) -> str | None:
        """The batch's text when every value is accepted on its remembered line, else None.

        The usual batch of a steady run. Every step is one C-level pass over the batch (no
        bytecode per event): the writer shares the GIL with the training loop.
        """
        if not accept.accepts(values, map(_FLOOR, known)):
            return None
        states = list(map(_STATE, known))
        numbers = list(map(float, values)) if int in set(map(type, values)) else values
        if None in states:  # events-only metrics have no series
            numbers = list(compress(numbers, states))
            states = list(filter(None, states))
        out.states += states
        out.numbers += numbers
        return join_lines(openings, map(_HEAD, known), number_texts(values), map(_TAIL, known))

    @staticmethod
    def _known_event(parts: KnownLine, opening: str, value: Any, out: BatchOut) -> str | None:
        """One event's line from its remembered line, or None if the rule refuses its value."""
        if not accept.accepts((value,), (parts.floor,)):
            return None
        if parts.state is not None:
            out.states.append(parts.state)
            out.numbers.append(float(value))
        return one_line(opening, parts.head, value, parts.tail)

    # The plain engine's per-event steps, with the cache.

    def _key(self, ev: LogEvent) -> Any:
        return event_key(ev)

    def _encode(self, ev: LogEvent, value: Any, key: Any) -> str:
        return self.encoder.encode(ev, value, key_text(key))

    def _array_series(self, ev: LogEvent, key: Any) -> Any:
        found = self.cache.array_series(key, _UNSEEN) if key is not None else _UNSEEN
        if found is _UNSEEN:
            found = self.series.spec_and_key(ev)
            if key is not None:
                self.cache.set_array_series(key, found)
        return found

    def _stage_number(self, ev: LogEvent, key: Any, out: BatchOut) -> None:
        state = self.cache.state(key, _UNSEEN) if key is not None else _UNSEEN
        if state is _UNSEEN:
            state, reusable = self.series.series_state(ev)
            if key is not None and reusable:
                self.cache.set_state(key, state)
            elif not reusable:
                key = None  # an overflowed point passes through the aggregator every time
        self.series.add_number(ev.metric, ev.value, state, out)
        if key is not None and type(ev.value) in NUMBER_TYPES:
            try:
                head, tail = self.encoder.line_parts(ev, key_text(key))
            except (TypeError, ValueError, RecursionError):  # text json.dumps refuses
                return
            floor = COUNTER_FLOOR if self.series.is_counter(ev.metric, state) else ANY_FLOOR
            self.cache.remember(key, KnownLine(head, tail, state, floor, ev.metadata))


def host_copies(events: list[LogEvent], values: list[Any]) -> HostCopies:
    """Host copies of the batch's tensors and arrays (batched), by position in the batch.

    GPU timers first become their seconds (in ``values`` and on their events); a timer whose
    CUDA events failed is written and counted like an unreadable tensor.
    """
    if NUMBER_TYPES.issuperset(map(type, values)):
        return {}, {}
    failed = resolve_times(events, values, time.sleep, _POLL_S) if GpuTime in map(
        type, values) else None
    host, errors = _array_copies(values)
    for i, why in failed or ():
        host[i] = None
        errors[i] = f"GPU timer: {why}"
    return host, errors


def _array_copies(values: list[Any]) -> HostCopies:
    # capture() queues arrays only as numpy copies or tensors; any other object with a
    # .shape (a pandas Series, say) is an ordinary value for the event file.
    array_at = [i for i, value in enumerate(values)
                if type(value) not in NUMBER_TYPES and _is_array(value)]
    if not array_at:
        return {}, {}
    try:
        copies = HostValues([values[i] for i in array_at])
        while not copies.ready():
            time.sleep(_POLL_S)
        return (dict(zip(array_at, copies.arrays())),
                {array_at[k]: why for k, why in copies.errors.items()})
    except Exception as exc:  # the copy failed as a whole: the other lines still go out
        return (dict.fromkeys(array_at),
                dict.fromkeys(array_at, f"{type(exc).__name__}: {exc}"))


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) or is_tensor(value)
