"""otel_sparse: sparse-attention-hub's MicroMetricLogger, on OpenTelemetry.

Change one import line and keep every behaviour of the old API::

    from otel_sparse import MicroMetricLogger, LogEvent
"""

from otel_sparse._instruments import InstrumentKind
from otel_sparse._version import __version__
from otel_sparse.event import LogEvent
from otel_sparse.facade import MicroMetricLogger
from otel_sparse.run import end_run, start_run

__all__ = ["InstrumentKind", "LogEvent", "MicroMetricLogger", "__version__", "end_run", "start_run"]
