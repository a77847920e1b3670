"""Crash-safe append-only line files, shared by every file exporter.

Each batch of lines goes out in whole-line ``os.write`` calls on an ``O_APPEND`` descriptor, so
a ``kill -9`` can cut a batch between lines but never inside one. A torn tail left by
anything else (a full disk mid-write, another tool) is cut back to the last newline the
first time this process opens the file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os

_logger = logging.getLogger("otel_sparse")

_CHUNK = 1 << 20  # bytes per write(): large enough to be cheap, small enough to be whole
_recreated: set[str] = set()  # folders found deleted and created again (warned once each)


def _repair_torn_tail(fd: int, path: str) -> None:
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    window = min(size, 1 << 16)
    cut = os.pread(fd, window, size - window).rfind(b"\n")
    if cut < 0 and window < size:
        return  # a line longer than 64 KiB: leave it rather than guess where it began
    keep = 0 if cut < 0 else size - window + cut + 1
    os.ftruncate(fd, keep)
    _logger.warning(
        "otel_sparse: %s ended in a partial line (%d bytes), probably from a crash; removed it",
        path, size - keep,
    )


class AppendOnlyFile:
    """One JSONL file, opened per batch (so a deleted or remounted folder is picked up again).

    Example:
        >>> import tempfile, os
        >>> f = AppendOnlyFile(os.path.join(tempfile.mkdtemp(), "x.jsonl"))
        >>> f.append_lines([b'{"a": 1}'])
        >>> open(f.path).read()
        '{"a": 1}\\n'
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._checked_tail = False
        self._opened = False

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)  # the user's umask applies
        except FileNotFoundError:
            folder = os.path.dirname(self.path) or "."
            if self._opened and folder not in _recreated:  # deleted mid-run: say so once
                _recreated.add(folder)
                _logger.warning(
                    "otel_sparse: folder %s disappeared during the run; creating it again "
                    "(lines written before are gone with it)", folder,
                )
            os.makedirs(folder, exist_ok=True)
            fd = os.open(self.path, flags, 0o666)
        self._opened = True
        return fd

    def append_lines(self, lines: list[bytes]) -> None:
        """Append lines (without newlines); raises OSError if the disk refuses them."""
        if lines:
            self.append_text(b"\n".join(lines) + b"\n")

    def append_text(self, data: bytes) -> None:
        """Append whole lines, each ending in a newline; raises OSError if the disk refuses them."""
        if not data:
            return
        fd = self._open()
        try:
            if not self._checked_tail:
                _repair_torn_tail(fd, self.path)
                self._checked_tail = True
            view = memoryview(data)
            start = 0
            while start < len(data):
                end = start + _CHUNK
                if end < len(data):  # cut after the chunk's last newline (a longer line: whole)
                    cut = data.rfind(b"\n", start, end)
                    if cut < 0:
                        cut = data.find(b"\n", end)
                    end = len(data) if cut < 0 else cut + 1
                _write_all(fd, view[start:end])
                start = end
        except OSError:
            self._checked_tail = False
            raise
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte, or cut the file back to where it was and raise (disk full, say)."""
    start = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "write returned 0")
            view = view[written:]
    except OSError:
        if len(view) != len(data):
            with contextlib.suppress(OSError):  # if not, the next open repairs the tail
                os.ftruncate(fd, start)
        raise
