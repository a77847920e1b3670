"""otel_sparse: sparse-attention-hub's MicroMetricLogger, on OpenTelemetry.

Change one import line and keep every behaviour of the old API::

    from otel_sparse import MicroMetricLogger, LogEvent

The names below are imported on first use (PEP 562), so that importing a light submodule
(``otel_sparse.testing``, a pytest plugin loaded by every test run) costs nothing heavy:
``from otel_sparse import MicroMetricLogger`` imports the facade, numpy and the OTel SDK then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from otel_sparse._version import __version__

if TYPE_CHECKING:
    from otel_sparse._instruments import InstrumentKind
    from otel_sparse.event import LogEvent
    from otel_sparse.facade import MicroMetricLogger
    from otel_sparse.run import end_run, start_run

__all__ = ["InstrumentKind", "LogEvent", "MicroMetricLogger", "__version__", "end_run", "start_run"]

_HOMES = {
    "InstrumentKind": "otel_sparse._instruments",
    "LogEvent": "otel_sparse.event",
    "MicroMetricLogger": "otel_sparse.facade",
    "end_run": "otel_sparse.run",
    "start_run": "otel_sparse.run",
}
"""Where each public name lives; imported on first access, then cached in this module."""


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'otel_sparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
