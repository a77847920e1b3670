"""Reading JSONL files line by line; unreadable lines skipped and reported once."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    pass

_logger = logging.getLogger("otel_sparse.analysis")


@dataclass
class BadLines:
    """Lines skipped while reading, reported in one warning per read."""

    where: list[tuple[str, int | None, bool]] = field(default_factory=list)

    def add(self, path: str, lineno: int | None, truncated: bool) -> None:
        """Remember one skipped line (``truncated``: the last line, without its newline)."""
        self.where.append((path, lineno, truncated))

    def report(self) -> None:
        """Log one warning naming the skipped lines, if any."""
        if not self.where:
            return
        shown = ", ".join(
            f"{path}{'' if lineno is None else f':{lineno}'}"
            f"{' (truncated last line)' if truncated else ''}"
            for path, lineno, truncated in self.where[:5]
        )
        more = f" and {len(self.where) - 5} more" if len(self.where) > 5 else ""
        _logger.warning("otel_sparse: skipped %d unreadable line(s): %s%s",
                        len(self.where), shown, more)
        self.where.clear()


def loads_line(text: bytes) -> Any:
    """One JSON line; NaN and Infinity accepted."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)  # NaN / Infinity, as Python's json writes them


def iter_json_lines(path: str, bad: BadLines) -> Iterator[dict[str, Any]]:
    """Each JSON object of a JSONL file; an unreadable line is skipped and noted in ``bad``."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                record = loads_line(text)
            except ValueError:
                bad.add(path, lineno, truncated=not raw.endswith(b"\n"))
                continue
            if isinstance(record, dict):
                yield record
            else:
                bad.add(path, lineno, truncated=False)
