"""Per-series state (count, sum, min, max, buckets), turned into OTel data points on collect.

No I/O and no threads: the background writer owns one Aggregator and is its only caller.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any, Union

import numpy as np
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    Sum,
)

from otel_sparse._compat import zip_strict
from otel_sparse._exponential import DEFAULT_MAX_BUCKETS, ExponentialHistogramState
from otel_sparse._instruments import (
    OVERFLOW_ATTRIBUTES,
    AttributeKey,
    InstrumentKind,
    MetricSpec,
)

_OVERFLOW_KEY: AttributeKey = tuple(sorted(OVERFLOW_ATTRIBUTES.items()))


class HistogramState:
    """count, sum, min, max and bucket counts of one histogram series."""

    __slots__ = ("bounds", "buckets", "count", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.buckets = [0] * (len(bounds) + 1)

    def add(self, value: float) -> None:
        """Add one finite value."""
        add_values((self,), (value,))


class SumState:
    """Running total of a counter or up-down counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def add(self, value: float) -> None:
        """Add one value."""
        self.value += value


class GaugeState:
    """Last value of a gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0.0

    def add(self, value: float) -> None:
        """Replace the value."""
        self.value = value


State = Union[HistogramState, ExponentialHistogramState, SumState, GaugeState]


def add_values(states: Sequence[State], values: Sequence[float]) -> None:
    """Add each finite value to its state, in order: the loop every logged scalar goes through.

    The histogram update is written out here rather than called per value: the background
    writer shares the GIL with the training loop, and a method call per value was a third
    of its time.
    """
    for state, value in zip_strict(states, values):
        if type(state) is HistogramState:
            state.count += 1
            state.sum += value
            if value < state.min:  # noqa: PLR1730 (a comparison beats a min() call here)
                state.min = value
            if value > state.max:  # noqa: PLR1730
                state.max = value
            state.buckets[bisect_left(state.bounds, value)] += 1
        else:
            state.add(value)


class _MetricSeries:
    """All attribute sets of one instrument."""

    __slots__ = ("attributes", "exponential", "max_buckets", "overflowed", "spec", "states")

    def __init__(self, spec: MetricSpec, histogram: str, max_buckets: int) -> None:
        self.spec = spec
        self.exponential = (spec.histogram or histogram) == "exponential"
        self.max_buckets = max_buckets
        self.states: dict[AttributeKey, State] = {}
        self.attributes: dict[AttributeKey, dict[str, Any]] = {}
        self.overflowed = 0

    def new_state(self) -> State:
        kind = self.spec.kind
        if kind is InstrumentKind.HISTOGRAM:
            if self.exponential:
                return ExponentialHistogramState(self.max_buckets)
            return HistogramState(self.spec.boundaries)
        if kind is InstrumentKind.GAUGE:
            return GaugeState()
        return SumState()


class Aggregator:
    """Accumulates values per (instrument, attribute set) and snapshots them as OTel metrics.

    Example:
        >>> from otel_sparse._instruments import make_spec
        >>> agg = Aggregator(max_series=10)
        >>> spec = make_spec("density", float)
        >>> agg.record("sparse_attention.density", spec, (("layer", 0),), 0.25)
        >>> [m.data.data_points[0].sum for m in agg.collect(now_ns=1)]
        [0.25]
    """

    def __init__(
        self, max_series: int = 20000, temporality: str = "cumulative", start_ns: int = 0,
        histogram: str = "explicit", max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        """Args:
            histogram: bucketing of histograms whose spec leaves it open (``explicit`` or
                ``exponential``, ``OTEL_SPARSE_HISTOGRAM``).
            max_buckets: buckets per sign of an exponential series before it downscales.
        """
        self._histogram = histogram
        self._max_buckets = max_buckets
        self._max_series = max_series
        self._delta = temporality == "delta"
        self._start_ns = start_ns
        self._metrics: dict[str, _MetricSeries] = {}
        self.generation = 0
        """Changes whenever states are replaced (delta temporality), invalidating kept states."""
        self.overflow_events: list[tuple[str, int]] = []
        """(instrument, limit) for each instrument that overflowed since last read."""

    def _state(self, name: str, spec: MetricSpec, key: AttributeKey, points: int = 1) -> State:
        series = self._metrics.get(name)
        if series is None or series.spec is not spec:
            series = self._series_for(name, spec)
        state = series.states.get(key)
        if state is None:
            if len(series.states) >= self._max_series and key != _OVERFLOW_KEY:
                if not series.overflowed:
                    self.overflow_events.append((name, self._max_series))
                series.overflowed += points
                return self._state(name, spec, _OVERFLOW_KEY)
            state = series.states[key] = series.new_state()
            series.attributes[key] = dict(key)
        return state

    def _series_for(self, name: str, spec: MetricSpec) -> _MetricSeries:
        """The series of ``name`` under ``spec``. Re-registered with another kind or other
        bucket bounds, the metric starts over: old states cannot hold the new values."""
        series = self._metrics.get(name)
        if series is not None:
            old = series.spec
            if (old.kind is spec.kind and old.boundaries == spec.boundaries
                    and old.histogram == spec.histogram):
                series.spec = spec
                return series
            self.generation += 1  # states handed out under the old kind are void
        series = self._metrics[name] = _MetricSeries(spec, self._histogram, self._max_buckets)
        return series

    @property
    def start_ns(self) -> int:
        """When the current totals began (the last collect, with delta temporality)."""
        return self._start_ns

    def overflowed_points(self, name: str) -> int:
        """Points folded into the overflow series of one instrument so far."""
        series = self._metrics.get(name)
        return series.overflowed if series else 0

    def series_state(self, name: str, spec: MetricSpec, key: AttributeKey) -> State:
        """The state of one series (created, or the overflow series past ``max_series``).

        Callers may keep it and ``add()`` to it directly until ``generation`` changes.
        """
        return self._state(name, spec, key)

    def record(self, name: str, spec: MetricSpec, key: AttributeKey, value: float) -> None:
        """Add one finite value to a series."""
        self._state(name, spec, key).add(value)

    def record_columns(
        self, name: str, spec: MetricSpec, keys: Sequence[AttributeKey], values: np.ndarray
    ) -> int:
        """Add a [events, series] block in one vectorised pass; returns values skipped as
        non-finite. Column j of ``values`` belongs to the series ``keys[j]``."""
        finite = np.isfinite(values)
        counts = finite.sum(axis=0)
        skipped = int(values.size - counts.sum())
        kind = spec.kind
        if kind is InstrumentKind.HISTOGRAM and self._exponential(name, spec):
            for j in np.flatnonzero(counts).tolist():
                state = self._state(name, spec, keys[j], int(counts[j]))
                assert isinstance(state, ExponentialHistogramState)
                state.add_block(values[:, j][finite[:, j]])
        elif kind is InstrumentKind.HISTOGRAM:
            zeroed = np.where(finite, values, 0.0)
            sums = zeroed.sum(axis=0)
            mins = np.where(finite, values, np.inf).min(axis=0)
            maxs = np.where(finite, values, -np.inf).max(axis=0)
            n_buckets = len(spec.boundaries) + 1
            index = np.searchsorted(np.asarray(spec.boundaries), zeroed, side="left")
            flat = (np.arange(len(keys)) * n_buckets + index)[finite]
            bucket_counts = np.bincount(flat, minlength=len(keys) * n_buckets)
            bucket_counts = bucket_counts.reshape(len(keys), n_buckets)
            for j in np.flatnonzero(counts).tolist():
                state = self._state(name, spec, keys[j], int(counts[j]))
                assert isinstance(state, HistogramState)
                state.count += int(counts[j])
                state.sum += float(sums[j])
                state.min = min(state.min, float(mins[j]))
                state.max = max(state.max, float(maxs[j]))
                buckets = state.buckets
                for b in np.flatnonzero(bucket_counts[j]):
                    buckets[b] += int(bucket_counts[j, b])
        elif kind is InstrumentKind.GAUGE:
            for j in np.flatnonzero(counts).tolist():
                last = values[:, j][finite[:, j]][-1]
                self.record(name, spec, keys[j], float(last))
        else:
            sums = np.where(finite, values, 0.0).sum(axis=0)
            for j in np.flatnonzero(counts).tolist():
                self.record(name, spec, keys[j], float(sums[j]))
        return skipped

    def _exponential(self, name: str, spec: MetricSpec) -> bool:
        """Whether ``name`` under ``spec`` is an exponential histogram (creating its series)."""
        series = self._metrics.get(name)
        if series is None or series.spec is not spec:
            series = self._series_for(name, spec)
        return series.exponential

    def collect(self, now_ns: int) -> list[Metric]:
        """Snapshot every series as OTel ``Metric``s; with delta temporality, reset them."""
        temporality = (
            AggregationTemporality.DELTA if self._delta else AggregationTemporality.CUMULATIVE
        )
        out: list[Metric] = []
        for name, series in self._metrics.items():
            data = _series_data(series, temporality, self._start_ns, now_ns)
            if data is not None:
                spec = series.spec
                out.append(Metric(name=name, description=spec.description, unit=spec.unit,
                                  data=data))
        if self._delta:
            for series in self._metrics.values():
                if series.spec.kind is not InstrumentKind.GAUGE:
                    series.states.clear()
                    series.attributes.clear()
            self._start_ns = now_ns
            self.generation += 1
        return out


def _series_data(
    series: _MetricSeries, temporality: AggregationTemporality, start: int, now_ns: int
) -> Histogram | ExponentialHistogram | Sum | Gauge | None:
    """One metric's OTel data: its points with a value, None when it has none."""
    spec = series.spec
    kind = spec.kind
    if kind is InstrumentKind.HISTOGRAM and series.exponential:
        epoints: list[ExponentialHistogramDataPoint] = [
            st.point(series.attributes[key], start, now_ns)
            for key, st in series.states.items()
            if isinstance(st, ExponentialHistogramState) and st.count
        ]
        return ExponentialHistogram(data_points=epoints, aggregation_temporality=temporality) \
            if epoints else None
    if kind is InstrumentKind.HISTOGRAM:
        hpoints = [
            HistogramDataPoint(
                attributes=series.attributes[key],
                start_time_unix_nano=start,
                time_unix_nano=now_ns,
                count=st.count,
                sum=st.sum,
                bucket_counts=list(st.buckets),
                explicit_bounds=list(spec.boundaries),
                min=st.min,
                max=st.max,
            )
            for key, st in series.states.items()
            if isinstance(st, HistogramState) and st.count
        ]
        return Histogram(data_points=hpoints, aggregation_temporality=temporality) \
            if hpoints else None
    npoints = [
        NumberDataPoint(attributes=series.attributes[key], start_time_unix_nano=start,
                        time_unix_nano=now_ns, value=st.value)
        for key, st in series.states.items()
        if isinstance(st, (SumState, GaugeState))
    ]
    if not npoints:
        return None
    if kind is InstrumentKind.GAUGE:
        return Gauge(data_points=npoints)
    return Sum(data_points=npoints, aggregation_temporality=temporality,
               is_monotonic=kind is InstrumentKind.COUNTER)
