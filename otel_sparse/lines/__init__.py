"""The event-line engine of the background writer: events in, event-file text out.

- ``reference``: the plain encoder, ``encode_event`` (the old ``json.dumps(asdict(event))``),
  and the texts of numbers and tensors every encoder shares.
- ``encoder``: the same lines from pieces (openings, cached heads and tails, numbers).
- ``accept``: the one rule saying which values and metadata a remembered line takes.
- ``cache``: remembered lines, series states and tensor series, under one key scheme.
- ``writer``: the two engines behind one seam, ``PlainLines`` (no cache at all) and
  ``CachedLines`` (the fast path), picked by ``make_lines``.
"""

from __future__ import annotations

from otel_sparse.lines.reference import encode_event
from otel_sparse.lines.writer import CachedLines, LineEngine, PlainLines, make_lines

__all__ = ["CachedLines", "LineEngine", "PlainLines", "encode_event", "make_lines"]
