"""Checks of the arguments researchers pass to ``MicroMetricLogger``, made at configuration.

Each check either returns the value to use or raises at configuration time; odd values that
the old API tolerated log a warning and take their default (docs/bad-input.md). Nothing here
runs inside ``log()``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from opentelemetry.sdk.metrics.export import MetricExporter

from otel_sparse.config import parse_exporters

_logger = logging.getLogger("otel_sparse")


class ExporterChoice(NamedTuple):
    """Exporters chosen in code: names resolved by the pipeline, plus ready instances."""

    names: tuple[str, ...]
    instances: tuple[MetricExporter, ...]

    @classmethod
    def parse(cls, exporters: Sequence[str | MetricExporter] | None) -> ExporterChoice | None:
        """Validate at configuration time; raises ValueError for unknown names."""
        if exporters is None:
            return None
        if isinstance(exporters, (str, MetricExporter)):
            exporters = [exporters]
        names = [e for e in exporters if isinstance(e, str)]
        instances = tuple(e for e in exporters if isinstance(e, MetricExporter))
        odd = [e for e in exporters if not isinstance(e, (str, MetricExporter))]
        if odd:
            raise TypeError(f"exporters must be names or MetricExporter instances, got {odd!r}")
        return cls(parse_exporters(",".join(names)) if names else (), instances)


def clamp_sampling(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        _logger.warning("otel_sparse: sampling_factor=%r is not a number; using 1.0", value)
        return 1.0
    if number != number:
        _logger.warning("otel_sparse: sampling_factor is NaN; using 1.0")
        return 1.0
    return max(0.0, min(1.0, number))


def check_max_records(value: Any) -> Any:
    """``max_records`` as given if it is None or a number; raises (at configuration) if not."""
    if value is None:
        return None
    if not isinstance(value, numbers.Real):
        raise TypeError(f"max_records must be None or a number of events, got {value!r}")
    if value != value:
        raise ValueError("max_records must be None or a number of events, got NaN")
    if value < 0:
        _logger.warning("otel_sparse: max_records=%r is negative: no event will be recorded",
                        value)
    return value


def check_interval(value: Any) -> Any:
    """``flush_interval`` as given if it is a number; else a warning and the default, 60.0."""
    if isinstance(value, numbers.Real) and value == value:
        return value
    _logger.warning("otel_sparse: flush_interval=%r is not a number; using 60.0", value)
    return 60.0


def describe(value: Any) -> str:
    """A short description of a value for a warning; never raises."""
    try:
        text = repr(value)
    except Exception:
        text = "?"
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(value).__name__} {text}"


def stable_order(identifiers: Iterable[Any]) -> list[Any]:
    """Identifiers sorted by repr (set order differs between processes), as given if not."""
    try:
        return sorted(identifiers, key=repr)
    except Exception:
        return list(identifiers)


def hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True
