"""The event file of the old API: ``micro_metrics.jsonl``, one ``LogEvent`` a line.

Lines are byte-for-byte what sparse-attention-hub wrote (``json.dumps`` of the event with
its timestamp in ``isoformat()``), so every existing parser, grep included, keeps working.
They are built by the line engine (``otel_sparse.lines``); this module only puts them in
the file.
"""

from __future__ import annotations

from otel_sparse.exporters._files import AppendOnlyFile


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
