"""The event file of the old API: ``micro_metrics.jsonl``, one ``LogEvent`` a line.

Lines are byte-for-byte what sparse-attention-hub wrote (``json.dumps`` of the event with
its timestamp in ``isoformat()``), so every existing parser, grep included, keeps working.
Non-finite floats come out as ``NaN``/``Infinity`` exactly as Python's json writes them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from typing import Any

from otel_sparse.event import LogEvent
from otel_sparse.exporters._files import AppendOnlyFile

_logger = logging.getLogger("otel_sparse")

EVENT_FILE_NAME = "micro_metrics.jsonl"

_encode = json.JSONEncoder().encode
_warned_unserialisable = False


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-encodable copy: unknown objects become their repr, odd keys become strings."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth > 64:
        return repr(value)
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(k): _jsonable(v, depth + 1) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        return _jsonable(item(), depth + 1)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and type(value).__module__ == "numpy":
        return tolist()
    return repr(value)


def encode_event(event: LogEvent, value: Any) -> str:
    """One event-file line (without the newline) for an event whose value is ``value``."""
    global _warned_unserialisable
    record = {
        "timestamp": event.timestamp.isoformat(),
        "metric": event.metric,
        "value": value,
        "metadata": event.metadata,
        "location": event.location,
    }
    try:
        return _encode(record)
    except (TypeError, ValueError, RecursionError) as exc:
        if not _warned_unserialisable:
            _warned_unserialisable = True
            _logger.warning(
                "otel_sparse: metric %r logged a value or metadata JSON cannot hold (%s); "
                "writing its repr() instead (reported once)", event.metric, exc,
            )
        record["value"] = _jsonable(value)
        record["metadata"] = _jsonable(event.metadata)
        return _encode(record)


def is_non_finite(value: Any) -> bool:
    """True for NaN and +-inf floats."""
    return isinstance(value, float) and not math.isfinite(value)


class EventFileWriter:
    """Appends events to ``<log_path>/micro_metrics.jsonl`` (one file per process)."""

    def __init__(self, path: str) -> None:
        self._file = AppendOnlyFile(path)

    @property
    def path(self) -> str:
        """Where the events go."""
        return self._file.path

    def write(self, lines: Iterable[str]) -> None:
        """Append encoded lines; raises OSError if the disk refuses them."""
        self._file.append_lines([line.encode("utf-8", "surrogatepass") for line in lines])
