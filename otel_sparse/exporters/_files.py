"""Crash-safe append-only line files, shared by every file exporter.

Several writers may append to one file: processes started without RANK (plain
``multiprocessing``, ``torch.multiprocessing.spawn``) all write ``micro_metrics.jsonl``, and
two loggers of one process can point at the same folder. Every byte-changing operation (the
append, the repair of a torn tail, the cut back after a failed write) therefore happens under
an exclusive ``flock`` on the file itself, taken by every otel_sparse writer, so no writer
ever cuts bytes another one is still writing. ``flock`` locks belong to an open file, so two
loggers of one process exclude each other as two processes do.

A ``kill -9`` can cut a line anywhere (the kernel stops a large ``write`` between pages). The
next append, by this process or any other, finds the partial tail under the lock and cuts it
back to the last newline, however long the fragment is, so no event is glued onto it.

Where ``flock`` does not work (some network file systems answer ENOLCK or EOPNOTSUPP), one
warning says so and the writer appends without the lock, never repairing or cutting anything:
a torn tail then stays in the file as one unparseable line.

Log files are opened with ``O_NOFOLLOW`` and must be regular files: a symlink or a pipe
planted where a log file goes is refused (``OSError``), never written through.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Callable

_flock: Callable[[int, int], None] | None
try:
    import fcntl

    _flock, _LOCK_EX, _LOCK_UN = fcntl.flock, fcntl.LOCK_EX, fcntl.LOCK_UN
except ImportError:  # not POSIX: no cross-process lock (documented in docs/faults.md)
    _flock, _LOCK_EX, _LOCK_UN = None, 0, 0

_logger = logging.getLogger("otel_sparse")

_CHUNK = 1 << 20  # bytes per write(): large enough to be cheap, small enough to be whole
_SCAN = 1 << 20  # bytes read per step while looking back for the last newline
_recreated: set[str] = set()  # folders found deleted and created again (warned once each)
_unlocked: set[str] = set()  # files whose file system refused flock (warned once each)
_NO_LOCK_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ENOLCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "EINVAL")
    if hasattr(errno, name)
)
_open_fds: set[int] = set()
"""Descriptors AppendOnlyFile has open (and maybe locked) now. A fork copies them into the
child, where no thread will ever close them; an flock belongs to the open file that both
copies share, so a parent killed while holding it would leave the lock held until the last
child exits, hanging every other writer. The child closes its copies at once."""
_fds_lock = threading.Lock()
"""Held while a descriptor is opened and registered, or unregistered and closed, and across
a fork: the child never copies a descriptor the set does not know."""


def _before_fork() -> None:
    _fds_lock.acquire()


def _after_fork_in_parent() -> None:
    _fds_lock.release()


def _after_fork_in_child() -> None:
    global _fds_lock
    for fd in _open_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _open_fds.clear()
    _fds_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)


def _open_registered(path: str, flags: int) -> int:
    with _fds_lock:
        fd = os.open(path, flags, 0o666)  # the user's umask applies
        _open_fds.add(fd)
    return fd


def _close_registered(fd: int) -> None:
    with _fds_lock:
        _open_fds.discard(fd)
        os.close(fd)


def _lock(fd: int, path: str) -> bool:
    """Take the file's exclusive lock; False (warned once) where the file system has none."""
    if _flock is None:
        return False
    try:
        _flock(fd, _LOCK_EX)
    except OSError as exc:
        if exc.errno not in _NO_LOCK_ERRNOS:
            raise
        if path not in _unlocked:
            _unlocked.add(path)
            _logger.warning(
                "otel_sparse: %s: the file system refuses file locks (%s); appending without "
                "one, so processes sharing this file may leave a torn line after a crash "
                "(give each process its own file: set RANK, or use separate folders)",
                path, exc,
            )
        return False
    return True


def _unlock(fd: int) -> None:
    # closing the descriptor would release the lock too, but only once no forked copy of it
    # is left: unlock explicitly
    if _flock is not None:
        with contextlib.suppress(OSError):
            _flock(fd, _LOCK_UN)


def _last_newline_end(fd: int, size: int) -> int:
    """The length of the file's whole lines: just past its last newline (0 if none)."""
    end = size
    while end > 0:
        start = max(0, end - _SCAN)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0


def _repair_torn_tail(fd: int, path: str) -> None:
    """Cut a partial last line (of any length) back to the last newline. Call under the lock."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    keep = _last_newline_end(fd, size)
    os.ftruncate(fd, keep)
    _logger.warning(
        "otel_sparse: %s ended in a partial line (%d bytes), probably from a crash or a full "
        "disk; removed it", path, size - keep,
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
        self._opened = False

    def _open(self) -> int:
        flags = (os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_NOFOLLOW", 0))
        try:
            fd = self._open_regular(flags)
        except FileNotFoundError:
            folder = os.path.dirname(self.path) or "."
            if self._opened and folder not in _recreated:  # deleted mid-run: say so once
                _recreated.add(folder)
                _logger.warning(
                    "otel_sparse: folder %s disappeared during the run; creating it again "
                    "(lines written before are gone with it)", folder,
                )
            os.makedirs(folder, exist_ok=True)
            fd = self._open_regular(flags)
        self._opened = True
        return fd

    def _open_regular(self, flags: int) -> int:
        """Open the file itself: never through a symlink, never anything but a regular file."""
        try:
            fd = _open_registered(self.path, flags)
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(self.path):
                raise OSError(
                    errno.ELOOP, f"{self.path} is a symbolic link; otel_sparse does not write "
                    "through links (remove it, or log to another folder)",
                ) from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            _close_registered(fd)
            raise OSError(errno.EINVAL, f"{self.path} is not a regular file; otel_sparse "
                                        "writes only to regular files (remove it)")
        return fd

    def append_lines(self, lines: list[bytes]) -> None:
        """Append lines (without newlines); raises OSError if the disk refuses them."""
        if lines:
            self.append_text(b"\n".join(lines) + b"\n")

    def append_text(self, data: bytes) -> None:
        """Append whole lines, each ending in a newline, all or none.

        Raises OSError if the disk refuses them; the file is then cut back to where it was
        (under the lock: nobody else's bytes are there).
        """
        if not data:
            return
        fd = self._open()
        try:
            locked = _lock(fd, self.path)
            start = 0
            try:
                if locked:
                    _repair_torn_tail(fd, self.path)
                    start = os.fstat(fd).st_size
                try:
                    _write_chunks(fd, data)
                except OSError:
                    if locked:
                        with contextlib.suppress(OSError):  # else the next append repairs it
                            os.ftruncate(fd, start)
                    raise
            finally:
                if locked:
                    _unlock(fd)
        finally:
            _close_registered(fd)


def _write_chunks(fd: int, data: bytes) -> None:
    """Write every byte, in chunks cut after a newline (a longer line goes whole)."""
    view = memoryview(data)
    start = 0
    while start < len(data):
        end = start + _CHUNK
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            if cut < 0:
                cut = data.find(b"\n", end)
            end = len(data) if cut < 0 else cut + 1
        _write_all(fd, view[start:end])
        start = end


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write returned 0")
        view = view[written:]
