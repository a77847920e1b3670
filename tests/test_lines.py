"""The writer's fast path against its plain twin: same events in, same bytes and aggregates out.

``Pipeline(line_cache=False)`` writes every event with the reference encoder and looks up
its series afresh; the default engine remembers lines and states. Seeded random streams
(numbers of every magnitude, odd metadata, contexts, tensors, counters, NaN, new series in
the middle of a batch, random batch sizes) go through both; the event files must be equal
byte for byte and the collections equal (tensor sums within 1 ulp). Loosening the line
cache's one accept rule must make that check fail: each mutation below is applied to the
rule and must be caught.
"""

from __future__ import annotations

import enum
import math
import random
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otel_sparse._instruments import InstrumentKind, make_spec
from otel_sparse.aggregator import SumState
from otel_sparse.config import Settings
from otel_sparse.event import EventContext, LogEvent
from otel_sparse.lines import CachedLines, PlainLines, accept, encode_event
from otel_sparse.pipeline import DropCounter, Pipeline

NAN, INF = float("nan"), float("inf")


class Color(enum.Enum):
    RED = 1


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    """A str subclass: written like a str by json, refused by orjson's key text."""


class Ratio(float):
    """A float subclass: json writes it with float.__repr__, the rule never takes it."""


METRICS = {  # identifier -> (dtype, kind, attributes)
    "hist": (float, InstrumentKind.HISTOGRAM, ("x", "stage")),
    "cnt": (int, InstrumentKind.COUNTER, ()),
    "updown": (int, InstrumentKind.UP_DOWN_COUNTER, ()),
    "gauge": (float, InstrumentKind.GAUGE, ()),
    "heads": (float, InstrumentKind.HISTOGRAM, ()),
    "text": (str, InstrumentKind.EVENTS_ONLY, ()),
}
LOCATIONS = ["model.Attention.forward", "model.Masker.apply", "train.step"]
T0 = datetime(2026, 12, 6, 23, 0, 0)


def _floats(rng: random.Random) -> float:
    choice = rng.random()
    if choice < 0.35:
        return rng.uniform(-1.0, 1.0)
    if choice < 0.7:  # every magnitude, subnormals to near overflow
        return rng.choice((-1.0, 1.0)) * math.pow(10.0, rng.uniform(-323, 308))
    special: list[float] = [0.0, -0.0, 5e-324, 1e-5, 1e-7, 1.5e-4, 1e16, 123456789.0, 0.1,
                            NAN, INF, -INF, sys.float_info.max, -sys.float_info.max]
    return rng.choice(special)


def _ints(rng: random.Random) -> int:
    return rng.choice([0, 1, -1, 7, -7, 2**53 + 1, 2**63, 2**63 + 1, -(2**63), -(2**63) - 1,
                       10**400, -(10**400), rng.randrange(-10**6, 10**6)])


def _odd_value(rng: random.Random) -> Any:
    return rng.choice([True, False, None, "text", [1, 2.5], {"a": 1}, Ratio(0.5), Level.LOW,
                       Color.RED, 10**5000 if hasattr(sys, "get_int_max_str_digits") else 3,
                       np.float32(0.25), b"bytes"])


def _array(rng: random.Random) -> np.ndarray:
    shape = rng.choice([(4,), (2, 4), (3,)])
    kind = rng.random()
    if kind < 0.5:
        array = np.array([rng.uniform(-2, 2) for _ in range(math.prod(shape))], dtype=np.float32)
    elif kind < 0.7:
        array = np.array([rng.randrange(-5, 5) for _ in range(math.prod(shape))], dtype=np.int64)
    elif kind < 0.85:
        array = np.array([rng.choice([NAN, INF, 1.0, -2.5]) for _ in range(math.prod(shape))])
    else:
        array = np.array([rng.uniform(-1e-6, 1e-6) for _ in range(math.prod(shape))])
    return array.reshape(shape)


def _metadata(rng: random.Random, layers: int) -> Any:
    """Mostly the steady (layer, head) kind; sometimes anything the old API accepted."""
    if rng.random() < 0.7:
        return {"layer_idx": rng.randrange(layers), "head_idx": rng.randrange(4)}
    return rng.choice([
        {}, {"layer_idx": 1.0}, {"layer_idx": True}, {"x": 0.0}, {"x": -0.0}, {"x": NAN},
        {"x": INF}, {"x": -INF}, {"x": None}, {"x": (1, 2)}, {"x": [1, 2]}, {"x": [True, 2]},
        {"s": "a},{b"}, {"s": "ü\n\"q\""}, {"s": "\ud800"}, {1: "int key"}, {"x": Color.RED},
        {"x": Level.LOW}, {"x": uuid.UUID(int=5)}, {"x": T0}, {"x": 10**400},
        {"x": np.float64(1.5)}, {"x": {"a": 1}}, {"x": Name("n")}, {"s": "y" * 2000},
        {f"k{j}": j for j in range(70)}, {"x": 2.5, "stage": "decode"}, {"x": 1e300},
        [("not", "a dict")], {"x": 1}, {"x": 1.0},
    ])


