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

from otel_sparse.config import named_run_id, process_rank
from otel_sparse.layout import rank_pid_suffix

_generated_run_id: str | None = None
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
    if named_run_id(environ, warn=False) is None:
        _generated_run_id = new_run_id()
    return resolve_run_id(environ)


def resolve_run_id(environ: Mapping[str, str] | None = None) -> str:
    """The run id the environment names (``config.named_run_id``), else one id generated
    once per process (a lone process; ranks without torchrun should set OTEL_SPARSE_RUN_ID)."""
    global _generated_run_id
    named = named_run_id(environ)
    if named is not None:
        return named
    if _generated_run_id is None:
        _generated_run_id = new_run_id()
    return _generated_run_id


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
        rank, world_size, local_rank = process_rank(env)
        return cls(
            run_id=resolve_run_id(env),
            rank=rank,
            world_size=world_size,
            local_rank=local_rank,
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
        return rank_pid_suffix(self.rank, self.pid)
