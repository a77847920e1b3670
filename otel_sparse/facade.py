"""``MicroMetricLogger``: sparse-attention-hub's API, with OpenTelemetry underneath.

The hot path lives here and only here. ``log()`` checks, stamps and appends one ``LogEvent``
under a lock; it does no I/O, no JSON, no OTel SDK call and no GPU synchronisation. Full
batches go to the background ``Pipeline`` in O(1); everything else (event file, aggregation,
OTel data model, exporters) happens there.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import numbers
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from types import CodeType, FrameType
from typing import Any, ClassVar, Protocol

from opentelemetry.sdk.metrics.export import MetricExporter

from otel_sparse._arguments import (
    ExporterChoice,
    check_interval,
    check_max_records,
    clamp_sampling,
    describe,
    hashable,
    stable_order,
)
from otel_sparse._callsite import location as callsite_location
from otel_sparse._cuda import CudaTimer, timer_device
from otel_sparse._instruments import (
    DEFAULT_TIMER_BOUNDARIES,
    InstrumentKind,
    MetricSpec,
    histogram_part_suffix,
    make_spec,
)
from otel_sparse._safety import printable
from otel_sparse._values import Refusal, capture, captures_by_type, take_metadata
from otel_sparse.config import Settings
from otel_sparse.event import EventContext, LogEvent
from otel_sparse.lifecycle import (
    after_fork_in_child,
    close_quietly,
    exiting,
    install_sigterm_handler,
    register,
)
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


def _new_queue() -> deque[LogEvent]:
    return deque(maxlen=QUEUE_MAXLEN)


def _new_lock() -> threading.RLock:
    """The logger's lock. Never taken twice by one thread: an RLock only because it knows
    its owner in C (``_is_owned()``), with no moment where a signal could find it held by
    this thread and not yet recorded as such."""
    return threading.RLock()


def _handoff_size(flush_every: Any) -> int:
    """Queued events that trigger a hand-off: ``flush_every``, but below the queue's maxlen
    (a deque(maxlen=10000) would drop the oldest events)."""
    return int(max(1, min(flush_every, QUEUE_MAXLEN - _HANDOFF_HEADROOM)))


def _warn_histogram_part_suffix(spec: MetricSpec) -> None:
    """Say once, at registration, that a gauge or up-down counter takes a histogram part's
    name in Prometheus (docs/cluster.md, "Names that look like histogram parts")."""
    found = histogram_part_suffix(spec)
    if found is None:
        return
    suffix, cause = found
    _logger.warning(
        "otel_sparse: metric %r is %s whose Prometheus name ends in %s (from its %s), a "
        "suffix reserved for histogram parts: behind the aggregation tier "
        "(collector-config/aggregation.yaml matches names only) it would be summed over "
        "ranks as a histogram %s, each decrease read as a counter reset, so its "
        "cluster-wide value would be wrong, and the dashboards' $metric list would take it "
        "for a histogram. The event file and the local metric rows are not affected. "
        "Fix: rename the %s so that it does not end in %s",
        spec.identifier,
        "a gauge" if spec.kind is InstrumentKind.GAUGE else "an up-down-counter",
        suffix, cause, suffix[1:], cause, suffix[1:],
    )


class OpenRun(Protocol):
    """What ``start_run()`` (run.py) leaves on the logger: ends the run, once."""

    def end(
        self, exc_type: type[BaseException] | None = None, *, status: str | None = None
    ) -> None:
        """Flush and close the logger, then record in run.json how the run ended."""


class _SingletonMeta(type):
    """Makes ``MicroMetricLogger()`` with no arguments one attribute check, not __new__+__init__.

    Researchers call ``MicroMetricLogger().log(...)`` inside attention layers, so the
    constructor call is part of the hot path.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        instance = cls.__dict__.get("_instance")
        if instance is not None and not args and not kwargs and cls.__dict__["_initialized"]:
            return instance
        # One construction at a time: threads calling MicroMetricLogger() while another
        # (re)builds the singleton wait for it instead of initialising it alongside.
        with _constructing.lock:
            instance = cls.__dict__.get("_instance")
            if instance is not None and not args and not kwargs and cls.__dict__["_initialized"]:
                return instance
            return super().__call__(*args, **kwargs)


