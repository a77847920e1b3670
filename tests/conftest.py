"""Shared fixtures: every test that asks for one gets a fresh ``MicroMetricLogger`` singleton,
and every test fails if the library swallowed one of its own exceptions while it ran.

The reset is the one the contract names (``_instance = None``, ``_initialized = False``,
``_registered_metrics.clear()``), plus ``_metric_specs``. Registrations that existed before the
test (say, made at import time by another test module) are put back afterwards, in the same
dict objects, so the reset never leaks into other files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.pipeline import DropCounter

_PROCESS_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID")
"""Variables that change the event file's name (rank suffix) or the run id."""


def _reset_singleton() -> None:
    MicroMetricLogger._instance = None
    MicroMetricLogger._initialized = False


def _class_dicts() -> list[dict]:
    dicts = [MicroMetricLogger._registered_metrics]
    specs = getattr(MicroMetricLogger, "_metric_specs", None)
    if isinstance(specs, dict):
        dicts.append(specs)
    return dicts


def _live_loggers() -> list[MicroMetricLogger]:
    """Every logger still alive: the singleton and any orphaned by an earlier reset."""
    from otel_sparse import lifecycle

    found = [lg for lg in lifecycle.live_loggers() if isinstance(lg, MicroMetricLogger)]
    current = MicroMetricLogger._instance
    if current is not None and all(current is not lg for lg in found):
        found.append(current)
    return found


def _close_live_loggers() -> None:
    for logger in _live_loggers():
        close = getattr(logger, "close", None) or getattr(logger, "flush", None)
        if close is None:
            continue
        with contextlib.suppress(Exception):  # teardown must not hide the test's outcome
            close()


@pytest.fixture
def fresh_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[MicroMetricLogger]]:
    """The ``MicroMetricLogger`` class, reset: calling it builds a fresh singleton.

    The fixture holds no reference to any instance, so tests can still observe garbage
    collection. ``OTEL_*`` and rank variables are removed for the test (set them again with
    ``monkeypatch`` inside the test when needed). After the test every live logger is closed
    (flushed, threads stopped) and the class state is reset again.
    """
    for name in list(os.environ):
        if name.startswith("OTEL_") or name in _PROCESS_ENV:
            monkeypatch.delenv(name)
    saved = [dict(d) for d in _class_dicts()]
    _reset_singleton()
    for d in _class_dicts():
        d.clear()
    try:
        yield MicroMetricLogger
    finally:
        _close_live_loggers()
        _reset_singleton()
        for d, before in zip(_class_dicts(), saved):  # same length: both from _class_dicts()
            d.clear()
            d.update(before)


INTERNAL_ERROR = "internal_error"
"""The drop reason of an exception the library caught in its own code (log(), the writer)."""


@pytest.fixture(autouse=True)
def _no_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if the library counted an ``internal_error`` drop while it ran.

    log() and the background writer never raise into the caller: they count the exception as
    an ``internal_error`` drop and log one warning. Without this check a bug caught that way
    (every log() from a function dropped on Python 3.10, say) passes every test that does
    not read the file. Every ``DropCounter.add`` of the reason is recorded, on any thread and
    for any logger (even one garbage collected since); after the test every live logger is
    closed, so the writer has finished what it was given, and then the record is checked.
    A test that provokes an internal error on purpose says so with
    ``@pytest.mark.internal_error_expected``.
    """
    if request.node.get_closest_marker("internal_error_expected") is not None:
        yield
        return
    seen: list[str] = []
    original = DropCounter.add

    def recording(self: DropCounter, reason: str, metric: str, n: int = 1,
                  why: str | None = None) -> None:
        if reason == INTERNAL_ERROR:
            seen.append(f"{metric!r} x{n}: {why}")
        original(self, reason, metric, n, why)

    DropCounter.add = recording  # type: ignore[method-assign]
    try:
        yield
        _close_live_loggers()
    finally:
        DropCounter.add = original  # type: ignore[method-assign]
    if seen:
        pytest.fail("otel_sparse counted internal_error drops (an exception it swallowed): "
                    + "; ".join(seen), pytrace=False)
