"""The ``otel_sparse_capture`` fixture; ``otel_sparse.testing.pytest_configure`` registers it.

Imports pytest (already loaded where this runs) and nothing else heavy: the logger, numpy and
the OTel SDK are imported when a test asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_sparse.testing import MetricCapture, capture_logger


@pytest.fixture
def otel_sparse_capture(tmp_path: Path) -> Iterator[MetricCapture]:
    """A fresh ``MicroMetricLogger`` singleton (every metric enabled) writing to
    ``tmp_path/otel_sparse`` and to an in-memory sink; the previous singleton and the
    registrations are restored after the test. See ``otel_sparse.testing.MetricCapture``."""
    yield from capture_logger(str(tmp_path / "otel_sparse"))
