"""``MicroMetricLogger``: sparse-attention-hub's API, with OpenTelemetry underneath.

The hot path lives here and only here. ``log()`` checks, stamps and appends one ``LogEvent``
under a lock; it does no I/O, no JSON, no OTel SDK call and no GPU synchronisation. Full
batches go to the background ``Pipeline`` in O(1); everything else (event file, aggregation,
OTel data model, exporters) happens there.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing.util
import numbers
import os
import random
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import CodeType, FrameType
from typing import Any, ClassVar, NamedTuple

from opentelemetry.sdk.metrics.export import MetricExporter

from otel_sparse._instruments import (
    DEFAULT_TIMER_BOUNDARIES,
    InstrumentKind,
    MetricSpec,
    make_spec,
)
from otel_sparse._safety import printable
from otel_sparse._values import Refusal, capture, captures_by_type
from otel_sparse.config import Settings, parse_exporters, sigterm_handler_enabled
from otel_sparse.event import LogEvent
from otel_sparse.pipeline import DropCounter, Pipeline

_logger = logging.getLogger("otel_sparse")

QUEUE_MAXLEN = 10000
"""``log_queue.maxlen``, as in the old API; a batch is handed over before it could overflow."""
_HANDOFF_HEADROOM = 256
"""Room left in the queue above the hand-off size: between one thread's length check and
its swap, each other thread may still append one event, and a full deque would silently
drop the oldest. ``flush_every`` above ``QUEUE_MAXLEN - 256`` hands over at that size."""

_now = datetime.now
_getframe = sys._getframe
_live_loggers: weakref.WeakSet[MicroMetricLogger] = weakref.WeakSet()


def _new_queue() -> deque[LogEvent]:
    return deque(maxlen=QUEUE_MAXLEN)


class _SingletonMeta(type):
    """Makes ``MicroMetricLogger()`` with no arguments one attribute check, not __new__+__init__.

    Researchers call ``MicroMetricLogger().log(...)`` inside attention layers, so the
    constructor call is part of the hot path.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = cls.__dict__.get("_instance")
        if instance is not None and not args and not kwargs and cls.__dict__["_initialized"]:
            return instance
        return super().__call__(*args, **kwargs)


