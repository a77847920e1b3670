"""What the export workers may ask of a ``MetricExporter`` beyond the OTel SDK's interface.

Both are optional: an exporter without them (``ConsoleMetricExporter``, a user's own) is
treated as remote and its failures are reported as "returned FAILURE". Our exporters declare
them by subclassing these protocols, so mypy checks the attributes' types.

Example:
    >>> from opentelemetry.sdk.metrics.export import MetricExporter
    >>> class MyFileExporter(MetricExporter, LocalExporter):  # doctest: +SKIP
    ...     is_local = True
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class LocalExporter(Protocol):
    """An exporter that says whether it writes locally.

    ``flush()`` and ``close()`` wait for local exporters (files: cheap and expected to be
    complete afterwards), never for the network; a local exporter also skips a collection
    that changed nothing since its last successful export.
    """

    is_local: bool


@runtime_checkable
class ExplainsFailure(Protocol):
    """An exporter that says why its last export returned FAILURE (one line, no secrets).

    Read by the export worker for its one warning per outage; None when it has nothing to add.
    """

    last_error: Optional[str]


def is_local(exporter: Any) -> bool:
    """Whether ``exporter`` declares itself local (``LocalExporter``); False if it says nothing."""
    return isinstance(exporter, LocalExporter) and bool(exporter.is_local)


def last_error(exporter: Any) -> str | None:
    """Why ``exporter``'s last export failed (``ExplainsFailure``), or None."""
    return exporter.last_error if isinstance(exporter, ExplainsFailure) else None
