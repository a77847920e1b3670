"""Who is logging: run id, rank and process, as OTel resource attributes."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.version import __version__ as _sdk_version

from otel_sparse import config
from otel_sparse._safety import file_name, printable

_generated_run_id: str | None = None
_warned_none_run_id = False
_warned_unsafe_run_ids: set[str] = set()
_logger = logging.getLogger("otel_sparse")
_SDK_ATTRIBUTES = {
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": _sdk_version,
}


def new_run_id() -> str:
    """A sortable, unique run id: ``20261124-235959-1a2b3c``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def start_new_generated_run_id(environ: Mapping[str, str] | None = None) -> str:
    """Begin a new run in this process (a sweep in a notebook, say), unless the environment
    names the run: returns the run id now in force."""
    global _generated_run_id
    env = os.environ if environ is None else environ
    named = env.get(config.OTEL_SPARSE_RUN_ID, "").strip() or (
        env.get(config.TORCHELASTIC_RUN_ID, "").strip() not in ("", "none")
    )
    if not named:
        _generated_run_id = new_run_id()
    return resolve_run_id(env)


def resolve_run_id(environ: Mapping[str, str] | None = None) -> str:
    """OTEL_SPARSE_RUN_ID, else TORCHELASTIC_RUN_ID (same on every torchrun rank), else one id
    generated once per process (a lone process; ranks without torchrun should set the first)."""
    global _generated_run_id, _warned_none_run_id
    env = os.environ if environ is None else environ
    for name in (config.OTEL_SPARSE_RUN_ID, config.TORCHELASTIC_RUN_ID):
        value = env.get(name, "").strip()
        if name == config.TORCHELASTIC_RUN_ID and value == "none":
            # torchrun's placeholder without --rdzv-id: unrelated jobs would share it
            if not _warned_none_run_id:
                _warned_none_run_id = True
                _logger.warning(
                    "otel_sparse: TORCHELASTIC_RUN_ID is 'none' (torchrun without --rdzv-id), "
                    "which every such job shares; using a generated run id per process. Set "
                    "OTEL_SPARSE_RUN_ID (same on every rank) to group this job's ranks."
                )
            continue
        if value:
            return _safe_run_id(name, value)
    if _generated_run_id is None:
        _generated_run_id = new_run_id()
    return _generated_run_id


def _safe_run_id(name: str, value: str) -> str:
    """A run id names the run's folder: path separators and ``..`` never leave the runs folder.

    The same replacement on every rank (not a generated id), so ranks still share one run.
    """
    safe = file_name(value)
    if safe != value and value not in _warned_unsafe_run_ids:
        _warned_unsafe_run_ids.add(value)
        _logger.warning(
            "otel_sparse: %s=%r holds a path separator, '..' or a control character; a run id "
            "names a folder inside the runs folder, so using %r", name, printable(value), safe,
        )
    return safe


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, "").strip() or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class ProcessIdentity:
    """Run, rank and process of the current process, read from the environment once."""

    run_id: str
    rank: int
    world_size: int
    local_rank: int
    pid: int
    instance_id: str
    host_name: str

    @classmethod
    def current(cls, environ: Mapping[str, str] | None = None) -> ProcessIdentity:
        """Read the identity of this process (call again after a fork: pid and id change)."""
        env = os.environ if environ is None else environ
        return cls(
            run_id=resolve_run_id(env),
            rank=_int_env(env, "RANK", 0),
            world_size=_int_env(env, "WORLD_SIZE", 1),
            local_rank=_int_env(env, "LOCAL_RANK", 0),
            pid=os.getpid(),
            instance_id=str(uuid.uuid4()),
            host_name=socket.gethostname(),
        )

    def resource(self) -> Resource:
        """The OTel resource: ours, overridden by OTEL_RESOURCE_ATTRIBUTES/OTEL_SERVICE_NAME."""
        ours: dict[str, str | int] = {
            "service.name": "otel-sparse",
            "service.instance.id": self.instance_id,
            "run.id": self.run_id,
            "rank": self.rank,
            "world.size": self.world_size,
            "local.rank": self.local_rank,
            "host.name": self.host_name,
            "process.pid": self.pid,
        }
        from_env = dict(OTELResourceDetector().detect().attributes)
        if from_env.get("service.name") == "unknown_service":
            del from_env["service.name"]
        # Not Resource.create(): it runs detectors on a thread pool, which fails at exit.
        return Resource({**_SDK_ATTRIBUTES, **ours, **from_env})

    def file_suffix(self, is_fork_child: bool) -> str:
        """'' for rank 0 of a lone process; ``.rank<r>.pid<pid>`` for other ranks and forks."""
        if self.rank == 0 and not is_fork_child:
            return ""
        return f".rank{self.rank}.pid{self.pid}"