class MicroMetricLogger(metaclass=_SingletonMeta):
    """Singleton logger for micro metrics; a drop-in for sparse_attention_hub's.

    Example:
        >>> from otel_sparse import MicroMetricLogger
        >>> MicroMetricLogger.register_metric("research_attention_density", float)
        >>> logger = MicroMetricLogger(log_path="/tmp/run", enabled_metrics="all")  # doctest: +SKIP
        >>> logger.log("research_attention_density", 0.25, {"layer_idx": 3})  # doctest: +SKIP
    """

    _instance: ClassVar[MicroMetricLogger | None] = None
    _initialized: ClassVar[bool] = False
    _registered_metrics: ClassVar[dict[str, type]] = {}
    _metric_specs: ClassVar[dict[str, MetricSpec]] = {}
    """Registration options beyond the dtype; consulted only while the dtype still matches."""

    def __new__(cls, *args: Any, **kwargs: Any) -> MicroMetricLogger:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __init__(
        self,
        log_path: str | None = None,
        flush_every: int = 1000,
        flush_interval: float = 60.0,
        enabled_metrics: list[str] | set[str] | str | None = None,
        max_records: int | None = None,
        sampling_factor: float = 1.0,
        *,
        exporters: Sequence[str | MetricExporter] | None = None,
    ) -> None:
        """Args:
            log_path: folder of ``micro_metrics.jsonl`` (and ``metrics.jsonl``); None: no logging.
            flush_every: queued events that trigger a hand-off to the background writer.
            flush_interval: kept for compatibility; events wait at most
                ``min(flush_interval, OTEL_SPARSE_WRITE_DELAY)`` seconds before being written.
            enabled_metrics: ``"all"`` or a list/set of registered identifiers.
            max_records: stop recording after this many events (None: no limit).
            sampling_factor: probability of keeping each event, clamped to [0, 1].
            exporters: metric exporters: names (``jsonl``, ``otlp``, ``otlp_file``,
                ``console``) and/or ``MetricExporter`` instances; default from
                ``OTEL_SPARSE_EXPORTERS``, else ``jsonl``.

        Raises:
            TypeError, ValueError: ``max_records`` that is neither None nor a number. Other
                odd arguments log a warning and take their default (docs/bad-input.md).
        """
        if MicroMetricLogger._initialized and getattr(self, "_ready", False):
            if self.log_path and log_path and self.log_path != log_path:
                print(
                    f"Warning: MicroMetricLogger already initialized with log_path: {self.log_path}"
                )
            return
        try:
            max_records = _check_max_records(max_records)
        except (TypeError, ValueError):
            if not getattr(self, "_ready", False):
                type(self)._instance = None  # leave no half-built singleton behind
            raise
        pipeline: Pipeline | None = getattr(self, "_pipeline", None)
        if pipeline is not None:  # _initialized was reset on a live instance: start over
            pipeline.close()
        self._lock = threading.Lock()
        # Never the global generator: the researcher's random stream stays theirs.
        self._rng = random.Random()
        self._warned: set[tuple[str, Any]] = set()
        self._drops = DropCounter()
        self._locations: dict[CodeType, str] = {}
        self._context: EventContext | None = None
        self._pipeline: Pipeline | None = None
        self._exporters = _ExporterChoice.parse(exporters)
        self._seq = itertools.count()
        self._capped_now = False
        self._is_fork_child = False
        self.flush_every = flush_every
        self.flush_interval = _check_interval(flush_interval)
        self.log_queue: deque[LogEvent] = _new_queue()
        self.enabled_metrics = set()
        self.last_flush_time = time.time()
        self.max_records = max_records
        self.sampling_factor = _clamp_sampling(sampling_factor)
        self._log_path: str | None = None
        self._ready = True
        _live_loggers.add(self)
        if log_path is not None:
            self.log_path = log_path
            self.enable_metrics(enabled_metrics)
        MicroMetricLogger._initialized = True

    # -- registration (class level, usable before any instance exists) ------------------

    @classmethod
    def register_metric(
        cls,
        identifier: str,
        dtype: type,
        *,
        kind: InstrumentKind | str | None = None,
        unit: str = "1",
        description: str = "",
        boundaries: Sequence[float] | None = None,
        attributes: Sequence[str] = (),
    ) -> None:
        """Register an identifier and its dtype; keywords describe its OTel instrument.

        Args:
            identifier: the name researchers log under.
            dtype: ``float``/``int`` become histograms; ``str`` and others stay in the event file.
            kind: ``histogram``, ``counter``, ``up_down_counter``, ``gauge`` or ``events_only``.
            unit: UCUM unit, ``"1"`` for ratios, ``"s"`` for seconds.
            description: shown by backends next to the metric.
            boundaries: histogram bucket bounds (default: fine-grained over [0, 1]).
            attributes: metadata keys, beyond layer/head, that become attributes.

        Raises:
            ValueError: options that cannot describe an instrument (at registration, never
                later inside ``log()``).
        """
        if not _hashable(identifier):
            raise TypeError(
                f"metric identifiers must be strings, got unhashable {type(identifier).__name__}"
            )
        spec = make_spec(identifier, dtype, kind=kind, unit=unit, description=description,
                         boundaries=boundaries, attributes=attributes)
        if identifier in cls._registered_metrics:
            print(f"Warning: Metric '{printable(str(identifier))}' is being re-registered")
        cls._registered_metrics[identifier] = dtype
        cls._metric_specs[identifier] = spec
        pipeline = cls._instance._pipeline if cls._instance is not None else None
        if pipeline is not None and identifier in pipeline.specs:
            pipeline.enable(spec)

    @classmethod
    def get_registered_metrics(cls) -> dict[str, type]:
        """A copy of the identifier -> dtype mapping."""
        return cls._registered_metrics.copy()

    @classmethod
    def _spec_for(cls, identifier: str) -> MetricSpec | None:
        dtype = cls._registered_metrics.get(identifier)
        if dtype is None:
            return None
        spec = cls._metric_specs.get(identifier)
        if spec is None or spec.dtype is not dtype:
            spec = make_spec(identifier, dtype)
        return spec

    # -- enabling ------------------------------------------------------------------------

    @property
    def enabled_metrics(self) -> set[str]:
        """The identifiers ``log()`` records (a plain set, as in the old API)."""
        return self._enabled

    @enabled_metrics.setter
    def enabled_metrics(self, metrics: set[str]) -> None:
        self._enabled = metrics
        # A bound C method: the disabled check costs an attribute load and a set lookup.
        self.is_metric_enabled = metrics.__contains__  # type: ignore[method-assign,assignment]
        self._sync_specs()

    def enable_metrics(self, metrics: list[str] | set[str] | str | None = None) -> None:
        """Enable ``"all"`` registered metrics, or those of a list/set; None enables nothing."""
        registered = self._registered_metrics
        if isinstance(metrics, str) and metrics == "all":
            self.enabled_metrics = set(registered)
        elif isinstance(metrics, (list, set)):
            try:
                wanted = set(metrics)
            except TypeError:
                wanted = {m for m in metrics if _hashable(m)}
                _logger.warning("otel_sparse: enable_metrics ignored unhashable entries")
            invalid = wanted - set(registered)
            if invalid:
                print(f"Warning: Attempting to enable unregistered metrics: {invalid}")
            self.enabled_metrics = wanted & set(registered)
        else:
            if metrics is not None:  # the old API enables nothing here; say so, once a call
                _logger.warning(
                    "otel_sparse: enable_metrics expects 'all', a list or a set of identifiers, "
                    "got %s; no metric is enabled", _describe(metrics),
                )
            self.enabled_metrics = set()

    def is_metric_enabled(self, identifier: str) -> bool:
        """Whether ``identifier`` is enabled (rebound per instance to the set's lookup)."""
        return identifier in self._enabled

    def get_enabled_metrics(self) -> set[str]:
        """A copy of the enabled identifiers."""
        return self._enabled.copy()

    def _sync_specs(self) -> None:
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is None:
            return
        for identifier in _stable_order(self._enabled):
            spec = self._spec_for(identifier)
            if spec is not None:
                pipeline.enable(spec)

    # -- logging: the hot path -----------------------------------------------------------

    def log(
        self,
        identifier: str,
        value: Any,
        metadata: dict[str, Any] | None = None,
        *,
        _location: str | None = None,
    ) -> None:
        """Record one value. Cost: a set lookup, a frame lookup, one LogEvent and an append.

        Takes no lock: the record count is an ``itertools.count`` and the append is one
        deque operation, both atomic. Tensors are cloned on their own device (never read
        back to the host here); host copies happen in the background writer, batched.
        """
        try:
            if identifier not in self._enabled or self._log_path is None:
                self._not_logged(identifier)
                return
            limit = self.max_records
            if limit is not None and self._capped(identifier):
                return
            sampling = self.sampling_factor
            if sampling < 1.0 and self._rng.random() >= sampling:
                self._drops.add("sampling", identifier,
                                why=f"sampling_factor={sampling} keeps a random share of events")
                return
            tp = type(value)
            if tp is not float and tp is not int and value is not None:
                # the type's capture function straight from its cache: one call, not two
                value = (captures_by_type.get(tp) or capture)(value, metadata)
                if type(value) is Refusal:
                    self._drops.add(value.code, identifier, why=value.why)
                    return
            location = _location
            if location is None:
                frame = _getframe(1)
                location = self._locations.get(frame.f_code)
                if location is None:
                    location = self._locate(frame)
            event = LogEvent(_now(), identifier, value, metadata or {}, location)
            if self._context is not None:
                event.context = self._context  # type: ignore[attr-defined]  # see event.py
            taken = next(self._seq)
            if limit is not None and taken >= limit:
                self._capped_now = True  # this call (or another thread) took the last slot
                self._capped(identifier)
                return
            queue = self.log_queue
            queue.append(event)
            if len(queue) >= self._handoff_at:
                self._hand_off(queue)
        except Exception as exc:  # a metrics library must never raise into a forward pass
            self._internal_error(identifier, exc)

    @property
    def flush_every(self) -> int:
        """Queued events that trigger a hand-off to the background writer."""
        return self._flush_every

    @flush_every.setter
    def flush_every(self, value: Any) -> None:
        if not isinstance(value, numbers.Real) or value != value:
            _logger.warning("otel_sparse: flush_every=%r is not a number; using 1000", value)
            value = 1000
        self._flush_every: int = value  # as given: float("inf") and 0 included
        # The queue is a deque(maxlen=10000): hand over before it could drop anything.
        self._handoff_at = int(max(1, min(value, QUEUE_MAXLEN - _HANDOFF_HEADROOM)))

    def _capped(self, identifier: str) -> bool:
        """True (and counted) once ``max_records`` events were recorded."""
        if not self._capped_now:
            return False
        self._drops.add("max_records", identifier, why=f"max_records={self.max_records} reached")
        return True

    def _locate(self, frame: FrameType) -> str:
        code = frame.f_code
        module = frame.f_globals.get("__name__", "unknown")
        location = f"{module}.{code.co_qualname}"
        self._locations[code] = location
        return location

    def _hand_off(self, queue: deque[LogEvent]) -> None:
        """Give the full queue to the writer: a swap and an append, O(1)."""
        with self._lock:
            if self.log_queue is not queue:
                return  # another thread handed it off first
            self.log_queue = _new_queue()
            self.last_flush_time = time.time()
            self._pipeline_or_start().submit(queue)

    def _not_logged(self, identifier: Any) -> None:
        shown = printable(str(identifier))  # one stdout line, whatever the identifier holds
        if self._log_path is None:
            key = ("no_path", identifier)
            message = (f"Warning: Cannot log metric '{shown}' - log_path not defined. "
                       "Use configure_logging() first.")
        else:
            key = ("disabled", identifier)
            message = f"Warning: Attempting to log metric '{shown}' which is not enabled"
        if not _hashable(identifier):
            key = (key[0], repr(identifier))
        if key not in self._warned:  # once per id per logger: the old code printed every call
            self._warned.add(key)
            print(message)

    def _internal_error(self, identifier: Any, exc: Exception) -> None:
        """Count what made ``log()`` fail. Never raises, whatever the identifier or error."""
        try:
            if not _hashable(identifier):  # cannot be registered, so never enabled: step 2
                self._not_logged(identifier)
                return
            reason, name = "internal_error", str(identifier)[:200]
        except Exception:  # an identifier whose str() or repr() raises
            reason, name = "invalid_identifier", f"<{type(identifier).__qualname__}>"
        try:
            why = f"{type(exc).__name__}: {exc}"
        except Exception:
            why = type(exc).__name__
        with contextlib.suppress(Exception):
            self._drops.add(reason, name, why=why)

    # -- configuration after construction ------------------------------------------------

    @property
    def log_path(self) -> str | None:
        """Folder of the event file; setting it creates the folder and starts the writer."""
        return self._log_path

    @log_path.setter
    def log_path(self, path: str | None) -> None:
        if path == self._log_path and (path is None or self._pipeline is not None):
            return
        with self._lock:  # path and pipeline change together for threads handing off batches
            pipeline, self._pipeline = self._pipeline, None
            self._log_path = path
        if pipeline is not None:
            pipeline.close()
        if path is not None:
            os.makedirs(path, exist_ok=True)
            try:
                with self._lock:
                    self._pipeline_or_start()  # builds the exporters: OtlpConfigError here
            except Exception:
                self._log_path = None
                raise
            _install_sigterm_handler()

    def configure_logging(
        self,
        log_path: str,
        enabled_metrics: list[str] | set[str] | str | None = None,
        max_records: int | None = None,
        sampling_factor: float = 1.0,
        *,
        exporters: Sequence[str | MetricExporter] | None = None,
    ) -> None:
        """Set the path (creating it), enable metrics, set both limits, reset the total.

        ``exporters`` (names and/or MetricExporter instances) replaces the metric exporters.

        Raises:
            TypeError, ValueError: ``max_records`` that is neither None nor a number.
        """
        max_records = _check_max_records(max_records)
        if exporters is not None:
            wanted = _ExporterChoice.parse(exporters)
            if wanted != self._exporters and self._pipeline is not None:
                with self._lock:
                    pipeline, self._pipeline = self._pipeline, None
                if pipeline is not None:
                    pipeline.close()
            self._exporters = wanted
        self.log_path = log_path
        self.enable_metrics(enabled_metrics)
        with self._lock:
            self.max_records = max_records
            self.sampling_factor = _clamp_sampling(sampling_factor)
            self._seq = itertools.count()
            self._capped_now = False

    def is_logging_configured(self) -> bool:
        """Whether a log path is set."""
        return self._log_path is not None

    def get_total_records_logged(self) -> int:
        """Events recorded since construction or the last ``configure_logging``."""
        issued = int(repr(self._seq)[6:-1])  # count(n): n numbers taken so far
        return issued if self.max_records is None else min(issued, max(self.max_records, 0))

    def is_max_records_reached(self) -> bool:
        """Whether ``max_records`` events have been recorded."""
        return self.max_records is not None and self.get_total_records_logged() >= self.max_records

    def get_records_remaining(self) -> int | None:
        """Events left before ``max_records``; None without a limit."""
        if self.max_records is None:
            return None
        return max(0, self.max_records - self.get_total_records_logged())

    def get_sampling_factor(self) -> float:
        """The share of events kept."""
        return self.sampling_factor

    def get_max_records(self) -> int | None:
        """The record limit, or None."""
        return self.max_records

    # -- context and timers --------------------------------------------------------------

    def context(self, **values: Any) -> ContextScope:
        """Put ``values`` (stage, epoch, ...) on every following event, under "context".

        Applies at once; used as ``with logger.context(stage="prefill"):`` it is undone at
        the end of the block. Keys declared in ``register_metric(attributes=[...])`` also
        become attributes of that metric's points. ``None`` removes a key.
        """
        merged = dict(self._context.values) if self._context is not None else {}
        merged.update(values)
        return ContextScope(self, {k: v for k, v in merged.items() if v is not None})

    def step(self, step: int) -> ContextScope:
        """``context(step=step)``: ``with logger.step(i):`` around one training step."""
        return self.context(step=step)

    def clear_context(self) -> None:
        """Remove every context value."""
        self._context = None

    def get_context(self) -> dict[str, Any]:
        """A copy of the current context values."""
        return dict(self._context.values) if self._context is not None else {}

    def _set_context(self, context: EventContext | None) -> None:
        self._context = context

    @classmethod
    def register_timer(
        cls, identifier: str, *, description: str = "", boundaries: Sequence[float] | None = None,
        attributes: Sequence[str] = (),
    ) -> None:
        """Register a histogram in seconds, with bounds from 1 µs to 10 s, for ``timer()``."""
        cls.register_metric(
            identifier, float, kind=InstrumentKind.HISTOGRAM, unit="s", description=description,
            boundaries=DEFAULT_TIMER_BOUNDARIES if boundaries is None else boundaries,
            attributes=attributes,
        )

    def timer(self, identifier: str, **metadata: Any) -> Timer | _NullTimer:
        """Time a block into histogram ``identifier``, in seconds (``perf_counter``).

        ``with logger.timer("attention_time", layer=l):``. A disabled identifier costs one
        set lookup; an enabled one two clock reads and one ``log()``. The time measured is
        the host's: for GPU work, it covers launching kernels, not running them.
        """
        if identifier not in self._enabled or self._log_path is None:
            self._not_logged(identifier)
            return _NULL_TIMER
        frame = _getframe(1)
        location = self._locations.get(frame.f_code)
        if location is None:
            location = self._locate(frame)
        return Timer(self, identifier, metadata, location)

    # -- flushing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every queued event now (synchronously) and export the local metric files."""
        self.last_flush_time = time.time()
        if self._log_path is None:
            return
        with self._lock:
            queue = self.log_queue
            self.log_queue = _new_queue()
            pipeline = self._pipeline
            if queue:
                # Submitted under the lock, like every swap: batches reach the writer in
                # the order they were swapped out, so each thread's events stay in order.
                pipeline = self._pipeline_or_start()
                pipeline.submit(queue)
        if pipeline is not None:
            # The writer pops the events from ``queue``: it is empty once this returns.
            pipeline.write_now()

    def close(self) -> None:
        """Flush, export a last time and stop the background threads (restart on next use)."""
        if not getattr(self, "_ready", False):
            return
        if self._log_path is not None:
            self.flush()
        with self._lock:  # detached first: no other thread hands a batch to a closing pipeline
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # never raise from a finaliser (interpreter exit)
            self.close()

    def _pipeline_or_start(self) -> Pipeline:
        pipeline = self._pipeline
        if pipeline is None:
            assert self._log_path is not None
            choice = self._exporters
            settings = Settings.from_env(exporters=choice.names if choice else None)
            pipeline = Pipeline(self, self._log_path, settings, self._drops,
                                is_fork_child=self._is_fork_child,
                                extra_exporters=choice.instances if choice else ())
            self._pipeline = pipeline
            self._sync_specs()
        return pipeline

    def _take_stale_queue(self, max_age_s: float) -> deque[LogEvent] | None:
        """Called by the writer: the queue, if its oldest event waited ``max_age_s``.

        Submitted here, under the lock (then None is returned), when a pipeline exists: a
        batch swapped out here and submitted later could reach the writer after a newer one.
        """
        max_age_s = min(max_age_s, self.flush_interval)
        with self._lock:
            queue = self.log_queue
            if not queue or (_now() - queue[0].timestamp).total_seconds() < max_age_s:
                return None
            self.log_queue = _new_queue()
            self.last_flush_time = time.time()
            if self._pipeline is not None:
                self._pipeline.submit(queue)
                return None
            return queue

    def _after_fork_in_child(self) -> None:
        """A forked child (DataLoader worker) starts clean: the parent writes its own events."""
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._drops = DropCounter()
        self._is_fork_child = True
        self.log_queue = _new_queue()
        self._pipeline = None  # its threads did not survive the fork; the parent owns its data
        if self._log_path is not None:
            self._pipeline_or_start()


