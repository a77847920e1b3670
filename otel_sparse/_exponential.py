"""OTel exponential (base-2) histogram state: bucket index mapping and automatic scale.

A value v > 0 falls into bucket ``i`` at scale ``s`` when ``base**i < v <= base**(i + 1)``
with ``base = 2**(2**-s)``. Indices are computed once at ``MAX_SCALE`` and shifted right to
the series' current scale: an index at scale ``s - c`` is the index at ``s`` shifted right by
``c``, which is also how a series downscales when its range outgrows ``max_buckets``.

Scale rule (docs/configuration.md): a series starts at ``MAX_SCALE`` (8, the finest schema
Prometheus native histograms store, so what we export is what Prometheus keeps) and lowers its
scale by the least amount that keeps its positive and its negative buckets each within
``max_buckets`` consecutive indices (default 160, the OTel SDK default). Values in [1e-3, 1]
then sit at scale 4: a bucket is 4.4 % wide (``2**(1/16)``).

No I/O; the background writer is the only caller.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from opentelemetry.sdk.metrics._internal.point import Buckets
from opentelemetry.sdk.metrics.export import ExponentialHistogramDataPoint

MAX_SCALE = 8
"""Finest scale used: Prometheus native histograms (schema -4..8) store no finer one."""

MIN_SCALE = -4
"""Coarsest scale used (Prometheus' coarsest schema); a wider range keeps more buckets."""

DEFAULT_MAX_BUCKETS = 160
"""Buckets per sign before a series downscales (the OTel SDK default ``max_size``)."""

_SCALE_FACTOR = math.ldexp(1.0 / math.log(2), MAX_SCALE)


def index_at_max_scale(value: float) -> int:
    """The bucket index of one finite value > 0 at ``MAX_SCALE`` (exact at powers of two)."""
    mantissa, exponent = math.frexp(value)
    if mantissa == 0.5:  # an exact power of two is the upper bound of its bucket
        return ((exponent - 1) << MAX_SCALE) - 1
    return math.floor(math.log(value) * _SCALE_FACTOR)


def indices_at_max_scale(values: np.ndarray) -> np.ndarray:
    """``index_at_max_scale`` of every element of a float array of values > 0 (int64)."""
    mantissa, exponent = np.frexp(values)
    index = np.floor(np.log(values) * _SCALE_FACTOR).astype(np.int64)
    exact = mantissa == 0.5
    if exact.any():
        index[exact] = ((exponent[exact].astype(np.int64) - 1) << MAX_SCALE) - 1
    return index  # type: ignore[no-any-return]


def bucket_bound(index: int, scale: int) -> float:
    """The lower bound ``base**index`` of bucket ``index`` at ``scale`` (its upper: index + 1)."""
    if scale <= 0:
        return math.ldexp(1.0, index << -scale)
    return math.ldexp(2.0 ** ((index % (1 << scale)) / (1 << scale)), index >> scale)


def _downscale_needed(lo: int, hi: int, max_buckets: int) -> int:
    change = 0
    while (hi >> change) - (lo >> change) + 1 > max_buckets:
        change += 1
    return change


class ExponentialHistogramState:
    """count, sum, min, max, zero count and base-2 buckets of one series (auto scale)."""

    __slots__ = ("count", "max", "max_buckets", "min", "negative", "positive", "scale", "sum",
                 "zero_count")

    def __init__(self, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.scale = MAX_SCALE
        self.zero_count = 0
        self.positive: dict[int, int] = {}
        """bucket index at ``scale`` -> count, for values > 0"""
        self.negative: dict[int, int] = {}
        """bucket index at ``scale`` -> count, for the magnitudes of values < 0"""

    def add(self, value: float) -> None:
        """Add one finite value (the scalar path; ``add_block`` is its vectorised twin)."""
        self.count += 1
        self.sum += value
        if value < self.min:  # noqa: PLR1730
            self.min = value
        if value > self.max:  # noqa: PLR1730
            self.max = value
        if value == 0:
            self.zero_count += 1
            return
        buckets = self.positive if value > 0 else self.negative
        index = index_at_max_scale(abs(value)) >> (MAX_SCALE - self.scale)
        if index in buckets:
            buckets[index] += 1
            return
        self._fit(index, index, buckets)
        index = index_at_max_scale(abs(value)) >> (MAX_SCALE - self.scale)
        buckets[index] = buckets.get(index, 0) + 1

    def add_block(self, values: np.ndarray) -> None:
        """Add a 1-D array of finite values: the same buckets as ``add`` one by one."""
        if not values.size:
            return
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))
        self.zero_count += int(np.count_nonzero(values == 0))
        for buckets, part in ((self.positive, values[values > 0]),
                              (self.negative, -values[values < 0])):
            if not part.size:
                continue
            at_max = indices_at_max_scale(part)
            shift = MAX_SCALE - self.scale
            self._fit(int(at_max.min()) >> shift, int(at_max.max()) >> shift, buckets)
            index, counts = np.unique(at_max >> (MAX_SCALE - self.scale), return_counts=True)
            for i, n in zip(index.tolist(), counts.tolist()):
                buckets[i] = buckets.get(i, 0) + n

    def _fit(self, lo: int, hi: int, buckets: dict[int, int]) -> None:
        """Downscale (both signs) until ``buckets`` plus indices lo..hi span max_buckets."""
        if buckets:
            lo = min(lo, *buckets)
            hi = max(hi, *buckets)
        change = min(_downscale_needed(lo, hi, self.max_buckets), self.scale - MIN_SCALE)
        if change <= 0:
            return
        self.scale -= change
        for old in (self.positive, self.negative):
            merged: dict[int, int] = {}
            for i, n in old.items():
                merged[i >> change] = merged.get(i >> change, 0) + n
            old.clear()
            old.update(merged)

    def point(
        self, attributes: dict[str, Any], start_ns: int, now_ns: int
    ) -> ExponentialHistogramDataPoint:
        """This state as an OTel data point."""
        return ExponentialHistogramDataPoint(
            attributes=attributes,
            start_time_unix_nano=start_ns,
            time_unix_nano=now_ns,
            count=self.count,
            sum=self.sum,
            scale=self.scale,
            zero_count=self.zero_count,
            positive=_buckets(self.positive),
            negative=_buckets(self.negative),
            flags=0,
            min=self.min,
            max=self.max,
        )


