"""The fast encoder: event lines assembled from pieces, byte for byte ``encode_event``'s.

A line is five pieces (the fifth a newline)::

    {"timestamp": "2026-..."  , "metric": "m", "value":   0.25   , "metadata": {...}, ...}
    `------ opening -------'  `-------- head ---------'  `value'  `------- tail --------'

Openings of a whole batch come from one orjson call
(``line_openings``), numbers from another (``number_texts``); head and tail are cached per
(metric, location) and per distinct metadata, because ``json.dumps`` of the whole record is
several times slower and the background writer shares the GIL with the training loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from operator import attrgetter
from typing import Any

import numpy as np
import orjson

from otel_sparse.event import LogEvent, event_context
from otel_sparse.lines.reference import array_json, encode_event, encode_json, float_json

OPENING = '{"timestamp": '
"""The start of every line, up to the timestamp's text."""
_TIMESTAMP = attrgetter("timestamp")
_DATETIME_ONLY = frozenset({datetime})


def line_openings(events: list[LogEvent]) -> list[str] | None:
    """``{"timestamp": "<isoformat>"`` of every event, encoded in one orjson call.

    orjson writes a naive or fixed-offset datetime exactly as ``isoformat()``, in quotes.
    None unless every timestamp is a datetime (events a caller queued by hand may hold
    anything): then each line is encoded on its own.
    """
    stamps = list(map(_TIMESTAMP, events))
    if not _DATETIME_ONLY.issuperset(map(type, stamps)):
        return None
    try:
        joined = orjson.dumps(stamps)[1:-1].decode()  # '"2026-...","2026-..."': no other commas
    except (TypeError, ValueError):  # a tzinfo orjson does not know
        return None
    return (OPENING + joined.replace(",", "," + OPENING)).split(",")


def number_texts(values: list[float | int]) -> Iterable[str]:
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


def join_lines(openings: list[str], heads: Iterable[str], values: Iterable[str],
               tails: Iterable[str]) -> str:
    """The five pieces of every line joined into the text of a batch (newline-terminated).

    One list of every piece, filled by slice assignment: no tuple and no bytecode per line.
    """
    pieces = ["\n"] * (5 * len(openings))
    pieces[0::5] = openings
    pieces[1::5] = heads
    pieces[2::5] = values
    pieces[3::5] = tails
    return "".join(pieces)


def one_line(opening: str, head: str, value: Any, tail: str) -> str:
    """The same five pieces for one finite number (no newline)."""
    return f"{opening}{head}{value!r}{tail}"


class LineEncoder:
    """Encodes events into ``encode_event``'s lines from cached heads and tails.

    Args:
        limit: most entries each cache holds before it is emptied (bounds its memory).
        max_metadata_text: longer metadata texts are encoded per event, never cached.
    """

    def __init__(self, limit: int, max_metadata_text: int) -> None:
        self._limit = limit
        self._max_text = max_metadata_text
        self._frames: dict[tuple[str, str], tuple[str, str]] = {}
        self._metadata: dict[Any, str] = {}
        self._contexts: dict[Any, str] = {}

    def clear(self) -> None:
        """Forget every cached piece."""
        self._frames.clear()
        self._metadata.clear()
        self._contexts.clear()

    def line_parts(self, event: LogEvent, metadata_text: str | None) -> tuple[str, str]:
        """The head (between opening and value) and the tail (after it) of ``event``'s line.

        ``metadata_text`` (the line cache's key text of the metadata, or None) identifies
        equal metadata. Raises TypeError or ValueError for metadata json.dumps cannot write.
        """
        frame = self._frames.get((event.metric, event.location))
        if frame is None:
            frame = (f', "metric": {encode_json(event.metric)}, "value": ',
                     f', "location": {encode_json(event.location)}')
            _bounded(self._frames, self._limit)[(event.metric, event.location)] = frame
        metadata_json = self._metadata.get(metadata_text) if metadata_text is not None else None
        if metadata_json is None:
            metadata_json = encode_json(event.metadata)
            if metadata_text is not None and len(metadata_text) <= self._max_text:
                _bounded(self._metadata, self._limit)[metadata_text] = metadata_json
        context = event_context(event)
        end = "}" if context is None else self._context_json(context.key, context.values)
        return frame[0], f', "metadata": {metadata_json}{frame[1]}{end}'

    def encode(self, event: LogEvent, value: Any, metadata_text: str | None) -> str:
        """One line (no newline); ``value`` as in ``encode_event``."""
        timestamp = event.timestamp
        context = event_context(event)
        if type(timestamp) is not datetime or (context is not None and context.key is None):
            return encode_event(event, value)
        try:
            head, tail = self.line_parts(event, metadata_text)
            tp = type(value)
            if tp is float:
                value_json = float_json(value)
            elif tp is int:
                value_json = int.__repr__(value)
            elif tp is np.ndarray:
                value_json = array_json(value)
            else:
                value_json = encode_json(value)
            opening = OPENING + orjson.dumps(timestamp).decode()
        except (TypeError, ValueError, RecursionError):
            return encode_event(event, value)
        return f"{opening}{head}{value_json}{tail}"

    def _context_json(self, key: Any, values: dict[str, Any]) -> str:
        """``, "context": {...}}`` for a context snapshot, cached per distinct context."""
        end = self._contexts.get(key)
        if end is None:
            end = f', "context": {encode_json(values)}}}'
            _bounded(self._contexts, self._limit)[key] = end
        return end


def _bounded(cache: dict[Any, Any], limit: int) -> dict[Any, Any]:
    """``cache``, emptied first when it holds ``limit`` entries: the one size rule."""
    if len(cache) >= limit:
        cache.clear()
    return cache