class _ConstructionLock:
    """The lock of ``_SingletonMeta.__call__``; a forked child gets a new one (the parent's
    may have been held by a thread that does not exist in the child)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()

    def after_fork_in_child(self) -> None:
        self.lock = threading.RLock()


_constructing = _ConstructionLock()
after_fork_in_child(_constructing.after_fork_in_child)


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
    _run: OpenRun | None = None
    """The run ``start_run()`` opened on this logger and nothing has ended yet."""
    _all_enabled = False
    """Whether the enabled set is ``"all"``: identifiers registered later are enabled too."""

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
            elif self.log_path is None and log_path is not None:
                self._note_ignored_path(log_path)
            return
        try:
            max_records = check_max_records(max_records)
        except (TypeError, ValueError):
            if not getattr(self, "_ready", False):
                type(self)._instance = None  # leave no half-built singleton behind
            raise
        if getattr(self, "_ready", False):  # _initialized was reset on a live instance
            self._start_over()
        else:
            self._lock = _new_lock()
            self._deferred: list[tuple[int, Callable[[], None]]] = []
            self._held_back: list[deque[LogEvent]] = []
            """Swapped-out batches whose submit() an exception (Ctrl-C) interrupted: submitted
            before the next batch. Swap and ``try`` follow each other with no point between
            where CPython runs a signal handler, so a batch is always queued, held back or
            submitted."""
            self.log_queue: deque[LogEvent] = _new_queue()
            self._pipeline: Pipeline | None = None
            self._log_path: str | None = None
        # Never the global generator: the researcher's random stream stays theirs.
        self._rng = random.Random()
        self._warned: set[tuple[str, Any]] = set()
        self._drops = DropCounter()
        self._locations: dict[CodeType, str] = {}
        self._context: EventContext | None = None
        self._exporters = ExporterChoice.parse(exporters)
        self._seq = itertools.count()
        self._capped_now = False
        self._is_fork_child = False
        self.flush_every = flush_every
        self.flush_interval = check_interval(flush_interval)
        self.enabled_metrics = set()
        self.last_flush_time = time.time()
        self.max_records = max_records
        self.sampling_factor = clamp_sampling(sampling_factor)
        self._ready = True
        register(self)
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
        histogram: str | None = None,
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
            histogram: ``"explicit"`` or ``"exponential"`` buckets for a float histogram;
                None follows ``OTEL_SPARSE_HISTOGRAM`` (default explicit). ``boundaries``
                and int dtypes mean explicit.

        Raises:
            ValueError: options that cannot describe an instrument (at registration, never
                later inside ``log()``).
        """
        if not hashable(identifier):
            raise TypeError(
                f"metric identifiers must be strings, got unhashable {type(identifier).__name__}"
            )
        spec = make_spec(identifier, dtype, kind=kind, unit=unit, description=description,
                         boundaries=boundaries, attributes=attributes, histogram=histogram)
        if cls._metric_specs.get(identifier) != spec:  # once, not at each re-registration
            _warn_histogram_part_suffix(spec)
        if identifier in cls._registered_metrics:
            print(f"Warning: Metric '{printable(str(identifier))}' is being re-registered")
        cls._registered_metrics[identifier] = dtype
        cls._metric_specs[identifier] = spec
        instance = cls._instance
        if instance is None or not getattr(instance, "_ready", False):
            return
        if instance._all_enabled and identifier not in instance._enabled:
            # "all" means every identifier, registered before or after enable_metrics("all")
            instance.enabled_metrics = instance._enabled | {identifier}
            instance._all_enabled = True
        pipeline = instance._pipeline
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
        self._all_enabled = False  # a set chosen by hand stays as chosen
        # A bound C method: the disabled check costs an attribute load and a set lookup.
        self.is_metric_enabled = metrics.__contains__  # type: ignore[method-assign,assignment]
        self._sync_specs()

    def enable_metrics(self, metrics: list[str] | set[str] | str | None = None) -> None:
        """Enable ``"all"`` metrics, or those of a list/set; None enables nothing.

        ``"all"`` also enables identifiers registered later, until the next call.
        """
        registered = self._registered_metrics
        if isinstance(metrics, str) and metrics == "all":
            self.enabled_metrics = set(registered)
            self._all_enabled = True
        elif isinstance(metrics, (list, set)):
            try:
                wanted = set(metrics)
            except TypeError:
                wanted = {m for m in metrics if hashable(m)}
                _logger.warning("otel_sparse: enable_metrics ignored unhashable entries")
            invalid = wanted - set(registered)
            if invalid:
                print(f"Warning: Attempting to enable unregistered metrics: {invalid}")
                for identifier in stable_order(invalid):
                    self._hint_unregistered(identifier)
            self.enabled_metrics = wanted & set(registered)
        else:
            if metrics is not None:  # the old API enables nothing here; say so, once a call
                _logger.warning(
                    "otel_sparse: enable_metrics expects 'all', a list or a set of identifiers, "
                    "got %s; no metric is enabled", describe(metrics),
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
        for identifier in stable_order(self._enabled):
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

        Takes no lock, except in the one call of ``flush_every`` that hands the full queue to
        the writer: the record count is an ``itertools.count`` and the append is one deque
        operation, both atomic. Tensors are cloned on their own device (never read
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
            metadata = take_metadata(metadata)  # the caller may reuse and change its dict
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
            event = LogEvent(_now(), identifier, value, metadata, location)
            if self._context is not None:
                event.context = self._context  # not a field: see event.py
            taken = next(self._seq)
            if limit is not None and taken >= limit:
                self._capped_now = True  # this call (or another thread) took the last slot
                self._capped(identifier)
                return
            queue = self.log_queue
            queue.append(event)
            # A queue swapped out between the read and the append may be drained already:
            # this thread hands it over again, before its next event can be queued.
            if len(queue) >= self._handoff_at or queue is not self.log_queue:
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
        if self._pipeline is not None or not hasattr(self, "_handoff_at"):
            self._handoff_at = _handoff_size(value)

    def _capped(self, identifier: str) -> bool:
        """True (and counted) once ``max_records`` events were recorded."""
        if not self._capped_now:
            return False
        self._drops.add("max_records", identifier, why=f"max_records={self.max_records} reached")
        return True

    def _locate(self, frame: FrameType) -> str:
        """The caller's location string (otel_sparse/_callsite.py), cached per call site."""
        found = self._locations[frame.f_code] = callsite_location(frame)
        return found

    def _hand_off(self, queue: deque[LogEvent]) -> None:
        """Give the full queue to the writer: a swap and an append, O(1)."""
        if self._lock._is_owned():  # type: ignore[attr-defined]
            # a handler or finaliser inside our locked section: handed off when it ends (a
            # hand-off never waits for the writer's lock, so only ours counts here)
            self._defer(self._hand_off_now)
            return
        try:
            with self._lock:
                if self._log_path is None:
                    return  # a reconstruction runs: the queue waits for the new path
                if self.log_queue is not queue:  # another thread swapped it out
                    if queue:  # and log() appended to it since: submitted again
                        self._resubmit(queue)
                    return
                pipeline = self._pipeline_or_start()
                if self._held_back:
                    self._submit_held_back(pipeline)
                self.log_queue = _new_queue()
                try:  # no check for signals between the swap and here (see _held_back)
                    pipeline.submit(queue)
                except BaseException:
                    self._held_back.append(queue)
                    raise
                self.last_flush_time = time.time()
            if not pipeline.background:  # interpreter exit: no thread would write it
                pipeline.write_now()
        finally:
            if self._deferred:
                self._run_deferred()

    def _resubmit(self, queue: deque[LogEvent]) -> None:
        """Hand over a swapped-out queue a late ``log()`` appended to (under the lock).

        Its first submit() may have been drained already; if it is still pending, submit()
        does nothing and its drain takes the late event with the rest.
        """
        pipeline = self._pipeline_or_start()
        if self._held_back:
            self._submit_held_back(pipeline)
        try:
            pipeline.submit(queue)
        except BaseException:
            self._held_back.append(queue)
            raise

    def _submit_held_back(self, pipeline: Pipeline) -> None:
        """Submit, oldest first, the batches an exception kept from their submit()."""
        while self._held_back:
            pipeline.submit(self._held_back[0])
            del self._held_back[0]

    def _hand_off_now(self) -> None:
        queue = self.log_queue
        if queue:
            self._hand_off(queue)

    def defer_if_busy(self, call: Callable[[], None]) -> bool:
        """Lifecycle protocol: True, and ``call`` runs when the section ends, if this thread is
        inside one of this logger's locked sections (its own lock, or its writer's during a
        synchronous write).

        Signal handlers run on the main thread between two bytecodes, and ``__del__`` and
        finalisers on whichever thread the garbage collector interrupts: possibly one holding
        the lock. Waiting for it there would wait forever, so the call is put off until the
        section ends, on the same thread (``_run_deferred`` in a ``finally``).
        """
        if not self._busy_here():
            return False
        self._defer(call)
        return True

    def _defer(self, call: Callable[[], None]) -> None:
        entry = (threading.get_ident(), call)
        if entry not in self._deferred:
            self._deferred.append(entry)

    def _busy_here(self) -> bool:
        if self._lock._is_owned():  # type: ignore[attr-defined]
            return True
        pipeline = self._pipeline
        return pipeline is not None and pipeline.busy_here()

    def _run_deferred(self) -> None:
        """Run the calls this thread put off while it held the lock (now released)."""
        me = threading.get_ident()
        while not self._busy_here():
            mine = next((entry for entry in self._deferred if entry[0] == me), None)
            if mine is None:
                return
            with contextlib.suppress(ValueError):  # another thread's finally took it
                self._deferred.remove(mine)
            mine[1]()

    def _not_logged(self, identifier: Any) -> None:
        shown = printable(str(identifier))  # one stdout line, whatever the identifier holds
        if self._log_path is None:
            key = ("no_path", identifier)
            message = (f"Warning: Cannot log metric '{shown}' - log_path not defined. "
                       "Use configure_logging() first.")
        else:
            key = ("disabled", identifier)
            message = f"Warning: Attempting to log metric '{shown}' which is not enabled"
        if not hashable(identifier):
            key = (key[0], repr(identifier))
        if key not in self._warned:  # once per id per logger: the old code printed every call
            self._warned.add(key)
            print(message)
            if key[0] == "disabled":
                self._hint_unregistered(identifier)

    def _hint_unregistered(self, identifier: Any) -> None:
        """Once per id: say through logging that it was never registered, with close matches.

        The contract's stdout lines stay as they are; this is the extra, searchable hint.
        """
        registered = self._registered_metrics
        if not isinstance(identifier, str) or identifier in registered:
            return
        key = ("unregistered", identifier)
        if key in self._warned:
            return
        self._warned.add(key)
        import difflib  # cold path: only for identifiers that were never registered

        close = difflib.get_close_matches(identifier, [m for m in registered if isinstance(m, str)])
        _logger.warning(
            "otel_sparse: metric %r was never registered (call "
            "MicroMetricLogger.register_metric(%r, float) first)%s", identifier, identifier,
            f"; close matches: {', '.join(close)}" if close else "",
        )

    def _note_ignored_path(self, log_path: Any) -> None:
        """Once: a later ``MicroMetricLogger(log_path=...)`` cannot configure the singleton."""
        if ("ignored_path", None) in self._warned:
            return
        self._warned.add(("ignored_path", None))
        _logger.warning(
            "otel_sparse: MicroMetricLogger(log_path=%r) ignored: the singleton was already "
            "created without a log_path (by an earlier MicroMetricLogger() call), and only the "
            "first call applies its arguments; call MicroMetricLogger().configure_logging(%r, "
            "enabled_metrics=...) or otel_sparse.start_run() instead", log_path, log_path,
        )

    def _internal_error(self, identifier: Any, exc: Exception) -> None:
        """Count what made ``log()`` fail. Never raises, whatever the identifier or error."""
        try:
            if not hashable(identifier):  # cannot be registered, so never enabled: step 2
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
        if self._log_path is not None and path != self._log_path:
            self.flush()  # what was queued for the old path is written there, not in the new
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
            install_sigterm_handler()

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
        max_records = check_max_records(max_records)
        if exporters is not None:
            wanted = ExporterChoice.parse(exporters)
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
            self.sampling_factor = clamp_sampling(sampling_factor)
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

    def timer(
        self, identifier: str, *, device: Any = None, **metadata: Any
    ) -> Timer | CudaTimer | _NullTimer:
        """Time a block into histogram ``identifier``, in seconds.

        ``with logger.timer("attention_time", layer=l):`` times host time (``perf_counter``):
        for GPU work, that covers launching kernels, not running them.
        ``with logger.timer("attention_time", device="cuda", layer=l):`` times GPU time: two
        CUDA timing events on the device's current stream, resolved by the background writer
        once the GPU passed them (the caller never waits). ``device`` is "cuda", "cuda:N",
        N or a torch.device; without CUDA it falls back to host time, with a one-time note.
        A disabled identifier costs one set lookup; an enabled one two clock reads (or two
        recorded events) and one ``log()``.
        """
        if identifier not in self._enabled or self._log_path is None:
            self._not_logged(identifier)
            return _NULL_TIMER
        frame = _getframe(1)
        location = self._locations.get(frame.f_code)
        if location is None:
            location = self._locate(frame)
        if device is not None:
            index = timer_device(device)
            if index is not None:
                return CudaTimer(self, identifier, metadata, location, index)
        return Timer(self, identifier, metadata, location)

    # -- flushing ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every queued event now (synchronously) and export the local metric files.

        From a signal handler or finaliser that interrupted this logger's locked section on
        the same thread, returns at once: the flush runs when that section ends.
        """
        if self.defer_if_busy(self.flush):
            return
        try:
            self._flush()
        finally:
            if self._deferred:
                self._run_deferred()

    def _flush(self) -> None:
        self.last_flush_time = time.time()
        if self._log_path is None:
            return
        with self._lock:
            queue = self.log_queue
            pipeline = self._pipeline
            if (queue or self._held_back) and self._log_path is not None:
                # Submitted under the lock, like every swap: batches reach the writer in
                # the order they were swapped out, so each thread's events stay in order.
                pipeline = self._pipeline_or_start()
                if self._held_back:
                    self._submit_held_back(pipeline)
                self.log_queue = _new_queue()
                try:  # as in _hand_off: an exception here keeps the batch for the next one
                    pipeline.submit(queue)
                except BaseException:
                    self._held_back.append(queue)
                    raise
        if pipeline is not None:
            # The writer pops the events from ``queue``: it is empty once this returns.
            pipeline.write_now()

    def close(self) -> None:
        """Flush, export a last time and stop the background threads.

        The next ``log()`` starts them again (at interpreter exit, it writes synchronously):
        events logged after a close are written within the write delay, as before it. From a
        signal handler or finaliser inside this logger's locked section, the close runs when
        that section ends.
        """
        if not getattr(self, "_ready", False):
            return
        if self.defer_if_busy(self.close):
            return
        try:
            if self._log_path is not None:
                self._flush()
            with self._lock:  # detached first: no thread hands a batch to a closing pipeline
                pipeline, self._pipeline = self._pipeline, None
                self._handoff_at = 1  # the next log() hands off, and so starts a writer
            if pipeline is not None:
                pipeline.close()
        finally:
            if self._deferred:
                self._run_deferred()

    def _start_over(self) -> None:
        """Reconstruction of a live logger: write what it queued, then forget its path.

        The lock and the queue stay: threads that hold this logger keep logging into it
        meanwhile, and what they queue is written once the new path is set.
        """
        self.close()
        with self._lock:  # from here hand-offs keep their queue: none starts a pipeline
            self._log_path = None
            stray, self._pipeline = self._pipeline, None
        if stray is not None:  # started by a hand-off between the close and the lock
            stray.close()

    def __enter__(self) -> MicroMetricLogger:
        """``with otel_sparse.start_run(...) as logger:`` (or ``with MicroMetricLogger(...)``)."""
        self.__dict__.setdefault("_blocks", []).append(self._run)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        """End the run this block opened, recording how it ended; without one, ``close()``.

        A run another ``start_run()`` already superseded stays as it was ended.
        """
        blocks = self.__dict__.get("_blocks")
        run = blocks.pop() if blocks else None
        if run is None:
            self.close()
        else:
            run.end(exc_type)

    def __del__(self) -> None:
        close_quietly(self)  # garbage collection flushes, as the old API promised

    def close_timeout_s(self) -> float | None:
        """Seconds ``close()`` may spend exporting (lifecycle protocol); None without a writer."""
        pipeline = self._pipeline
        return pipeline.settings.shutdown_timeout_s if pipeline is not None else None

    def _pipeline_or_start(self) -> Pipeline:
        pipeline = self._pipeline
        if pipeline is None:
            assert self._log_path is not None
            choice = self._exporters
            settings = Settings.from_env(exporters=choice.names if choice else None)
            pipeline = Pipeline(self, self._log_path, settings, self._drops,
                                is_fork_child=self._is_fork_child,
                                extra_exporters=choice.instances if choice else (),
                                background=not exiting())
            self._pipeline = pipeline
            # After a close the hand-off size was 1 (to get here); at exit it stays 1:
            # with no writer thread, every event is written as it comes.
            self._handoff_at = _handoff_size(self._flush_every) if pipeline.background else 1
            self._sync_specs()
        return pipeline

    def take_stale_queue(self, max_age_s: float) -> deque[LogEvent] | None:
        """Called by the writer (``QueueOwner``): the queue, if its oldest event waited
        ``max_age_s`` (or ``flush_interval``, whichever is shorter).

        Submitted here, under the lock (then None is returned), when a pipeline exists: a
        batch swapped out here and submitted later could reach the writer after a newer one.
        """
        max_age_s = min(max_age_s, self.flush_interval)
        if self._deferred:
            self._run_deferred()
        with self._lock:
            if self._held_back and self._pipeline is not None:
                self._submit_held_back(self._pipeline)
            queue = self.log_queue
            if not queue or (_now() - queue[0].timestamp).total_seconds() < max_age_s:
                return None
            self.log_queue = _new_queue()
            self.last_flush_time = time.time()
            if self._pipeline is not None:
                self._pipeline.submit(queue)
                return None
            return queue

    def after_fork_in_child(self) -> None:
        """Lifecycle protocol: a forked child (DataLoader worker) starts clean; the parent
        writes its own events."""
        self._lock = _new_lock()
        self._deferred = []
        self._held_back = []
        self._rng = random.Random()
        self._drops = DropCounter()
        self._is_fork_child = True
        self.log_queue = _new_queue()
        self._pipeline = None  # its threads did not survive the fork; the parent owns its data
        if self._log_path is not None:
            self._pipeline_or_start()


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