def _context(rng: random.Random, contexts: list[EventContext | None]) -> EventContext | None:
    if rng.random() < 0.02:  # a new scope: step(i), a stage, or an unhashable value
        contexts.append(rng.choice([
            EventContext({"step": len(contexts)}),
            EventContext({"stage": rng.choice(["prefill", "decode"]), "step": len(contexts)}),
            EventContext({"ids": [1, 2]}),
            None,
        ]))
    return contexts[-1]


def _event(rng: random.Random, i: int, steady: bool, layers: int,
           contexts: list[EventContext | None]) -> LogEvent:
    metric = rng.choice(list(METRICS))
    stamp = T0 + timedelta(microseconds=i * rng.choice([1, 1_000_000]))  # some with .000000
    location = rng.choice(LOCATIONS)
    if steady:  # the usual batch of a run: plain numbers on series seen before
        metric = rng.choice(["hist", "cnt", "gauge"])
        value: Any = rng.uniform(0, 1) if metric != "cnt" else rng.randrange(5)
        if rng.random() < 0.03:  # now and then a value the rule must refuse
            value = rng.choice([NAN, INF, -1, -0.5, 10**400, True])
        metadata = {"layer_idx": rng.randrange(2), "head_idx": rng.randrange(2)}
        return LogEvent(stamp, metric, value, metadata, location)
    if metric == "heads":
        value = _array(rng) if rng.random() < 0.9 else _floats(rng)
    elif metric in ("cnt", "updown"):
        value = _ints(rng) if rng.random() < 0.8 else _floats(rng)
    elif metric == "text":
        value = rng.choice(["prefill", "", "ü", 3])
    else:
        roll = rng.random()
        value = _floats(rng) if roll < 0.6 else _ints(rng) if roll < 0.85 else _odd_value(rng)
    ev = LogEvent(stamp, metric, value, _metadata(rng, layers), location)
    context = _context(rng, contexts)
    if context is not None:
        ev.context = context
    return ev


def event_stream(seed: int, n: int) -> Iterator[list[LogEvent]]:
    """Batches of a random run: sizes as random flush_every values would hand over."""
    rng = random.Random(seed)
    flush_every = rng.choice([1, 4, 17, 60, 250])
    contexts: list[EventContext | None] = [None]
    i = 0
    while i < n:
        size = max(1, min(n - i, int(rng.expovariate(1 / flush_every)) + 1))
        steady = rng.random() < 0.4
        layers = 2 + i // 200  # new series keep arriving, in the middle of batches too
        yield [_event(rng, i + k, steady, layers, contexts) for k in range(size)]
        i += size


class _Owner:
    """The QueueOwner a pipeline needs: nothing is ever stale here."""

    def take_stale_queue(self, max_age_s: float) -> deque[LogEvent] | None:
        return None


def _pipeline(path: Path, owner: _Owner, line_cache: bool, settings: Settings) -> Pipeline:
    path.mkdir()
    pipeline = Pipeline(owner, str(path), settings, DropCounter(), line_cache=line_cache)
    for identifier, (dtype, kind, attributes) in METRICS.items():
        pipeline.enable(make_spec(identifier, dtype, kind=kind, attributes=attributes))
    return pipeline


def _points(pipeline: Pipeline) -> dict[tuple[str, Any], dict[str, Any]]:
    """Every data point of a collection, without its timestamps."""
    out = {}
    for resource in pipeline.collect().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    fields = {k: v for k, v in vars(point).items()
                              if k not in ("start_time_unix_nano", "time_unix_nano",
                                           "attributes", "exemplars")}
                    key = (metric.name, tuple(sorted((point.attributes or {}).items(),
                                                     key=repr)))
                    out[key] = fields
    return out


def _same_number(a: Any, b: Any, ulps: int) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b or abs(a - b) <= ulps * math.ulp(max(abs(a), abs(b)))
    return bool(a == b)


