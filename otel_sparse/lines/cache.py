"""The line cache: per (metric, location, metadata, context), what an event needs to skip
encoding and series lookup, under one key scheme.

The key of an event is ``(metric, location, metadata key text, context)``. The key text is
the metadata dict as orjson writes it, without its braces: it tells ``1``, ``1.0`` and
``True`` apart (equal and hashed alike in Python, written differently in JSON), as it does
``0.0`` and ``-0.0``. One orjson call writes the key texts of a whole batch (``batch_keys``);
``event_key`` writes one the same way. The context is the event's ``EventContext`` object
(shared by every event logged under one scope), so equal keys have equal context values.

What may be remembered is decided by ``otel_sparse.lines.accept`` alone. Every cache here
is emptied together (``clear``): when a metric is (re-)enabled, when the aggregator hands
out new states, and when one of them reaches its size limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter, eq, itemgetter
from typing import Any, NamedTuple

import orjson

from otel_sparse.aggregator import State
from otel_sparse.event import LogEvent, event_context
from otel_sparse.lines import accept

MAX_KEY_TEXT = 1024
"""Metadata with a longer key text is never cached (megabyte strings would stay alive)."""
MAX_KEYS = 64
"""Metadata with more keys is never cached: its key alone would cost more than encoding it."""
_KEY_OPTIONS = (orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATETIME
                | orjson.OPT_PASSTHROUGH_DATACLASS)
"""Key texts refuse what orjson would write like a plain value (str subclasses, dates)."""
_DICT_ONLY = frozenset({dict})
_METRIC = attrgetter("metric")
_METADATA = attrgetter("metadata")
_LOCATION = attrgetter("location")
_REMEMBERED: Any = itemgetter(4)  # KnownLine.metadata, in C


class KnownLine(NamedTuple):
    """A remembered line: head and tail around the value, the series state (None: events
    only), the least value the line takes (``accept.COUNTER_FLOOR`` or ``ANY_FLOOR``), and
    the metadata it was remembered for."""

    head: str
    tail: str
    state: State | None
    floor: int
    metadata: dict[str, Any]


def key_texts(metadata: Sequence[Any]) -> list[str] | None:
    """The key text of each metadata dict, from one orjson call; None if one is no dict or
    orjson refuses a value (subclasses of str/int/float, dates, dataclasses, numpy values).

    The list's text is split at the ``},{`` between the dicts; a string holding ``},{``
    breaks the count, and the batch then has no key texts. Two kinds of values orjson
    writes like plain ones, an Enum (as its value) and a UUID (as its string), share their
    plain twin's text: ``LineCache.lookup`` tells them apart by equality.
    """
    if not _DICT_ONLY.issuperset(map(type, metadata)):
        return None
    try:
        encoded = orjson.dumps(metadata, option=_KEY_OPTIONS)[2:-2].decode()
    except TypeError:  # a key orjson refuses (orjson.JSONEncodeError is a TypeError)
        return None
    texts = encoded.split("},{")
    return texts if len(texts) == len(metadata) else None


def event_key(ev: LogEvent) -> Any:
    """The cache key of one event, or None when its line and series may not be cached."""
    metadata = ev.metadata
    if not accept.accepts_metadata(metadata) or len(metadata) > MAX_KEYS:
        return None
    context = event_context(ev)
    if context is not None and context.key is None:
        return None  # unhashable context values: encoded per event
    texts = key_texts((metadata,))
    if texts is None or len(texts[0]) > MAX_KEY_TEXT:
        return None
    return (ev.metric, ev.location, texts[0], context)


def key_text(key: Any) -> str | None:
    """The metadata key text of a key from ``event_key`` (None for None)."""
    return key[2] if key is not None else None


class LineCache:
    """Remembered lines, series states and tensor series of one writer.

    Args:
        limit: most entries each table holds; reaching it empties the cache.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.generation = 0
        """The aggregator generation the cached states belong to."""
        self._known: dict[Any, KnownLine] = {}
        self._states: dict[Any, State | None] = {}
        self._arrays: dict[Any, Any] = {}

    def clear(self) -> None:
        """Forget everything (a metric was enabled again, or states were replaced)."""
        self._known.clear()
        self._states.clear()
        self._arrays.clear()

    def follow(self, generation: int) -> None:
        """Empty the cache when the aggregator hands out new states."""
        if generation != self.generation:
            self.clear()
            self.generation = generation

    def lookup(self, events: list[LogEvent]) -> list[KnownLine | None]:
        """Each event's remembered line (None where there is none), looked up in C when the
        batch's metadata all has key texts, else event by event.

        A line is found only for metadata equal to the metadata it was remembered for: equal
        key texts alone would let ``{"x": Color.RED}`` (an Enum of value 1) find the line of
        ``{"x": 1}``. Both tests together leave no two metadata that write differently.
        """
        metadata = list(map(_METADATA, events))
        texts = key_texts(metadata)
        if texts is None:
            found = [self._known.get(event_key(ev)) for ev in events]
        else:
            keys = zip(map(_METRIC, events), map(_LOCATION, events), texts,
                       map(event_context, events))
            found = list(map(self._known.get, keys))
            if None not in found:  # the steady batch: its check takes two C-level passes
                remembered = map(_REMEMBERED, found)
                if all(map(eq, metadata, remembered)):
                    return found
        return [line if line is not None and line.metadata == md else None
                for line, md in zip(found, metadata)]

    def remember(self, key: Any, line: KnownLine) -> None:
        """Remember ``line`` for the events of ``key`` (from ``event_key``)."""
        self._put(self._known, key, line)

    def state(self, key: Any, missing: Any) -> Any:
        """The cached series state of ``key``, or ``missing``."""
        return self._states.get(key, missing)

    def set_state(self, key: Any, state: State | None) -> None:
        """Cache the series state of ``key``."""
        self._put(self._states, key, state)

    def array_series(self, key: Any, missing: Any) -> Any:
        """The cached (spec, attribute key) of tensors of ``key``, or ``missing``."""
        return self._arrays.get(key, missing)

    def set_array_series(self, key: Any, found: Any) -> None:
        """Cache the (spec, attribute key) of tensors of ``key``."""
        self._put(self._arrays, key, found)

    def _put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        if len(table) >= self.limit:
            self.clear()  # one size rule for every table
        table[key] = value
