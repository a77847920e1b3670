"""The plain reference encoder: one event, one line, what ``json.dumps`` of the old
``asdict(event)`` wrote.

Every other way of building event lines (``otel_sparse.lines.encoder`` and the line cache)
must write these bytes; the differential test (tests/test_lines.py) feeds both the same
events. Two texts are defined here once and used by every encoder:

- a number: ``float.__repr__``/``int.__repr__`` where finite; ``NaN``, ``Infinity`` and
  ``-Infinity`` as Python's json writes them, so old parsers see the same file;
- a tensor's host copy (``array_json``): its numbers as one JSON list.

What JSON cannot hold (odd objects in metadata, keys json refuses) is written as its repr,
with one warning per process.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

import numpy as np
import orjson

from otel_sparse.event import LogEvent, event_context

_logger = logging.getLogger("otel_sparse")

encode_json = json.JSONEncoder().encode
"""``json.dumps`` with its default separators, without the per-call argument handling."""
_warned_unserialisable = False
_JSON_KEY_TYPES = (str, int, float, bool)  # json.dumps writes these keys itself


def float_json(value: float) -> str:
    """A float as ``json.dumps`` writes it (finite: its repr)."""
    if value - value == 0.0:
        return float.__repr__(value)
    if value != value:
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def array_json(array: np.ndarray) -> str:
    """A host copy of a tensor as a JSON (nested) list: the numbers ``tolist()`` gives.

    orjson writes the same float64 values 15x faster than json.dumps(array.tolist()), but
    without the spaces after commas (still the same numbers for json.loads) and with null
    for NaN, so arrays holding NaN/inf, scalars and exotic dtypes take json's path. Raises
    TypeError for values JSON cannot hold (complex numbers).
    """
    kind = array.dtype.kind
    if array.ndim and (kind in "biu" or (kind == "f" and np.isfinite(array).all())):
        as_json: str = orjson.dumps(
            array.astype(np.float64, copy=False) if kind == "f" else array,
            option=orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
        return as_json
    return encode_json(array.tolist())


def encode_event(event: LogEvent, value: Any) -> str:
    """One event-file line (without the newline): the old ``json.dumps(asdict(event))``.

    ``value`` is what to write for ``event.value``: the event's own value, or the host copy
    (a numpy array) of a tensor, or None for a tensor that could not be read. The event's
    context, if any, follows under ``"context"``.
    """
    array_text = None
    if isinstance(value, np.ndarray):
        try:
            array_text = array_json(value)
        except Exception:  # numbers JSON cannot hold: written as the list's repr below
            value = value.tolist()
    timestamp = event.timestamp
    record = {
        "timestamp": timestamp.isoformat() if isinstance(timestamp, datetime) else timestamp,
        "metric": event.metric,
        "value": None if array_text is not None else value,
        "metadata": event.metadata,
        "location": event.location,
    }
    context = event_context(event)
    if context is not None:
        record["context"] = context.values
    try:
        text = encode_json(record)
    except Exception as exc:  # TypeError/ValueError mostly; also anything a __repr__ raises
        _warn_unserialisable(event, exc)
        record = _writable(record)
        text = encode_json(record)
    if array_text is None:
        return text
    # json.dumps of a dict is each '"key": value' joined by ", " in braces
    return "{" + ", ".join(
        f'"{name}": {array_text if name == "value" else encode_json(item)}'
        for name, item in record.items()
    ) + "}"


def _warn_unserialisable(event: LogEvent, exc: Exception) -> None:
    global _warned_unserialisable
    if not _warned_unserialisable:
        _warned_unserialisable = True
        _logger.warning(
            "otel_sparse: metric %r logged a value or metadata JSON cannot hold (%s); "
            "writing its repr() instead (reported once)", event.metric, exc,
        )


def _writable(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with what JSON cannot hold replaced by its repr (never raises)."""
    record = dict(record)
    for name in ("value", "metadata", "metric", "context"):
        if name in record:
            record[name] = jsonable(record[name])
    try:
        encode_json(record)
    except Exception:  # still not writable (a dict key json.dumps refuses): plain text
        for name in ("value", "metadata", "metric", "context"):
            if name in record and not isinstance(record[name], str):
                record[name] = safe_repr(record[name])
    return record


def jsonable(value: Any, depth: int = 0) -> Any:
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
        return safe_repr(value)
    try:
        if isinstance(value, dict):
            return {
                k if k is None or type(k) in _JSON_KEY_TYPES else safe_repr(k, str):
                jsonable(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [jsonable(v, depth + 1) for v in value]
        item = getattr(value, "item", None)
        if callable(item) and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
            return jsonable(item(), depth + 1)
        tolist = getattr(value, "tolist", None)
        if callable(tolist) and type(value).__module__ == "numpy":
            return jsonable(tolist(), depth + 1)
    except Exception:  # a container or numpy object that fails to convert: its repr below
        pass
    return safe_repr(value)


def safe_repr(value: Any, to_text: Any = repr) -> str:
    """``repr(value)`` (or ``str``); a placeholder naming the type if that raises."""
    try:
        return str(to_text(value))
    except Exception:
        return f"<unrepresentable {type(value).__qualname__}>"