class EventContext:
    """An immutable snapshot of context values, shared by every event logged under it."""

    __slots__ = ("key", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        try:
            self.key: Any = tuple(sorted(values.items()))
            hash(self.key)
        except TypeError:
            self.key = None  # unhashable values: encoded per event, never cached


class ContextScope:
    """Returned by ``context()``/``step()``: already applied; a ``with`` block undoes it."""

    __slots__ = ("_logger", "_previous")

    def __init__(self, logger: MicroMetricLogger, values: dict[str, Any]) -> None:
        self._logger = logger
        self._previous = logger._context
        logger._set_context(EventContext(values) if values else None)

    def __enter__(self) -> MicroMetricLogger:
        return self._logger

    def __exit__(self, *exc: object) -> None:
        self._logger._set_context(self._previous)


class Timer:
    """Measures one block with ``perf_counter`` and logs the seconds on exit."""

    __slots__ = ("_identifier", "_location", "_logger", "_metadata", "_start", "elapsed")

    def __init__(
        self, logger: MicroMetricLogger, identifier: str, metadata: dict[str, Any], location: str
    ) -> None:
        self._logger = logger
        self._identifier = identifier
        self._metadata = metadata
        self._location = location
        self._start = 0.0
        self.elapsed: float | None = None

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self._start
        self._logger.log(self._identifier, self.elapsed, self._metadata, _location=self._location)


class _NullTimer:
    """The timer of a disabled identifier: does nothing."""

    __slots__ = ()
    elapsed = None

    def __enter__(self) -> _NullTimer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NULL_TIMER = _NullTimer()


class _ExporterChoice(NamedTuple):
    """Exporters chosen in code: names resolved by the pipeline, plus ready instances."""

    names: tuple[str, ...]
    instances: tuple[MetricExporter, ...]

    @classmethod
    def parse(cls, exporters: Sequence[str | MetricExporter] | None) -> _ExporterChoice | None:
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


def _clamp_sampling(value: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        _logger.warning("otel_sparse: sampling_factor=%r is not a number; using 1.0", value)
        return 1.0
    if number != number:
        _logger.warning("otel_sparse: sampling_factor is NaN; using 1.0")
        return 1.0
    return max(0.0, min(1.0, number))


def _check_max_records(value: Any) -> Any:
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


def _check_interval(value: Any) -> Any:
    """``flush_interval`` as given if it is a number; else a warning and the default, 60.0."""
    if isinstance(value, numbers.Real) and value == value:
        return value
    _logger.warning("otel_sparse: flush_interval=%r is not a number; using 60.0", value)
    return 60.0


def _describe(value: Any) -> str:
    """A short description of a value for a warning; never raises."""
    try:
        text = repr(value)
    except Exception:
        text = "?"
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{type(value).__name__} {text}"


def _stable_order(identifiers: Iterable[Any]) -> list[Any]:
    """Identifiers sorted by repr (set order differs between processes), as given if not."""
    try:
        return sorted(identifiers, key=repr)
    except Exception:
        return list(identifiers)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def live_loggers() -> Iterable[MicroMetricLogger]:
    """Every logger not yet garbage collected."""
    return list(_live_loggers)


def _close_all() -> None:
    for logger in live_loggers():
        try:
            logger.close()
        except Exception:
            _logger.exception("otel_sparse: final flush failed")


_previous_sigterm: Any = None
_SIGNAL_CLOSE_SLACK_S = 10.0
"""Seconds a SIGTERM close may take beyond the shutdown timeout (writing queued events)."""


def _install_sigterm_handler() -> None:
    """Put ``_on_sigterm`` in front of the SIGTERM handler: main thread only, once, if allowed.

    Only over ``SIG_DFL`` or a Python callable: ``SIG_IGN`` and handlers installed outside
    Python stay as they are.
    """
    global _previous_sigterm
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        current = signal.getsignal(signal.SIGTERM)
        if current is _on_sigterm or not sigterm_handler_enabled():
            return
        if current is not signal.SIG_DFL and not callable(current):
            return
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError, AttributeError):  # no SIGTERM here, or not allowed
        return
    _previous_sigterm = current


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Close every logger (bounded), then do what the previous handler would have done."""
    try:
        _close_all_for_signal()
    except Exception:
        _logger.exception("otel_sparse: final flush on SIGTERM failed")
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die of SIGTERM, as without us
    os.kill(os.getpid(), signal.SIGTERM)


def _close_all_for_signal() -> None:
    # The handler runs on the main thread between two bytecodes, possibly inside one of our
    # locked sections: closing there could wait on itself. A helper thread closes instead,
    # and the wait for it is bounded.
    pipelines = [lg._pipeline for lg in live_loggers() if lg._pipeline is not None]
    limit = max((p.settings.shutdown_timeout_s for p in pipelines), default=3.0)
    closer = threading.Thread(target=_close_all, name="otel-sparse-sigterm", daemon=True)
    closer.start()
    closer.join(limit + _SIGNAL_CLOSE_SLACK_S)
    if closer.is_alive():
        _logger.warning("otel_sparse: SIGTERM: the final flush did not finish in time; "
                        "events of the last moments may be missing")


def _after_fork_in_child() -> None:
    for logger in live_loggers():
        logger._after_fork_in_child()


def _register_child_exit_flush(_: object) -> None:
    # Runs in a multiprocessing child after it cleared the parent's finalisers. Such children
    # leave through os._exit, skipping atexit, but run their finalisers first.
    multiprocessing.util.Finalize(None, _close_all, exitpriority=100)


class _ForkHook:
    """Held for the module's lifetime: multiprocessing keeps after-fork hooks weakly."""


_FORK_HOOK = _ForkHook()
atexit.register(_close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(_FORK_HOOK, _register_child_exit_flush)