def _buckets(counts: dict[int, int]) -> Buckets:
    if not counts:
        return Buckets(offset=0, bucket_counts=[])
    lo, hi = min(counts), max(counts)
    return Buckets(offset=lo, bucket_counts=[counts.get(i, 0) for i in range(lo, hi + 1)])


def merge_points(
    points: list[tuple[int, int, int, list[int], int, list[int]]],
) -> tuple[int, int, Buckets, Buckets]:
    """Add up exponential histograms given as (scale, zero_count, positive offset, positive
    counts, negative offset, negative counts): at the coarsest of their scales, exactly
    (delta rows of one series summed; no bucket limit applies).

    Returns (scale, zero_count, positive, negative).
    """
    scale = min(p[0] for p in points)
    zero = sum(p[1] for p in points)
    merged: tuple[dict[int, int], dict[int, int]] = ({}, {})
    for s, _, pos_offset, pos_counts, neg_offset, neg_counts in points:
        shift = s - scale
        for out, offset, counts in ((merged[0], pos_offset, pos_counts),
                                    (merged[1], neg_offset, neg_counts)):
            for j, n in enumerate(counts):
                if n:
                    i = (offset + j) >> shift
                    out[i] = out.get(i, 0) + int(n)
    return scale, zero, _buckets(merged[0]), _buckets(merged[1])


def flat_buckets(
    scale: int, zero_count: int, positive: Buckets, negative: Buckets
) -> tuple[list[float], list[int]]:
    """Exponential buckets as explicit ``(bounds, counts)``, ``len(counts) == len(bounds) + 1``.

    ``counts[i]`` counts the values between ``bounds[i - 1]`` and ``bounds[i]`` (the first and
    last bucket reach to -inf and +inf and hold nothing): the same shape as an explicit
    histogram row, so one pandas expression reads either kind.
    """
    intervals: list[tuple[float, float, int]] = []
    neg = list(negative.bucket_counts)
    for j in range(len(neg) - 1, -1, -1):
        i = negative.offset + j
        intervals.append((-bucket_bound(i + 1, scale), -bucket_bound(i, scale), int(neg[j])))
    if zero_count:
        intervals.append((math.nan, 0.0, int(zero_count)))  # (previous bound, 0]
    for j, n in enumerate(positive.bucket_counts):
        i = positive.offset + j
        intervals.append((bucket_bound(i, scale), bucket_bound(i + 1, scale), int(n)))
    bounds: list[float] = []
    counts: list[int] = []
    for lo, hi, n in intervals:
        if not bounds:
            if lo == lo:  # not the zero bucket: an empty (-inf, lo] first
                bounds.append(lo)
                counts.append(0)
        elif lo == lo and lo != bounds[-1]:
            bounds.append(lo)
            counts.append(0)
        bounds.append(hi)
        counts.append(n)
    counts.append(0)
    return bounds, counts