def _same_points(fast: dict[Any, Any], plain: dict[Any, Any]) -> list[str]:
    diffs = []
    for key in sorted(set(fast) | set(plain), key=repr):
        a, b = fast.get(key), plain.get(key)
        if a is None or b is None:
            diffs.append(f"{key}: only in {'fast' if b is None else 'plain'}")
            continue
        ulps = 1 if key[0].endswith(".heads") else 0  # tensors: summed column-wise
        diffs += [f"{key} {name}: fast {a.get(name)!r} != plain {b.get(name)!r}"
                  for name in sorted(set(a) | set(b))
                  if not _same_number(a.get(name), b.get(name), ulps)]
    return diffs


def differences(seed: int, tmp: Path, n: int = 1500) -> list[str]:
    """Run one random stream through both engines; what differs (empty: nothing)."""
    rng = random.Random(seed)
    settings = Settings(exporters=(), max_series=rng.choice([4, 16, 20000]),
                        temporality=rng.choice(["cumulative", "delta"]))
    return stream_differences(event_stream(seed, n), settings, tmp / f"seed{seed}")


def stream_differences(batches: Iterable[list[LogEvent]], settings: Settings,
                       tmp: Path) -> list[str]:
    """Run ``batches`` through both engines; what differs (empty: nothing)."""
    owner = _Owner()
    tmp.mkdir()
    fast = _pipeline(tmp / "fast", owner, True, settings)
    plain = _pipeline(tmp / "plain", owner, False, settings)
    assert isinstance(fast.lines, CachedLines) and type(plain.lines) is PlainLines
    diffs: list[str] = []
    try:
        for k, batch in enumerate(batches):
            plain.write_now(deque(batch), export=False)
            try:
                fast.write_now(deque(batch), export=False)
            except Exception as exc:  # a loosened rule may crash the fast path
                return [f"fast path raised {type(exc).__name__}: {exc}"]
            if k % 7 == 3:  # collections in between: delta starts new states
                diffs += _same_points(_points(fast), _points(plain))
        diffs += _same_points(_points(fast), _points(plain))
        if fast.drops.snapshot() != plain.drops.snapshot():
            diffs.append(f"drops: fast {fast.drops.snapshot()} != plain {plain.drops.snapshot()}")
    finally:
        fast.close()
        plain.close()
    fast_text = Path(fast.event_file.path).read_bytes().splitlines()
    plain_text = Path(plain.event_file.path).read_bytes().splitlines()
    diffs += [f"line {i}: fast {a!r} != plain {b!r}"
              for i, (a, b) in enumerate(zip(fast_text, plain_text)) if a != b][:5]
    if len(fast_text) != len(plain_text):
        diffs.append(f"{len(fast_text)} lines != {len(plain_text)} lines")
    return diffs


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_fast_and_plain_engines_agree(seed: int, tmp_path: Path) -> None:
    """Byte-equal event files, equal collections and drops, on a random run."""
    assert differences(seed, tmp_path) == []


def test_streams_reach_every_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streams exercise the whole-batch tier, the per-event tier and the plain steps."""
    calls: dict[str, int] = {"batch": 0, "one": 0, "refused": 0}
    rule = accept.accepts

    def counting(values: Any, floors: Any) -> bool:
        ok = rule(values, floors)
        calls["batch" if len(values) > 1 else "one"] += ok
        calls["refused"] += not ok
        return ok

    monkeypatch.setattr(accept, "accepts", counting)
    for seed in range(3):
        assert differences(seed, tmp_path) == []
    assert all(n > 0 for n in calls.values()), calls


def test_enum_and_uuid_never_take_their_plain_twins_line(tmp_path: Path) -> None:
    """orjson writes an Enum as its value and a UUID as its string: the same key text as the
    plain value logged before at the same place. The event still gets its own (repr) line."""
    def ev(i: int, metadata: dict[str, Any]) -> LogEvent:
        return LogEvent(T0 + timedelta(seconds=i), "hist", 0.5, metadata, LOCATIONS[0])

    uid = uuid.UUID(int=5)
    batches = [[ev(0, {"x": 1}), ev(1, {"x": str(uid)})], [ev(2, {"x": 1}), ev(3, {"x": str(uid)})],
               [ev(4, {"x": Color.RED}), ev(5, {"x": uid})], [ev(6, {"x": Color.RED})]]
    assert stream_differences(batches, Settings(exporters=()), tmp_path / "twins") == []
    lines = (tmp_path / "twins" / "fast" / "micro_metrics.jsonl").read_text().splitlines()
    assert '"metadata": {"x": "<Color.RED: 1>"}' in lines[4]
    assert "UUID(" in lines[5]


# -- the accept rule, loosened: each mutation must be caught ------------------------------

_RULE = accept.accepts
_METADATA_RULE = accept.accepts_metadata


def _nan_through(values: Any, floors: Any) -> bool:
    """Let NaN through: judge the other values only."""
    return _RULE([0.0 if type(v) is float and v != v else v for v in values], floors)


def _negative_counter(values: Any, floors: Any) -> bool:
    """Take a negative value on a counter's line."""
    return _RULE(values, [accept.ANY_FLOOR] * len(floors))


