"""Helpers for researchers' own tests: an in-memory metric sink, a pytest fixture, a sync guard.

Installing otel-sparse adds a pytest plugin (entry point ``pytest11``, this module): the
fixture ``otel_sparse_capture`` gives each test a fresh ``MicroMetricLogger`` singleton that
writes to the test's own folder and to an ``InMemoryMetricExporter``, and puts the previous
singleton and registrations back afterwards (see ``MetricCapture``). Importing this module
imports nothing heavy (no numpy, OTel SDK or torch) until a helper is used.

Example:
    >>> from otel_sparse import MicroMetricLogger
    >>> from otel_sparse.testing import InMemoryMetricExporter
    >>> sink = InMemoryMetricExporter()
    >>> MicroMetricLogger.register_metric("density", float)
    >>> logger = MicroMetricLogger(log_path="/tmp/x", enabled_metrics="all",
    ...                            exporters=[sink])                  # doctest: +SKIP
    >>> logger.log("density", 0.5, {"layer_idx": 0}); logger.flush()  # doctest: +SKIP
    >>> sink.histogram("sparse_attention.density", layer=0).sum       # doctest: +SKIP
    0.5
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_sparse._memory_sink import InMemoryMetricExporter
    from otel_sparse.facade import MicroMetricLogger

__all__ = ["HostSyncError", "InMemoryMetricExporter", "MetricCapture", "forbid_host_reads"]


def __getattr__(name: str) -> Any:
    if name == "InMemoryMetricExporter":  # imports the OTel SDK: only when asked for
        from otel_sparse._memory_sink import InMemoryMetricExporter

        globals()[name] = InMemoryMetricExporter
        return InMemoryMetricExporter
    raise AttributeError(f"module 'otel_sparse.testing' has no attribute {name!r}")


class MetricCapture:
    """A fresh logger writing to ``path`` and to ``sink``; what the ``otel_sparse_capture``
    fixture gives each test.

    Every metric is enabled (``"all"``, registered before or during the test), so code under
    test that calls ``MicroMetricLogger().log(...)`` records into this capture.

    Example:
        >>> def test_density_is_logged(otel_sparse_capture):          # doctest: +SKIP
        ...     MicroMetricLogger.register_metric("density", float)
        ...     MicroMetricLogger().log("density", 0.5, {"layer_idx": 0})
        ...     assert otel_sparse_capture.histogram("density", layer=0).sum == 0.5
        ...     assert [e["value"] for e in otel_sparse_capture.events()] == [0.5]
    """

    def __init__(self, path: str) -> None:
        from otel_sparse._memory_sink import InMemoryMetricExporter
        from otel_sparse.facade import MicroMetricLogger

        self.path = path
        self.sink = InMemoryMetricExporter()
        self.logger: MicroMetricLogger = MicroMetricLogger(
            log_path=path, enabled_metrics="all", exporters=["jsonl", self.sink])

    def events(self) -> list[dict[str, Any]]:
        """Flush, then every line of the event file(s) (``micro_metrics.jsonl``), parsed."""
        from otel_sparse.layout import EVENT_FILE_RE

        self.logger.flush()
        found: list[dict[str, Any]] = []
        for name in sorted(os.listdir(self.path)):
            if EVENT_FILE_RE.match(name):
                with open(os.path.join(self.path, name), encoding="utf-8") as f:
                    found.extend(json.loads(line) for line in f if line.strip())
        return found

    def histogram(self, identifier: str, /, **attributes: Any) -> Any:
        """Flush, then the histogram point of ``identifier`` with ``attributes`` (else KeyError)."""
        self.logger.flush()
        return self.sink.histogram(self._instrument(identifier), **attributes)

    def value(self, identifier: str, /, **attributes: Any) -> float:
        """Flush, then the counter/gauge value of ``identifier`` with ``attributes``."""
        self.logger.flush()
        return self.sink.value(self._instrument(identifier), **attributes)

    def _instrument(self, identifier: str) -> str:
        from otel_sparse._instruments import instrument_name
        from otel_sparse.config import Settings

        return instrument_name(Settings.from_env().namespace, identifier)


def capture_logger(path: str) -> Iterator[MetricCapture]:
    """The fixture's body: a fresh singleton for the block, the previous one put back after.

    Registrations made during the block are undone too; those made before (at import time
    of the code under test, say) stay visible inside it.
    """
    from otel_sparse.facade import MicroMetricLogger

    cls = MicroMetricLogger
    saved = (cls._instance, cls._initialized, dict(cls._registered_metrics),
             dict(cls._metric_specs))
    cls._instance, cls._initialized = None, False
    capture = MetricCapture(path)
    try:
        yield capture
    finally:
        try:
            capture.logger.close()
        finally:
            cls._instance, cls._initialized = saved[0], saved[1]
            cls._registered_metrics.clear()  # the same dict objects: others may hold them
            cls._registered_metrics.update(saved[2])
            cls._metric_specs.clear()
            cls._metric_specs.update(saved[3])


def pytest_configure(config: Any) -> None:
    """pytest plugin hook (entry point ``pytest11``): adds the ``otel_sparse_capture`` fixture."""
    import otel_sparse._pytest_fixture as fixtures

    if not config.pluginmanager.is_registered(fixtures):
        config.pluginmanager.register(fixtures, "otel_sparse.fixture")


class HostSyncError(AssertionError):
    """A tensor was read back to the host inside ``forbid_host_reads()``."""


def forbid_host_reads() -> Any:
    """A torch function mode that fails on every tensor read back to the host.

    ``.item()``, ``.tolist()``, ``float()``, ``int()``, ``bool()``, ``operator.index``,
    ``.cpu()`` and ``.numpy()`` of a tensor raise ``HostSyncError``: on a GPU each would
    synchronise. Proves, on a CPU-only machine, that code such as ``log()`` never forces a
    sync. Imports torch when called.

    Example:
        >>> with forbid_host_reads():                            # doctest: +SKIP
        ...     logger.log("density", per_head, {"layer_idx": 0})
    """
    import torch
    from torch.overrides import TorchFunctionMode

    host_reads = {
        torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
        torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy,
    }

    class ForbidHostReads(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
        ) -> Any:
            if func in host_reads:
                raise HostSyncError(f"a tensor was read back to the host via {func.__name__}")
            return func(*args, **(kwargs or {}))

    return ForbidHostReads()
