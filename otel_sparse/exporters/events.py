"""The event file of the old API: ``micro_metrics.jsonl``, one ``LogEvent`` a line.

Lines are byte-for-byte what sparse-attention-hub wrote (``json.dumps`` of the event with
its timestamp in ``isoformat()``), so every existing parser, grep included, keeps working.
Non-finite floats come out as ``NaN``/``Infinity`` exactly as Python's json writes them.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from operator import attrgetter
from typing import Any

import numpy as np
import orjson

from otel_sparse.event import LogEvent, event_context
from otel_sparse.exporters._files import AppendOnlyFile

_logger = logging.getLogger("otel_sparse")


_encode = json.JSONEncoder().encode
_dumps = orjson.dumps  # a naive datetime comes out exactly as isoformat(), in quotes
_warned_unserialisable = False
_JSON_KEY_TYPES = (str, int, float, bool)  # json.dumps writes these keys itself
MAX_CACHED_METADATA = 1024
"""Longer encoded metadata is encoded per event, never cached (bounds the cache's memory)."""


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-encodable copy: unknown objects become their repr, odd keys become strings."""
    if value is None or isinstance(value, (str, bool, float)):
        return value
    if isinstance(value, int):
        try:
            int.__repr__(value)
        except ValueError:  # beyond sys.get_int_max_str_digits(): json.dumps cannot write it
            return f"<int of {value.bit_length()} bits>"
        return value
    if depth > 64:
        return _safe_repr(value)
    try:
        if isinstance(value, dict):
            return {
                k if k is None or type(k) in _JSON_KEY_TYPES else _safe_repr(k, str):
                _jsonable(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [_jsonable(v, depth + 1) for v in value]
        item = getattr(value, "item", None)
        if callable(item) and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
            return _jsonable(item(), depth + 1)
        tolist = getattr(value, "tolist", None)
        if callable(tolist) and type(value).__module__ == "numpy":
            return _jsonable(tolist(), depth + 1)
    except Exception:  # a container or numpy object that fails to convert: its repr below
        pass
    return _safe_repr(value)


def _safe_repr(value: Any, to_text: Any = repr) -> str:
    """``repr(value)`` (or ``str``); a placeholder naming the type if that raises."""
    try:
        return str(to_text(value))
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"


_OPENING = '{"timestamp": '


def line_openings(events: list[LogEvent]) -> list[str] | None:
    """``{"timestamp": "<isoformat>"`` of every event, encoded in one orjson call.

    None unless every timestamp is a datetime (events a caller queued by hand may hold
    anything): then each line is encoded on its own.
    """
    stamps = list(map(_TIMESTAMP, events))
    if not _DATETIME_ONLY.issuperset(map(type, stamps)):
        return None
    try:
        joined = _dumps(stamps)[1:-1].decode()  # '"2026-...","2026-..."': no other commas
    except (TypeError, ValueError):  # a tzinfo orjson does not know
        return None
    return (_OPENING + joined.replace(",", "," + _OPENING)).split(",")


_TIMESTAMP = attrgetter("timestamp")
_DATETIME_ONLY = frozenset({datetime})


def _float_json(value: float) -> str:
    if value - value == 0.0:
        return float.__repr__(value)
    # exactly what json.dumps writes for non-finite floats, so old parsers see the same file
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _array_json(array: np.ndarray) -> str:
    """A host copy of a tensor as a JSON (nested) list: the numbers ``tolist()`` gives.

    orjson writes the same float64 values 15x faster than json.dumps(array.tolist()), but
    without the spaces after commas (still the same numbers for json.loads) and with null
    for NaN, so arrays holding NaN/inf and exotic dtypes take json's path.
    """
    kind = array.dtype.kind
    if array.ndim and (kind in "biu" or (kind == "f" and np.isfinite(array).all())):
        as_json: str = _dumps(
            array.astype(np.float64, copy=False) if kind == "f" else array,
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
        return as_json
    return _encode(array.tolist())


class EventEncoder:
    """Encodes events into lines identical to ``json.dumps`` of the old ``asdict(event)``.

    The line is assembled from cached pieces (metric, location, metadata per distinct
    metadata) because ``json.dumps`` of the whole record is several times slower, and the
    background writer shares the GIL with the training loop.
    """

    def __init__(self) -> None:
        self._frames: dict[tuple[str, str], tuple[str, str]] = {}
        self._metadata: dict[Any, str] = {}

    def _frame(self, metric: str, location: str) -> tuple[str, str]:
        """The constant text around value and metadata for one (metric, location)."""
        frame = (
            f', "metric": {_encode(metric)}, "value": ',
            f', "location": {_encode(location)}',
        )
        if len(self._frames) > 100_000:
            self._frames.clear()
        self._frames[(metric, location)] = frame
        return frame

    def line_parts(self, event: LogEvent, metadata_key: Any) -> tuple[str, str]:
        """The text between opening and value, and after the value, of ``event``'s line.

        Both are cached per (metric, location) and per distinct metadata, so an event whose
        metadata was seen before costs two dictionary lookups. Raises TypeError or
        ValueError for metadata json.dumps cannot write.
        """
        frame = self._frames.get((event.metric, event.location))
        if frame is None:
            frame = self._frame(event.metric, event.location)
        metadata_json = self._metadata.get(metadata_key) if metadata_key is not None else None
        if metadata_json is None:
            metadata_json = _encode(event.metadata)
            if metadata_key is not None and len(metadata_json) <= MAX_CACHED_METADATA:
                if len(self._metadata) > 100_000:
                    self._metadata.clear()
                self._metadata[metadata_key] = metadata_json
        context = event_context(event)
        end = "}" if context is None else self._context_json(context)
        return frame[0], f', "metadata": {metadata_json}{frame[1]}{end}'

    def encode(self, event: LogEvent, value: Any, metadata_key: Any = None) -> str:
        """One line (no newline). ``metadata_key`` identifies equal metadata (or None)."""
        timestamp = event.timestamp
        context = event_context(event)
        if type(timestamp) is not datetime or (context is not None and context.key is None):
            return encode_event(event, value)
        try:
            head, tail = self.line_parts(event, metadata_key)
            tp = type(value)
            if tp is float:
                value_json = _float_json(value)
            elif tp is int:
                value_json = int.__repr__(value)
            elif tp is np.ndarray:
                value_json = _array_json(value)
            else:
                value_json = _encode(value)
        except (TypeError, ValueError, RecursionError):
            return encode_event(event, value)
        return f"{_OPENING}{_dumps(timestamp).decode()}{head}{value_json}{tail}"

    def _context_json(self, context: Any) -> str:
        """``, "context": {...}}`` for a context snapshot, cached per distinct context."""
        end = self._metadata.get(("context", context.key))
        if end is None:
            end = f', "context": {_encode(context.values)}}}'
            self._metadata[("context", context.key)] = end
        return end


def encode_event(event: LogEvent, value: Any) -> str:
    """One event-file line (without the newline): the old ``json.dumps(asdict(event))``."""
    global _warned_unserialisable
    timestamp = event.timestamp
    if isinstance(value, np.ndarray):
        value = value.tolist()
    record = {
        "timestamp": timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp,
        "metric": event.metric,
        "value": value,
        "metadata": event.metadata,
        "location": event.location,
    }
    context = event_context(event)
    if context is not None:
        record["context"] = context.values
    try:
        return _encode(record)
    except Exception as exc:  # TypeError/ValueError mostly; also anything a __repr__ raises
        if not _warned_unserialisable:
            _warned_unserialisable = True
            _logger.warning(
                "otel_sparse: metric %r logged a value or metadata JSON cannot hold (%s); "
                "writing its repr() instead (reported once)", event.metric, exc,
            )
        record["value"] = _jsonable(value)
        record["metadata"] = _jsonable(event.metadata)
        record["metric"] = _jsonable(event.metric)
        if context is not None:
            record["context"] = _jsonable(context.values)
        try:
            return _encode(record)
        except Exception:  # still not writable (a dict key json.dumps refuses): plain text
            for name in ("value", "metadata", "metric", "context"):
                if name in record and not isinstance(record[name], str):
                    record[name] = _safe_repr(record[name])
            return _encode(record)


class EventFileWriter:
    """Appends events to ``<log_path>/micro_metrics.jsonl`` (one file per process)."""

    def __init__(self, path: str) -> None:
        self._file = AppendOnlyFile(path)

    @property
    def path(self) -> str:
        """Where the events go."""
        return self._file.path

    def write(self, text: str) -> None:
        """Append encoded lines, each ending in a newline; raises OSError if the disk refuses."""
        self._file.append_text(text.encode("utf-8", "surrogatepass"))
