"""Runs for the new API: a folder per run under ./otel_sparse_runs, with a manifest.

The old API keeps its own ``log_path``; ``start_run`` is what the CLI and new code use. A run
ends exactly once, however it ends: ``end_run()``, the end of a ``with start_run():`` block
(normal or by an exception), or the next ``start_run()`` (a notebook cell run again). Its
queued events are written to its own folder first, and run.json says how it ended.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import platform
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from types import TracebackType
from typing import Any

from otel_sparse._safety import mask_text
from otel_sparse._version import __version__
from otel_sparse.config import Settings, runs_dir
from otel_sparse.facade import MicroMetricLogger
from otel_sparse.layout import MANIFEST_NAME
from otel_sparse.resource import ProcessIdentity, start_new_generated_run_id

FINISHED = "finished"
"""run.json ``status``: ``end_run()``, or a ``with start_run():`` block that ran to its end."""
FAILED = "failed"
"""run.json ``status``: the ``with`` block raised; ``error`` names the exception type."""
SUPERSEDED = "superseded"
"""run.json ``status``: a new ``start_run()`` ended the run (it was never ended otherwise)."""
_STATUS_RANK = {FINISHED: 0, SUPERSEDED: 1, FAILED: 2}
"""The run's status over its ranks is the worst of theirs."""


def default_runs_dir() -> str:
    """``OTEL_SPARSE_RUN_DIR``, else ``./otel_sparse_runs`` (``config.runs_dir``)."""
    return runs_dir()


def _versions() -> dict[str, str]:
    out = {"otel_sparse": __version__, "python": platform.python_version()}
    for dist in ("opentelemetry-sdk", "torch", "numpy"):
        try:
            out[dist] = importlib_metadata.version(dist)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def write_manifest(run_dir: str, params: Mapping[str, Any] | None, **extra: Any) -> str:
    """Write (or update) ``run.json``; returns its path. Each rank writes its own entry."""
    identity = ProcessIdentity.current()
    path = os.path.join(run_dir, MANIFEST_NAME)
    os.makedirs(run_dir, exist_ok=True)
    # Ranks start together: serialise their read-modify-write of the one manifest with a
    # lock on the run folder itself (no stray lock file among the run's files).
    folder = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        return _update_manifest(path, identity, params, extra)
    finally:
        os.close(folder)


def _update_manifest(
    path: str, identity: ProcessIdentity, params: Mapping[str, Any] | None,
    extra: Mapping[str, Any],
) -> str:
    manifest: dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            manifest = {}
    manifest.setdefault("run_id", identity.run_id)
    manifest.setdefault("start", datetime.now(timezone.utc).isoformat())
    manifest.setdefault("host", socket.gethostname())
    manifest["versions"] = _versions()
    manifest["world_size"] = identity.world_size
    if params is not None:
        manifest["params"] = _json_safe(dict(params))
    ranks = manifest.setdefault("ranks", {})
    entry = ranks.setdefault(str(identity.rank), {})
    entry.update(pid=identity.pid, host=identity.host_name, local_rank=identity.local_rank,
                 argv=[mask_text(str(arg)) for arg in sys.argv])  # no endpoint credentials
    extra = dict(extra)
    if "end" in extra:  # each rank stamps its own end; the run's end is the latest
        entry["end"] = extra["end"]
        extra["end"] = max(str(r.get("end", "")) for r in ranks.values())
    if "status" in extra:  # each rank says how it ended; the run, the worst of them
        entry["status"] = extra["status"]
        entry.pop("error", None)
        if extra.get("error"):
            entry["error"] = extra["error"]
        worst = max((r for r in ranks.values() if "status" in r),
                    key=lambda r: _STATUS_RANK.get(str(r["status"]), 0))
        extra["status"] = worst["status"]
        extra["error"] = worst.get("error")
        if extra["error"] is None:
            del extra["error"]
            manifest.pop("error", None)
    manifest.update(_json_safe(extra))
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def start_run(
    run_dir: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    enabled_metrics: Sequence[str] | str = "all",
    exporters: Sequence[str] | None = None,
    max_records: int | None = None,
    sampling_factor: float = 1.0,
) -> MicroMetricLogger:
    """Configure the logger for a new run folder and write its manifest.

    A run this logger still has open is ended first (status ``superseded``): its queued
    events go to its own folder. Used as ``with start_run(...) as logger:``, the block ends
    the run (status ``finished``, or ``failed`` with the exception type in ``error``).

    Args:
        run_dir: the run's folder; default ``<OTEL_SPARSE_RUN_DIR or ./otel_sparse_runs>/<run id>``.
        params: what the researcher wants kept with the run (masker configuration, say).
        enabled_metrics: ``"all"`` or identifiers to enable.
        exporters: metric exporters; default from ``OTEL_SPARSE_EXPORTERS``, else ``jsonl``.
        max_records: as in ``configure_logging``.
        sampling_factor: as in ``configure_logging``.

    Example:
        >>> import otel_sparse                                        # doctest: +SKIP
        >>> with otel_sparse.start_run(params={"k": 32}) as logger:  # doctest: +SKIP
        ...     logger.log("research_attention_density", 0.25, {"layer_idx": 0})
    """
    logger = MicroMetricLogger()
    previous = logger._run
    if previous is not None:
        previous.end(status=SUPERSEDED)
    run_id = start_new_generated_run_id()
    path = run_dir or os.path.join(default_runs_dir(), run_id)
    metrics: list[str] | str = (
        enabled_metrics if isinstance(enabled_metrics, str) else list(enabled_metrics)
    )
    if exporters is None:  # a new run starts from the environment's choice, not the last run's
        exporters = list(Settings.from_env().exporters) or ["none"]
    logger.configure_logging(path, metrics, max_records=max_records,
                             sampling_factor=sampling_factor, exporters=exporters)
    write_manifest(path, params, started_unix=time.time())
    logger._run = _Run(logger, path)
    _watch_exit()
    return logger


