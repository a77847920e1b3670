"""Following a live run: the lines its event files gain, for ``tail``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from otel_sparse.analysis.jsonl import BadLines, loads_line
from otel_sparse.analysis.runs import DataFile, data_files
from otel_sparse.layout import EVENT_FILE_RE


class EventFollower:
    """Reads the complete lines that a live run's event files (every rank) gain, for ``tail``.

    Example:
        >>> follower = EventFollower("otel_sparse_runs/<run>")   # doctest: +SKIP
        >>> for data_file, event in follower.poll(): ...          # doctest: +SKIP
    """

    def __init__(
        self, folder: str | os.PathLike[str], last: int | None = None,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        """Args:
            folder: the run folder.
            last: on the first poll, start about this many lines from each file's end
                (None: from the start).
            accept: keep only the records it accepts (``last`` counts those).
        """
        self.folder = os.fspath(folder)
        self._accept = accept
        self._last = last
        self._offsets: dict[str, int] = {}
        self._partial: dict[str, bytes] = {}
        self._bad = BadLines()
        self._started = False

    def poll(self) -> list[tuple[DataFile, dict[str, Any]]]:
        """Events written since the last poll, in timestamp order; a partial last line waits."""
        found: list[tuple[DataFile, dict[str, Any]]] = []
        window = self._last is not None and not self._started  # files there at the start
        for data_file in data_files(self.folder, EVENT_FILE_RE):
            path = data_file.path
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            offset = self._offsets.get(path, 0)
            skip_head = False
            if window and self._last is not None:
                offset = max(0, size - 8192 * max(1, self._last))
                skip_head = offset > 0
            if size < offset:  # truncated or replaced: read it again from the start
                offset = 0
                self._partial.pop(path, None)
            if size == offset:
                self._offsets[path] = offset
                continue
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(size - offset)
            buffer = self._partial.pop(path, b"") + data
            lines = buffer.split(b"\n")
            if skip_head:
                lines = lines[1:]  # started mid-file: the first piece is a line's tail
            rest = lines.pop() if lines else b""
            if rest:
                self._partial[path] = rest
            self._offsets[path] = offset + len(data)
            for line in lines:
                text = line.strip()
                if not text:
                    continue
                try:
                    record = loads_line(text)
                except ValueError:
                    self._bad.add(path, None, truncated=False)
                    continue
                if isinstance(record, dict) and (self._accept is None or self._accept(record)):
                    found.append((data_file, record))
        self._bad.report()
        found.sort(key=lambda item: str(item[1].get("timestamp", "")))
        if window and self._last is not None:
            found = found[-self._last:] if self._last > 0 else []
        self._started = True
        return found


def record_value(record: Mapping[str, Any], key: str) -> Any:
    """A key of one event-file record: its context, else its metadata, else the record's own."""
    for part in ("context", "metadata"):
        values = record.get(part)
        if isinstance(values, dict) and key in values:
            return values[key]
    return record.get(key)


def record_matches(record: Mapping[str, Any], where: Mapping[str, Sequence[str]]) -> bool:
    """Whether one event-file record matches ``where`` (``parse_where``; numbers as numbers)."""
    for key, wanted in where.items():
        value = record_value(record, key)
        text = "" if value is None else str(value)
        if text in wanted:
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers = []
            for item in wanted:
                try:
                    numbers.append(float(item))
                except ValueError:
                    continue
            if float(value) in numbers:
                continue
        return False
    return True


class RunningMeans:
    """Count and mean of the values followed so far, per metric and group: ``tail --by``.

    Watching a live run, the question is how the groups (stage=prefill vs decode, k=8 vs 32)
    differ now, not one event's value: each record updates its group's running mean.

    Example:
        >>> means = RunningMeans(["stage"])
        >>> means.add({"metric": "m", "value": [1.0, 3.0], "context": {"stage": "decode"}})
        ('stage=decode', 2, 2.0)
    """

    def __init__(self, by: Sequence[str]) -> None:
        self.by = list(by)
        self._cells: dict[tuple[str, str], list[float]] = {}  # (metric, group): [count, sum]
        self.keys_seen: set[str] = set()

    def group(self, record: Mapping[str, Any]) -> str:
        """The record's group label, ``key=value`` for each key (``key=-`` where it has none)."""
        parts = []
        for key in self.by:
            value = record_value(record, key)
            if value is not None:
                self.keys_seen.add(key)
            parts.append(f"{key}={'-' if value is None else value}")
        return " ".join(parts)

    def add(self, record: Mapping[str, Any]) -> tuple[str, int, float]:
        """Fold one record in; its group label, the group's value count and running mean."""
        label = self.group(record)
        values = finite_values(record.get("value"))
        cell = self._cells.setdefault((str(record.get("metric")), label), [0, 0.0])
        cell[0] += len(values)
        cell[1] += math.fsum(values)
        count = int(cell[0])
        return label, count, cell[1] / count if count else math.nan


def finite_values(value: Any) -> list[float]:
    """The finite numbers of an event's value: a scalar, a [heads] list or nested lists."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)] if math.isfinite(value) else []
    if isinstance(value, list):
        return [x for item in value for x in finite_values(item)]
    return []