def _huge_int(values: Any, floors: Any) -> bool:
    """Take ints beyond 2**63."""
    bound = accept.INT_BOUND
    return _RULE([max(-bound, min(v, bound)) if type(v) is int else v for v in values], floors)


def _float_metadata(metadata: Any) -> bool:
    """Remember lines whose metadata holds any float, NaN and infinity included."""
    return type(metadata) is dict and accept.METADATA_VALUE_TYPES.issuperset(
        map(type, metadata.values()))


MUTATIONS: dict[str, tuple[str, Callable[..., bool]]] = {
    "nan_through": ("accepts", _nan_through),
    "negative_counter": ("accepts", _negative_counter),
    "int_above_2**63": ("accepts", _huge_int),
    "float_valued_metadata": ("accepts_metadata", _float_metadata),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_loosened_rule_is_caught(
    mutation: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the rule loosened, the differential check finds a difference on some seed."""
    name, loose = MUTATIONS[mutation]
    monkeypatch.setattr(accept, name, loose)
    assert any(differences(seed, tmp_path) for seed in SEEDS)


def test_mutations_are_looser_than_the_rule() -> None:
    """Each mutation accepts what the rule refuses (so a pass above means a real catch)."""
    assert not _RULE([NAN], [accept.ANY_FLOOR]) and _nan_through([NAN], [accept.ANY_FLOOR])
    assert not _RULE([-1], [accept.COUNTER_FLOOR])
    assert _negative_counter([-1], [accept.COUNTER_FLOOR])
    assert not _RULE([10**400], [accept.ANY_FLOOR]) and _huge_int([10**400], [accept.ANY_FLOOR])
    assert not _METADATA_RULE({"x": INF}) and _float_metadata({"x": INF})


# -- the switch ---------------------------------------------------------------------------


def test_variable_switches_the_fast_path_off(
    fresh_logger: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_SPARSE_LINE_CACHE=false: the logger's writer runs the plain engine."""
    fresh_logger.register_metric("hist", float)
    monkeypatch.setenv("OTEL_SPARSE_LINE_CACHE", "false")
    logger = fresh_logger(log_path=str(tmp_path / "off"), enabled_metrics="all")
    assert type(logger._pipeline.lines) is PlainLines
    logger.log("hist", 0.5, {"layer_idx": 1})
    logger.flush()
    logger.close()
    monkeypatch.setenv("OTEL_SPARSE_LINE_CACHE", "true")
    logger.configure_logging(str(tmp_path / "on"), "all")
    assert isinstance(logger._pipeline.lines, CachedLines)


def test_reference_encoder_is_json_dumps_of_the_record() -> None:
    """encode_event writes what json.dumps of the old asdict(event) wrote."""
    import json

    ev = LogEvent(T0, "hist", 0.25, {"layer_idx": 3, "x": [1, 2]}, "m.f")
    assert encode_event(ev, ev.value) == json.dumps(
        {"timestamp": T0.isoformat(), "metric": "hist", "value": 0.25,
         "metadata": {"layer_idx": 3, "x": [1, 2]}, "location": "m.f"})
    array = np.array([[1.0, 2.5], [NAN, 0.0]])
    line = json.loads(encode_event(ev, array))
    assert line["value"][0] == [1.0, 2.5] and math.isnan(line["value"][1][0])


def test_counter_state_is_refused_negative_values() -> None:
    """The floor a counter's remembered line gets refuses negative values (the rule's input)."""
    assert SumState is not None  # the state type the floor is decided by
    assert accept.accepts([0, 1.5], [accept.COUNTER_FLOOR, accept.COUNTER_FLOOR])
    assert not accept.accepts([0, -0.5], [accept.COUNTER_FLOOR, accept.ANY_FLOOR])
    assert accept.accepts([-0.5], [accept.ANY_FLOOR])