class _Run:
    """One open run of one logger: ends once, whichever way comes first."""

    def __init__(self, logger: MicroMetricLogger, path: str) -> None:
        self.logger = logger
        self.path = path
        self.ended = False
        self.pid = os.getpid()  # a forked child never ends its parent's run
        _open_runs.append(self)

    def end(
        self, exc_type: type[BaseException] | None = None, *, status: str | None = None
    ) -> None:
        """Write the queued events to this run's folder, close, stamp end time and status."""
        if self.ended:
            return
        self.ended = True
        if self in _open_runs:
            _open_runs.remove(self)
        logger = self.logger
        if logger._run is self:
            logger._run = None
            logger.clear_context()  # step/stage of this run are not the next run's
        logger.close()
        if status is None:
            status = FINISHED if exc_type is None else FAILED
        error = exc_type.__name__ if exc_type is not None else None
        write_manifest(self.path, None, end=datetime.now(timezone.utc).isoformat(),
                       status=status, error=error)


_open_runs: list[_Run] = []
"""Runs started and not yet ended; the interpreter's exit ends them."""
_uncaught: list[type[BaseException]] = []
"""The type of the exception that ended the main program, if one did (``sys.excepthook``)."""
_previous_excepthook: Any = None


def _note_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    _uncaught.append(exc_type)
    (_previous_excepthook or sys.__excepthook__)(exc_type, exc, tb)


def _watch_exit() -> None:
    """Once: at exit, end every open run (``failed`` after an uncaught exception, else
    ``finished``), so a script that never calls ``end_run()`` still gets its end in run.json.

    Registered after the lifecycle's own exit hook, so it runs first (atexit is LIFO): the
    run's events are written by its ``close()`` before the manifest is stamped.
    """
    global _previous_excepthook
    if _previous_excepthook is not None:
        return
    _previous_excepthook = sys.excepthook
    sys.excepthook = _note_uncaught
    atexit.register(_end_open_runs)


def _end_open_runs() -> None:
    failed = _uncaught[-1] if _uncaught else None
    for run in _open_runs[:]:  # end() removes each from the list
        if run.pid != os.getpid():
            continue
        try:
            run.end(failed)
        except Exception:  # never raise at exit; the lifecycle hook still closes the logger
            import logging

            logging.getLogger("otel_sparse").exception("otel_sparse: ending run %s at exit",
                                                       run.path)


def end_run(logger: MicroMetricLogger | None = None) -> None:
    """End the open run (status ``finished``): flush, close, stamp the manifest's end time.

    On a logger configured without ``start_run`` (``MicroMetricLogger(log_path=...)``), it
    closes the logger and writes run.json in its folder.
    """
    logger = logger or MicroMetricLogger()
    run = logger._run
    if run is not None:
        run.end()
        return
    path = logger.log_path
    logger.close()
    if path is not None:
        write_manifest(path, None, end=datetime.now(timezone.utc).isoformat(), status=FINISHED)
