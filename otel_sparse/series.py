"""Where each event's values go: its spec, instrument name, aggregator series and the value
rules of aggregation (finite, counters only go up, ints a float can hold, real tensors).

The writer's line engines (``otel_sparse.lines``) ask this book for an event's series state
and hand it what a batch adds (``BatchOut``); the book folds that into the ``Aggregator``.
No I/O here, and no cache whose absence would change a result.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from typing import Any

import numpy as np

from otel_sparse._instruments import (
    AttributeKey,
    InstrumentKind,
    MetricSpec,
    attribute_key,
    instrument_name,
)
from otel_sparse._values import real_number
from otel_sparse.aggregator import Aggregator, State, SumState, add_values
from otel_sparse.event import LogEvent, event_context

_logger = logging.getLogger("otel_sparse")


class BatchOut:
    """What one batch adds to the aggregate: its scalars by state, its arrays by series."""

    __slots__ = ("blocks", "numbers", "states")

    def __init__(self) -> None:
        self.states: list[State] = []
        self.numbers: list[float] = []
        self.blocks: dict[tuple[str, AttributeKey, tuple[int, ...]], list[np.ndarray]] = {}


class SeriesBook:
    """Specs, instrument names and aggregator series of one logger, and the drops they cost.

    Args:
        aggregator: where the values go.
        namespace: prefix of every instrument name.
        drops: a ``DropCounter`` (``add(reason, metric, n=1, why=None)``).
    """

    def __init__(self, aggregator: Aggregator, namespace: str, drops: Any) -> None:
        self.aggregator = aggregator
        self.namespace = namespace
        self.drops = drops
        self.specs: dict[str, MetricSpec] = {}
        """Identifier -> spec for every metric ever enabled on this logger."""
        self.names: dict[str, str] = {}
        """Identifier -> instrument name."""
        self._name_owners: dict[str, str] = {}
        """Instrument name -> the identifier exported under it: one lookup per new name."""
        self.logged: Counter[str] = Counter()
        """Events written per identifier (``otel_sparse.events.logged``)."""
        self._column_keys: dict[tuple[AttributeKey, tuple[int, ...]], list[AttributeKey]] = {}

    def enable(self, spec: MetricSpec) -> None:
        """Make ``spec`` the way its identifier is exported from now on."""
        self.specs[spec.identifier] = spec
        name = self._unique_name(spec.identifier)
        self.names[spec.identifier] = name
        self._name_owners.setdefault(name, spec.identifier)

    def _unique_name(self, identifier: str) -> str:
        """The instrument name of ``identifier``, with a short digest appended when another
        identifier already has that name (``"密度"`` and ``"注意"`` both clean to ``"__"``)."""
        name = instrument_name(self.namespace, identifier)
        other = self._name_owners.get(name, identifier)
        if other == identifier:
            return name
        try:
            text = repr(identifier)
        except Exception:
            text = type(identifier).__qualname__
        digest = hashlib.blake2s(text.encode("utf-8", "surrogatepass"), digest_size=4)
        unique = f"{name[:246]}_{digest.hexdigest()}"
        if self.names.get(identifier) != unique:
            _logger.warning(
                "otel_sparse: identifiers %r and %r both make the instrument name %s; "
                "exporting %r as %s", other, identifier, name, identifier, unique,
            )
        return unique

    # -- an event's series -------------------------------------------------------------

    def spec_and_key(self, ev: LogEvent) -> tuple[MetricSpec, AttributeKey] | None:
        """The spec and attribute set of an event; None if it only goes to the event file."""
        spec = self.specs.get(ev.metric)
        if spec is None or spec.kind is InstrumentKind.EVENTS_ONLY:
            return None
        metadata: Any = ev.metadata
        if not isinstance(metadata, dict):
            self.drops.add("invalid_metadata", ev.metric,
                           why=f"metadata must be a dict, got {type(metadata).__name__}")
            return spec, ()
        context = event_context(ev)
        if context is not None:
            metadata = {**context.values, **metadata}
        key, refused = attribute_key(spec, metadata)
        if refused:
            self.drops.add("invalid_attribute", ev.metric,
                           why=f"attribute values of {refused} are not str/int/float/bool")
        return spec, key

    def series_state(self, ev: LogEvent) -> tuple[State | None, bool]:
        """The aggregator state an event's scalar goes to (None: events only), and whether
        later events of the same metric, metadata and context may reuse it."""
        found = self.spec_and_key(ev)
        if found is None:
            return None, True
        spec, key = found
        name = self.names[ev.metric]
        before = self.aggregator.overflowed_points(name)
        state = self.aggregator.series_state(name, spec, key)
        # A point folded into the overflow series must pass through the aggregator each
        # time, or the overflow counter would count the attribute set only once.
        return state, self.aggregator.overflowed_points(name) == before

    def is_counter(self, metric: str, state: State | None) -> bool:
        """Whether ``state`` belongs to a counter, which refuses negative values."""
        return type(state) is SumState and self.specs[metric].kind is InstrumentKind.COUNTER

    # -- values ------------------------------------------------------------------------

    def add_number(self, metric: str, value: Any, state: State | None, out: BatchOut) -> None:
        """Stage a scalar for ``state``, or count why it cannot enter the aggregate."""
        if state is None:
            return
        tp = type(value)
        if tp is not float and tp is not int:
            value = real_number(value)
            tp = type(value)
        if tp is int:
            try:
                value = float(value)
            except OverflowError:
                self.drops.add("invalid_value", metric, why="integer too large for a float")
                return
            tp = float
        if tp is float and value - value == 0.0:
            if value < 0 and self.is_counter(metric, state):
                self.drops.add("negative_counter", metric, why="counters only go up")
            else:
                out.states.append(state)
                out.numbers.append(value)
        elif tp is float:
            self.drops.add("non_finite", metric, why="NaN/inf values are kept in the event "
                           "file but cannot enter a histogram sum")
        else:
            self.drops.add("invalid_value", metric,
                           why=f"metric values must be numbers, got {type(value).__name__}")

    def stage_array(self, ev: LogEvent, key: AttributeKey, array: np.ndarray,
                    out: BatchOut) -> None:
        """Stage a tensor's host copy for its series (real dtypes only)."""
        if array.dtype.kind not in "iuf":
            self.drops.add("invalid_value", ev.metric,
                           why=f"tensor values must be real numbers, got dtype {array.dtype}")
            return
        out.blocks.setdefault((ev.metric, key, array.shape), []).append(array)

    def apply(self, out: BatchOut) -> None:
        """Fold a batch into the aggregate; a failure is counted, never raised.

        ``logged`` is counted by the caller once the batch's lines are written."""
        try:
            add_values(out.states, out.numbers)
        except Exception as exc:  # the lines of the batch are written regardless
            self.drops.add("internal_error", "*", len(out.numbers),
                           why=f"{type(exc).__name__}: {exc}")
        for (metric, key, shape), arrays in out.blocks.items():
            try:
                self._record_block(metric, key, shape, arrays)
            except Exception as exc:  # the lines of the batch are written regardless
                self.drops.add("internal_error", str(metric), len(arrays),
                               why=f"{type(exc).__name__}: {exc}")

    def _record_block(
        self, metric: str, key: AttributeKey, shape: tuple[int, ...], arrays: list[np.ndarray]
    ) -> None:
        spec = self.specs[metric]
        values = np.stack(arrays).astype(np.float64, copy=False).reshape(len(arrays), -1)
        if values.shape[1] == 0:
            return
        keys = self._column_keys.get((key, shape))
        if keys is None:
            keys = self._column_keys[(key, shape)] = _column_keys(key, shape)
        skipped = self.aggregator.record_columns(self.names[metric], spec, keys, values)
        if skipped:
            self.drops.add("non_finite", metric, skipped,
                           why="NaN/inf values are kept in the event file but cannot enter a sum")


def _column_keys(key: AttributeKey, shape: tuple[int, ...]) -> list[AttributeKey]:
    """The attribute set of each column of a (heads,) or (layers, heads) tensor."""
    base = dict(key)
    if len(shape) == 0:
        return [key]
    if len(shape) == 1:
        return [tuple(sorted({**base, "head": h}.items())) for h in range(shape[0])]
    return [
        tuple(sorted({**base, "layer": layer, "head": h}.items()))
        for layer in range(shape[0])
        for h in range(shape[1])
    ]
