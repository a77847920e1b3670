"""Runs for the new API: a folder per run under ./otel_sparse_runs, with a manifest.

The old API keeps its own ``log_path``; ``start_run`` is what the CLI and new code use.
"""

from __future__ import annotations

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
from typing import Any

from otel_sparse import config
from otel_sparse._safety import mask_text
from otel_sparse._version import __version__
from otel_sparse.config import Settings
from otel_sparse.facade import MicroMetricLogger
from otel_sparse.resource import ProcessIdentity, start_new_generated_run_id

MANIFEST_NAME = "run.json"


def default_runs_dir() -> str:
    """``OTEL_SPARSE_RUN_DIR``, else ``./otel_sparse_runs``."""
    return os.environ.get(config.OTEL_SPARSE_RUN_DIR, "").strip() or "otel_sparse_runs"


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

    Args:
        run_dir: the run's folder; default ``<OTEL_SPARSE_RUN_DIR or ./otel_sparse_runs>/<run id>``.
        params: what the researcher wants kept with the run (masker configuration, say).
        enabled_metrics: ``"all"`` or identifiers to enable.
        exporters: metric exporters; default from ``OTEL_SPARSE_EXPORTERS``, else ``jsonl``.
        max_records: as in ``configure_logging``.
        sampling_factor: as in ``configure_logging``.

    Example:
        >>> import otel_sparse                                        # doctest: +SKIP
        >>> logger = otel_sparse.start_run(params={"masker": "topk", "k": 32})  # doctest: +SKIP
    """
    run_id = start_new_generated_run_id()
    path = run_dir or os.path.join(default_runs_dir(), run_id)
    logger = MicroMetricLogger()
    metrics: list[str] | str = (
        enabled_metrics if isinstance(enabled_metrics, str) else list(enabled_metrics)
    )
    if exporters is None:  # a new run starts from the environment's choice, not the last run's
        exporters = list(Settings.from_env().exporters) or ["none"]
    logger.configure_logging(path, metrics, max_records=max_records,
                             sampling_factor=sampling_factor, exporters=exporters)
    write_manifest(path, params, started_unix=time.time())
    return logger


def end_run(logger: MicroMetricLogger | None = None) -> None:
    """Flush and close the logger and stamp the manifest's end time."""
    logger = logger or MicroMetricLogger()
    path = logger.log_path
    logger.close()
    if path is not None:
        write_manifest(path, None, end=datetime.now(timezone.utc).isoformat())
