"""Bad input has a defined outcome: converted cleanly, or dropped, warned once and counted.

Every case logs a good value before and after the bad one, then checks each sink: the event
file (``micro_metrics.jsonl``, which keeps any value JSON can hold, as the old logger did)
and the metric side (``metrics.jsonl``, strict JSON, real numbers only, drops counted in
``otel_sparse.events.dropped{reason}``). ``log()`` never raises. docs/bad-input.md has the
table these cases check.
"""

from __future__ import annotations

import collections
import decimal
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.lines import reference as event_file
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import latest_points, read_jsonl

torch = pytest.importorskip("torch")
from torch.overrides import TorchFunctionMode  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"
DROPPED = "otel_sparse.events.dropped"
GOOD = {"layer_idx": 0}
"""Metadata of the good values logged around each bad one: series (layer 0, no head)."""
BAD = {"layer_idx": 1}
"""Metadata of most bad values: their own series, (layer 1, ...)."""
NO_LINE = object()
"""Expected event value of a case that ``log()`` refuses: no line at all."""


class BadRepr:
    """An object whose repr (and so str) raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr boom")


def _circular_list() -> list[Any]:
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


def _circular_dict() -> dict[str, Any]:
    loop: dict[str, Any] = {"layer_idx": 1}
    loop["self"] = loop
    return loop


def _strict_loads(line: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(line, parse_constant=refuse)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _points_of(values: Any, layer: int | None = 1, times: int = 2) -> dict[tuple[Any, Any], Any]:
    """The (count, sum) per (layer, head) series that logging ``values`` ``times`` gives."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 0:
        return {(layer, None): (times, times * float(array))}
    if array.ndim == 1:
        return {(layer, h): (times, times * float(v)) for h, v in enumerate(array)}
    return {(lay, h): (times, times * float(v))
            for lay, row in enumerate(array) for h, v in enumerate(row)}


@dataclass(frozen=True)
class Case:
    """One bad value: how to build it, and what each sink must show afterwards."""

    id: str
    make: Callable[[], Any]
    event: Any
    """The decoded event-file value, a predicate on it, or NO_LINE."""
    points: dict[tuple[Any, Any], Any] = field(default_factory=dict)
    """(count, sum) per new (layer, head) series after two logs; {} when none."""
    reason: str | None = None
    """The drop reason counted (with its one warning), or None."""
    drops: int = 2
    metadata: Any = field(default_factory=lambda: dict(BAD))
    repr_warning: bool = False
    """Whether the event file had to write a repr (warned once per process)."""


_HEADS = [0.5, 0.25, 0.125, 0.75]
_GRID = [[0.5, 0.25, 0.125], [0.75, 0.5, 0.25]]
_GRID_T = [[0.5, 0.75], [0.25, 0.5], [0.125, 0.25]]

VALUE_CASES = [
    # Python values
    Case("nan", lambda: math.nan, _is_nan, reason="non_finite"),
    Case("+inf", lambda: math.inf, math.inf, reason="non_finite"),
    Case("-inf", lambda: -math.inf, -math.inf, reason="non_finite"),
    Case("None", lambda: None, None, reason="invalid_value"),
    Case("True", lambda: True, True, reason="invalid_value"),
    Case("False", lambda: False, False, reason="invalid_value"),
    Case("numeric-str", lambda: "0.5", "0.5", reason="invalid_value"),
    Case("int", lambda: 3, 3, _points_of(3)),
    Case("float-sum-overflow", lambda: 1e308, 1e308, {(1, None): (2, None)}),  # sum: inf -> null
    Case("huge-int", lambda: 10**400, 10**400, reason="invalid_value"),
    Case("huge-int-beyond-str-limit", lambda: 10**5000, "<int of 16610 bits>",
         reason="invalid_value", repr_warning=True),
    Case("complex", lambda: 1 + 2j, "(1+2j)", reason="invalid_value", repr_warning=True),
    Case("decimal", lambda: decimal.Decimal("0.5"), "Decimal('0.5')", reason="invalid_value",
         repr_warning=True),
    Case("list", lambda: [0.5, 0.25], [0.5, 0.25], reason="invalid_value"),
    Case("dict", lambda: {"a": 1, "b": [None]}, {"a": 1, "b": [None]}, reason="invalid_value"),
    Case("bytes", lambda: b"\x00\xff", "b'\\x00\\xff'", reason="invalid_value",
         repr_warning=True),
    Case("object", object, lambda v: v.startswith("<object object at"), reason="invalid_value",
         repr_warning=True),
    Case("raising-repr", BadRepr, "<unrepresentable BadRepr>", reason="invalid_value",
         repr_warning=True),
    Case("circular-list", _circular_list, lambda v: v[0] == 1 and isinstance(v[1], list),
         reason="invalid_value", repr_warning=True),
    Case("list-of-tensors", lambda: [torch.tensor(0.5)], ["tensor(0.5000)"],
         reason="invalid_value", repr_warning=True),
    # numpy
    Case("np.float32", lambda: np.float32(0.5), 0.5, _points_of(0.5)),
    Case("np.int64", lambda: np.int64(3), 3, _points_of(3)),
    Case("np.bool_", lambda: np.bool_(True), True, reason="invalid_value"),
    Case("np.float64-nan", lambda: np.float64("nan"), _is_nan, reason="non_finite"),
    Case("np.longdouble", lambda: np.longdouble(0.5), 0.5, _points_of(0.5)),
    Case("np.complex64", lambda: np.complex64(1 + 1j), "(1+1j)", reason="invalid_value",
         repr_warning=True),
    Case("np-0d", lambda: np.array(0.5), 0.5, _points_of(0.5)),
    Case("np-heads", lambda: np.array(_HEADS), _HEADS, _points_of(_HEADS)),
    Case("np-layers-heads", lambda: np.array(_GRID), _GRID, _points_of(_GRID), metadata={}),
    Case("np-3d", lambda: np.ones((2, 2, 2)), NO_LINE, reason="tensor_rank"),
    Case("np-object", lambda: np.array([1, "a"], dtype=object), [1, "a"],
         reason="invalid_value"),
    Case("np-str", lambda: np.array(["a", "b"]), ["a", "b"], reason="invalid_value"),
    Case("np-empty", lambda: np.array([]), []),
    Case("np-heads-with-nan", lambda: np.array([math.nan, 0.5]),
         lambda v: _is_nan(v[0]) and v[1] == 0.5, {(1, 1): (2, 1.0)}, reason="non_finite"),
    # torch: ranks
    Case("t-0d", lambda: torch.tensor(0.5), 0.5, _points_of(0.5)),
    Case("t-heads", lambda: torch.tensor(_HEADS), _HEADS, _points_of(_HEADS)),
    Case("t-layers-heads", lambda: torch.tensor(_GRID), _GRID, _points_of(_GRID), metadata={}),
    Case("t-3d", lambda: torch.ones(4, 8, 8), NO_LINE, reason="tensor_rank"),
    Case("t-4d", lambda: torch.ones(1, 2, 3, 4), NO_LINE, reason="tensor_rank"),
    Case("t-heads-with-head-metadata", lambda: torch.tensor(_HEADS), NO_LINE,
         reason="tensor_metadata_clash", metadata={"layer_idx": 1, "head": 0}),
    # torch: dtypes
    Case("t-float64", lambda: torch.tensor(_HEADS, dtype=torch.float64), _HEADS,
         _points_of(_HEADS)),
    Case("t-float16", lambda: torch.tensor(_HEADS, dtype=torch.float16), _HEADS,
         _points_of(_HEADS)),
    Case("t-bfloat16", lambda: torch.tensor(_HEADS, dtype=torch.bfloat16), _HEADS,
         _points_of(_HEADS)),
    Case("t-int64", lambda: torch.tensor([1, 2, 3]), [1, 2, 3], _points_of([1, 2, 3])),
    Case("t-int8-negative", lambda: torch.tensor([-1, 2], dtype=torch.int8), [-1, 2],
         _points_of([-1, 2])),
    Case("t-uint8", lambda: torch.tensor([1, 2], dtype=torch.uint8), [1, 2], _points_of([1, 2])),
    Case("t-bool", lambda: torch.tensor([True, False]), [True, False], reason="invalid_value"),
    Case("t-complex", lambda: torch.tensor([1 + 2j]), ["(1+2j)"], reason="invalid_value",
         repr_warning=True),
    Case("t-heads-with-nan", lambda: torch.tensor([math.nan, 0.5]),
         lambda v: _is_nan(v[0]) and v[1] == 0.5, {(1, 1): (2, 1.0)}, reason="non_finite"),
    # torch: layouts, devices, autograd
    Case("t-empty", lambda: torch.empty(0), []),
    Case("t-empty-2d", lambda: torch.empty(0, 4), [], metadata={}),
    Case("t-meta", lambda: torch.empty(4, device="meta"), None, reason="unreadable_tensor"),
    Case("t-requires-grad", lambda: torch.tensor(_HEADS, requires_grad=True), _HEADS,
         _points_of(_HEADS)),
    Case("t-parameter", lambda: torch.nn.Parameter(torch.tensor(_HEADS)), _HEADS,
         _points_of(_HEADS)),
    Case("t-non-contiguous", lambda: torch.tensor(_GRID).t(), _GRID_T, _points_of(_GRID_T),
         metadata={}),
    Case("t-sparse-coo", lambda: torch.tensor(_HEADS).to_sparse(), _HEADS, _points_of(_HEADS)),
    Case("t-sparse-csr", lambda: torch.tensor(_GRID).to_sparse_csr(), _GRID, _points_of(_GRID),
         metadata={}),
    Case("t-neg-view", lambda: torch._neg_view(torch.tensor([-0.5])), [0.5], _points_of([0.5])),
    # other objects with a shape
    Case("pandas-series", lambda: pytest.importorskip("pandas").Series([0.5]),
         lambda v: isinstance(v, str) and "0.5" in v, reason="invalid_value", repr_warning=True),
]


@pytest.fixture
def logger(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MicroMetricLogger]:
    """A logger of one float histogram writing micro_metrics.jsonl and metrics.jsonl."""
    monkeypatch.setattr(event_file, "_warned_unserialisable", False)
    fresh_logger.register_metric(DENSITY, float)
    yield fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=["jsonl"])


def _sandwich(logger: MicroMetricLogger, value_of: Callable[[], Any], metadata: Any,
              identifier: Any = DENSITY) -> None:
    """Log a good value, the bad one twice, a good value; then flush. Nothing may raise."""
    logger.log(DENSITY, 0.25, dict(GOOD))
    logger.log(identifier, value_of(), metadata)  # raising here fails the test
    logger.log(identifier, value_of(), metadata)
    logger.log(DENSITY, 0.75, dict(GOOD))
    logger.flush()


def _dropped(path: Path) -> dict[tuple[Any, str], int]:
    """Latest otel_sparse.events.dropped value per (metric, reason)."""
    out: dict[tuple[Any, str], int] = {}
    for row in read_jsonl(path / "metrics.jsonl"):
        if row["metric"] == DROPPED:
            out[(row["attributes"]["metric"], row["attributes"]["reason"])] = row["value"]
    return out


def _check_files(path: Path) -> list[dict[str, Any]]:
    """Every line of every JSONL file parses; metrics.jsonl is strict JSON. The events."""
    for line in (path / "metrics.jsonl").read_text().splitlines():
        _strict_loads(line)
    return [json.loads(line) for line in (path / "micro_metrics.jsonl").read_text().splitlines()]


def _check_good_values_intact(path: Path, events: list[dict[str, Any]]) -> None:
    """The good values around a bad one are written, in order, and counted exactly."""
    good = [e for e in events if e["metadata"] == GOOD]
    assert [e["value"] for e in good] == [0.25, 0.75]
    assert events[0] == good[0] and events[-1] == good[1]
    row = latest_points(path / "metrics.jsonl", NAME)[(0, None)]
    assert (row["count"], row["sum"], row["min"], row["max"]) == (2, 1.0, 0.25, 0.75)


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


class TestValues:
    """Values of every kind: the event file keeps what JSON holds; metrics take real numbers."""

    @pytest.mark.parametrize("case", VALUE_CASES, ids=[c.id for c in VALUE_CASES])
    def test_value(
        self, case: Case, logger: MicroMetricLogger, tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The case's outcome holds in both sinks, the good values around it are untouched."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            _sandwich(logger, case.make, case.metadata)
        events = _check_files(tmp_path)
        _check_good_values_intact(tmp_path, events)
        bad = events[1:-1]
        if case.event is NO_LINE:
            assert bad == []
            assert logger.get_total_records_logged() == 2
        else:
            assert len(bad) == 2
            for event in bad:
                assert event["metadata"] == case.metadata
                if callable(case.event):
                    assert case.event(event["value"]), event["value"]
                else:
                    assert event["value"] == case.event
                    assert type(event["value"]) is type(case.event)
            assert logger.get_total_records_logged() == 4
        points = {k: (r["count"], r["sum"])
                  for k, r in latest_points(tmp_path / "metrics.jsonl", NAME).items()
                  if k != (0, None)}
        assert points == case.points
        dropped = _dropped(tmp_path)
        if case.reason is None:
            assert dropped == {}
        else:
            assert dropped == {(DENSITY, case.reason): case.drops}
            assert _warnings(caplog, f"reason={case.reason}") == 1
        assert _warnings(caplog, "JSON cannot hold") == (1 if case.repr_warning else 0)

    @pytest.mark.parametrize("make", [lambda: torch.ones(4, 8, 8), lambda: torch.ones(2, 2, 2, 2)],
                             ids=["3d", "4d"])
    def test_tensor_beyond_layers_heads_is_never_copied(
        self, make: Callable[[], Any], logger: MicroMetricLogger
    ) -> None:
        """A tensor beyond [layers, heads] is refused from its dim() alone: no clone, no copy."""
        tensor = make()
        seen: list[str] = []

        class Record(TorchFunctionMode):
            def __torch_function__(self, func: Any, types: Any, args: Any = (),
                                   kwargs: Any = None) -> Any:
                seen.append(getattr(func, "__name__", repr(func)))
                return func(*args, **(kwargs or {}))

        with Record():
            logger.log(DENSITY, tensor, {})
        assert set(seen) <= {"dim", "__get__"}, seen
        assert len(logger.log_queue) == 0

    @pytest.mark.cuda
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_cuda_heads_tensor(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """A [heads] tensor on the GPU is written and aggregated like a CPU one."""
        _sandwich(logger, lambda: torch.tensor(_HEADS, device="cuda"), dict(BAD))
        events = _check_files(tmp_path)
        _check_good_values_intact(tmp_path, events)
        assert [e["value"] for e in events[1:-1]] == [_HEADS, _HEADS]
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert {k: (r["count"], r["sum"]) for k, r in points.items() if k != (0, None)} == (
            _points_of(_HEADS))

    def test_nan_is_written_as_python_json_writes_it(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """NaN/Infinity appear in micro_metrics.jsonl exactly as json.dumps writes them."""
        for value in (math.nan, math.inf, -math.inf):
            logger.log(DENSITY, value)
        logger.flush()
        lines = (tmp_path / "micro_metrics.jsonl").read_text().splitlines()
        assert [line.split('"value": ')[1].split(",")[0] for line in lines] == [
            "NaN", "Infinity", "-Infinity"]

    def test_in_place_edit_of_a_logged_list_is_the_old_behaviour(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A list is kept by reference, as the old logger did: the file shows it at write time."""
        values = [0.5]
        logger.log(DENSITY, values)
        values.append(0.25)
        logger.flush()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [[0.5, 0.25]]


_MEGABYTE = "x" * (1 << 20)
_WIDE = {"layer_idx": 1, **{f"k{i}": i for i in range(10_000)}}


@dataclass(frozen=True)
class MetadataCase:
    """Odd metadata logged with the value 0.5: the event's metadata and the metric outcome."""

    id: str
    make: Callable[[], Any]
    event: Any
    """The decoded metadata, or a predicate on it."""
    series: tuple[Any, Any] | None = (1, None)
    """The (layer, head) series the value lands in."""
    reason: str | None = None
    repr_warning: bool = False


METADATA_CASES = [
    MetadataCase("none", lambda: None, {}, series=(None, None)),
    MetadataCase("ordered-dict", lambda: collections.OrderedDict(layer_idx=1), {"layer_idx": 1}),
    MetadataCase("list", lambda: [1, 2], [1, 2], series=(None, None), reason="invalid_metadata"),
    MetadataCase("str", lambda: "layer 1", "layer 1", series=(None, None),
                 reason="invalid_metadata"),
    MetadataCase("int", lambda: 7, 7, series=(None, None), reason="invalid_metadata"),
    MetadataCase("int-key", lambda: {1: "a", "layer_idx": 1}, {"1": "a", "layer_idx": 1}),
    MetadataCase("tuple-key", lambda: {(1, 2): "a", "layer_idx": 1},
                 {"(1, 2)": "a", "layer_idx": 1}, repr_warning=True),
    MetadataCase("object-value", lambda: {"layer_idx": 1, "o": object()},
                 lambda m: m["o"].startswith("<object object at"), repr_warning=True),
    MetadataCase("raising-repr-value", lambda: {"layer_idx": 1, "o": BadRepr()},
                 {"layer_idx": 1, "o": "<unrepresentable BadRepr>"}, repr_warning=True),
    MetadataCase("raising-repr-key", lambda: {"layer_idx": 1, BadRepr(): 1},
                 {"layer_idx": 1, "<unrepresentable BadRepr>": 1}, repr_warning=True),
    MetadataCase("tensor-layer", lambda: {"layer_idx": torch.tensor(1)},
                 {"layer_idx": "tensor(1)"}, series=(None, None), reason="invalid_attribute",
                 repr_warning=True),
    MetadataCase("numpy-layer", lambda: {"layer_idx": np.int64(1)}, {"layer_idx": 1},
                 repr_warning=True),
    MetadataCase("str-layer", lambda: {"layer_idx": "1"}, {"layer_idx": "1"}, series=("1", None)),
    MetadataCase("nested", lambda: {"layer_idx": 1, "n": {"a": [1, None, True, {"b": 0.5}]}},
                 {"layer_idx": 1, "n": {"a": [1, None, True, {"b": 0.5}]}}),
    MetadataCase("circular", _circular_dict,
                 lambda m: m["layer_idx"] == 1 and isinstance(m["self"], dict),
                 repr_warning=True),
    MetadataCase("10000-keys", lambda: dict(_WIDE), _WIDE),
    MetadataCase("megabyte-string", lambda: {"layer_idx": 1, "text": _MEGABYTE},
                 {"layer_idx": 1, "text": _MEGABYTE}),
    MetadataCase("unicode", lambda: {"layer_idx": 1, "名前": "密度\u2028\ud800"},
                 {"layer_idx": 1, "名前": "密度\u2028\ud800"}),
]


class TestMetadata:
    """Metadata that is not a flat dict of str keys still gives a parseable line."""

    @pytest.mark.parametrize("case", METADATA_CASES, ids=[c.id for c in METADATA_CASES])
    def test_metadata(
        self, case: MetadataCase, logger: MicroMetricLogger, tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The event keeps what JSON holds of the metadata; the value lands in one series."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.log(DENSITY, 0.25, dict(GOOD))
            logger.log(DENSITY, 0.5, case.make())
            logger.log(DENSITY, 0.5, case.make())
            logger.log(DENSITY, 0.75, dict(GOOD))
            logger.flush()
        events = _check_files(tmp_path)
        _check_good_values_intact(tmp_path, events)
        bad = events[1:-1]
        assert [e["value"] for e in bad] == [0.5, 0.5]
        for event in bad:
            if callable(case.event):
                assert case.event(event["metadata"])
            else:
                assert event["metadata"] == case.event
        points = {k: (r["count"], r["sum"])
                  for k, r in latest_points(tmp_path / "metrics.jsonl", NAME).items()
                  if k != (0, None)}
        assert points == {case.series: (2, 1.0)}
        dropped = _dropped(tmp_path)
        assert dropped == ({} if case.reason is None else {(DENSITY, case.reason): 2})
        if case.reason is not None:
            assert _warnings(caplog, f"reason={case.reason}") == 1
        assert _warnings(caplog, "JSON cannot hold") == (1 if case.repr_warning else 0)

    def test_distinct_huge_metadata_is_not_cached(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Long or wide metadata never enters the writer's caches (they would hold it alive)."""
        for i in range(20):
            logger.log(DENSITY, 0.5, {"layer_idx": 1, "text": f"{i}" + "x" * 5000})
            logger.log(DENSITY, 0.5, {"layer_idx": 1, **{f"k{j}": i for j in range(100)}})
        logger.flush()
        pipeline = logger._pipeline
        assert pipeline is not None
        assert len(pipeline.lines.encoder._metadata) <= 1  # only the good-sized ones are cached
        cached = pipeline.lines.cache._states
        assert all(len(repr(key)) < 4096 for key in cached)
        assert latest_points(tmp_path / "metrics.jsonl", NAME)[(1, None)]["count"] == 40


class TestIdentifiers:
    """Identifiers that are unregistered, not strings, unhashable or non-ASCII."""

    @pytest.mark.parametrize(
        ("identifier", "shown"),
        [("unregistered", "unregistered"), (5, "5"), (None, "None"), (("a", 1), "('a', 1)"),
         (["a"], "['a']"), ({"a": 1}, "{'a': 1}"), ("密度", "密度")],
        ids=["unregistered", "int", "None", "tuple", "list", "dict", "unicode"],
    )
    def test_not_enabled_prints_the_contract_warning_once(
        self, identifier: Any, shown: str, logger: MicroMetricLogger, tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Contract step 2, hashable or not: the old warning once per id, nothing written."""
        _sandwich(logger, lambda: 0.5, dict(BAD), identifier=identifier)
        out = capsys.readouterr().out
        warning = f"Warning: Attempting to log metric '{shown}' which is not enabled"
        assert out.count(warning) == 1
        events = _check_files(tmp_path)
        _check_good_values_intact(tmp_path, events)
        assert len(events) == 2
        assert _dropped(tmp_path) == {}

    def test_identifier_whose_str_raises_is_counted(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An identifier that cannot even be printed: counted as invalid_identifier, warned once."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            _sandwich(logger, lambda: 0.5, dict(BAD), identifier=BadRepr())
        events = _check_files(tmp_path)
        _check_good_values_intact(tmp_path, events)
        assert _dropped(tmp_path) == {("<BadRepr>", "invalid_identifier"): 2}
        assert _warnings(caplog, "reason=invalid_identifier") == 1

    @pytest.mark.parametrize(
        ("identifier", "in_file", "instrument"),
        [(5, 5, "sparse_attention.5"), (("a", 1), ["a", 1], "sparse_attention.__a___1_"),
         ("layer 3/err", "layer 3/err", "sparse_attention.layer_3/err")],
        ids=["int", "tuple", "spaces"],
    )
    def test_registered_non_str_identifiers_work(
        self, identifier: Any, in_file: Any, instrument: str,
        fresh_logger: type[MicroMetricLogger], tmp_path: Path,
    ) -> None:
        """Any hashable identifier the old logger accepted still logs; its name is made valid."""
        fresh_logger.register_metric(identifier, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.log(identifier, 0.5, dict(BAD))
        logger.flush()
        assert [e["metric"] for e in _check_files(tmp_path)] == [in_file]
        assert latest_points(tmp_path / "metrics.jsonl", instrument)[(1, None)]["count"] == 1

    def test_unhashable_identifier_is_refused_at_registration(
        self, fresh_logger: type[MicroMetricLogger]
    ) -> None:
        """register_metric(["a"], ...) raises a clear TypeError (configuration time)."""
        with pytest.raises(TypeError, match="metric identifiers must be strings"):
            fresh_logger.register_metric(["a"], float)  # type: ignore[arg-type]
        assert fresh_logger.get_registered_metrics() == {}

    def test_unicode_identifiers_stay_distinct_series(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Two non-ASCII ids that clean to the same name get distinct instruments (warned)."""
        fresh_logger.register_metric("密度", float)
        fresh_logger.register_metric("注意", float)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
            logger.log("密度", 0.5, dict(BAD))
            logger.log("注意", 0.25, dict(BAD))
            logger.log("注意", 0.25, dict(BAD))
            logger.flush()
        assert [e["metric"] for e in _check_files(tmp_path)] == ["密度", "注意", "注意"]
        rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                if r["metric"].startswith("sparse_attention.")]
        by_name = {r["metric"]: (r["count"], r["sum"]) for r in rows}
        assert sorted(by_name.values()) == [(1, 0.5), (2, 0.5)]
        plain = "sparse_attention.__"
        assert plain in by_name and len(by_name) == 2
        assert _warnings(caplog, "both make the instrument name") == 1
        logged = {r["attributes"]["metric"]: r["value"] for r in read_jsonl(tmp_path / "metrics.jsonl")
                  if r["metric"] == "otel_sparse.events.logged"}
        assert logged == {"密度": 1, "注意": 2}


class TestDtypes:
    """A value that does not match the registered dtype, and dtypes changed mid-run."""

    def test_string_for_a_float_metric(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """The string stays in the event file; the metric side counts invalid_value."""
        _sandwich(logger, lambda: "high", dict(BAD))
        events = _check_files(tmp_path)
        assert [e["value"] for e in events] == [0.25, "high", "high", 0.75]
        assert _dropped(tmp_path) == {(DENSITY, "invalid_value"): 2}

    def test_float_for_an_int_metric(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """An int metric takes floats as they are (a histogram holds any real number)."""
        fresh_logger.register_metric("tokens", int)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.log("tokens", 2.5)
        logger.flush()
        row = latest_points(tmp_path / "metrics.jsonl", "sparse_attention.tokens")[(None, None)]
        assert (row["count"], row["sum"]) == (1, 2.5)

    def test_number_for_a_str_metric(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A str metric is events-only: numbers stay in the event file, nothing is dropped."""
        fresh_logger.register_metric("pattern", str)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.log("pattern", 0.5)
        logger.log("pattern", "local")
        logger.flush()
        assert [e["value"] for e in _check_files(tmp_path)] == [0.5, "local"]
        assert not [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                    if r["metric"].startswith("sparse_attention.") or r["metric"] == DROPPED]

    def test_reregistration_with_another_kind_mid_run(
        self, logger: MicroMetricLogger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Histogram -> counter mid-run: the contract's warning; the new kind applies at once."""
        logger.log(DENSITY, 0.5, dict(BAD))
        logger.log(DENSITY, torch.tensor([0.5, 0.25]), dict(BAD))
        logger.flush()
        MicroMetricLogger.register_metric(DENSITY, float, kind="counter")
        assert f"Warning: Metric '{DENSITY}' is being re-registered" in capsys.readouterr().out
        for _ in range(3):
            logger.log(DENSITY, 1.0, dict(BAD))
            logger.log(DENSITY, torch.tensor([1.0, 2.0]), dict(BAD))
        logger.flush()
        events = _check_files(tmp_path)
        assert len(events) == 8
        rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["metric"] == NAME]
        last = {(r["type"], r["layer"], r["head"]): r for r in rows}
        assert last[("counter", 1, None)]["value"] == 3.0
        assert last[("counter", 1, 0)]["value"] == 3.0
        assert last[("counter", 1, 1)]["value"] == 6.0
        assert _dropped(tmp_path) == {}

    def test_reregistration_with_other_bounds_mid_run(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """New histogram bounds mid-run restart the metric's series under the new bounds."""
        logger.log(DENSITY, torch.tensor([0.5, 0.25]), dict(BAD))
        logger.flush()
        MicroMetricLogger.register_metric(DENSITY, float, boundaries=[0.0, 1.0, 10.0])
        logger.log(DENSITY, torch.tensor([5.0, 0.5]), dict(BAD))
        logger.log(DENSITY, 5.0, dict(BAD))
        logger.flush()
        last = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert last[(1, 0)]["bucket_bounds"] == [0.0, 1.0, 10.0]
        assert (last[(1, 0)]["count"], last[(1, 0)]["bucket_counts"]) == (1, [0, 0, 1, 0])
        assert (last[(1, None)]["count"], last[(1, None)]["sum"]) == (1, 5.0)
        assert _dropped(tmp_path) == {}

    def test_reregistration_as_str_mid_run(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Float -> str mid-run: later values only go to the event file, nothing is dropped."""
        logger.log(DENSITY, 0.5, dict(BAD))
        logger.flush()
        MicroMetricLogger.register_metric(DENSITY, str)
        logger.log(DENSITY, "dense", dict(BAD))
        logger.log(DENSITY, 0.75, dict(BAD))
        logger.flush()
        assert [e["value"] for e in _check_files(tmp_path)] == [0.5, "dense", 0.75]
        assert latest_points(tmp_path / "metrics.jsonl", NAME)[(1, None)]["count"] == 1
        assert _dropped(tmp_path) == {}


def _generator() -> Iterator[str]:
    yield DENSITY


class TestEnableMetrics:
    """Garbage given to enable_metrics enables nothing (the old rule) and says why."""

    @pytest.mark.parametrize(
        "metrics",
        [lambda: np.array([DENSITY]), _generator, lambda: {DENSITY: True}, lambda: (DENSITY,),
         lambda: DENSITY, lambda: 5],
        ids=["numpy-array", "generator", "dict", "tuple", "single-str", "int"],
    )
    def test_garbage_enables_nothing_with_a_warning(
        self, metrics: Callable[[], Any], logger: MicroMetricLogger, tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Anything but 'all', a list, a set or None: nothing enabled, one warning, no raise."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.enable_metrics(metrics())
        assert logger.get_enabled_metrics() == set()
        assert _warnings(caplog, "enable_metrics expects") == 1

    def test_list_of_unhashables_enables_the_rest(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Unhashable entries are skipped with a warning; registered strings are enabled."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.enable_metrics([[DENSITY], {"a": 1}, DENSITY, "unknown"])  # type: ignore[list-item]
        assert logger.get_enabled_metrics() == {DENSITY}
        assert _warnings(caplog, "ignored unhashable entries") == 1
        assert "Attempting to enable unregistered metrics: {'unknown'}" in capsys.readouterr().out


class TestConstructorArguments:
    """Odd constructor and configure_logging arguments: a default with a warning, or a raise."""

    @pytest.mark.parametrize("value", [None, "x", "5", math.nan, [1]],
                             ids=["None", "str", "numeric-str", "nan", "list"])
    def test_flush_every_not_a_number_takes_the_default(
        self, value: Any, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """flush_every that is not a number: warning, 1000, and logging works."""
        fresh_logger.register_metric(DENSITY, float)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                                  flush_every=value)
        assert logger.flush_every == 1000
        assert _warnings(caplog, "flush_every=") == 1
        logger.log(DENSITY, 0.5)
        assert len(logger.log_queue) == 1
        logger.flush()
        assert len(_check_files(tmp_path)) == 1

    @pytest.mark.parametrize("value", [-1, 0, 1])
    def test_flush_every_below_one_hands_over_every_event(
        self, value: int, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """flush_every <= 1 flushes on every log(), as the old `len(queue) >= flush_every` did."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_every=value)
        assert logger.flush_every == value
        for _ in range(3):
            logger.log(DENSITY, 0.5)
            assert len(logger.log_queue) == 0
        logger.flush()
        assert len(_check_files(tmp_path)) == 3

    def test_flush_every_beyond_the_queue_hands_over_before_it_is_full(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """flush_every=inf (or > maxlen) hands over with room to spare: the deque never drops."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all",
                              flush_every=math.inf)  # type: ignore[arg-type]
        assert logger.flush_every == math.inf
        for i in range(10_000):
            logger.log(DENSITY, 0.5)
            assert len(logger.log_queue) < logger.log_queue.maxlen, i  # type: ignore[operator]
        logger.flush()
        assert len(_check_files(tmp_path)) == 10_000

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("x", 1.0), (math.nan, 1.0), (None, 1.0), ("0.5", 0.5), (-3, 0.0), (5, 1.0),
         (math.inf, 1.0)],
        ids=["str", "nan", "None", "numeric-str", "negative", "above-one", "inf"],
    )
    def test_sampling_factor(
        self, value: Any, expected: float, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """sampling_factor: numbers are clamped to [0, 1]; anything else warns and keeps all."""
        logger = fresh_logger(log_path=str(tmp_path), sampling_factor=value)
        assert logger.get_sampling_factor() == expected

    @pytest.mark.parametrize("value", ["x", [1], object()], ids=["str", "list", "object"])
    def test_max_records_not_a_number_raises_at_construction(
        self, value: Any, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """max_records that is not a number raises a clear TypeError; no half-built singleton."""
        with pytest.raises(TypeError, match="max_records must be None or a number"):
            fresh_logger(log_path=str(tmp_path), max_records=value)
        assert fresh_logger._instance is None
        logger = fresh_logger(log_path=str(tmp_path), max_records=2)
        assert logger.get_max_records() == 2

    def test_max_records_nan_raises_at_construction(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """max_records=NaN would never stop nor count down: a ValueError at construction."""
        with pytest.raises(ValueError, match="max_records"):
            fresh_logger(log_path=str(tmp_path), max_records=math.nan)  # type: ignore[arg-type]

    def test_negative_max_records_records_nothing(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """max_records=-1 records nothing, as the old logger did, and now says so."""
        fresh_logger.register_metric(DENSITY, float)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", max_records=-1)
            logger.log(DENSITY, 0.5)
        assert _warnings(caplog, "max_records=-1 is negative") == 1
        assert logger.get_total_records_logged() == 0
        assert logger.get_records_remaining() == 0
        assert logger.is_max_records_reached()
        logger.flush()
        assert not (tmp_path / "micro_metrics.jsonl").exists()

    def test_configure_logging_with_bad_max_records_changes_nothing(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """configure_logging(max_records="x") raises before touching the configuration."""
        logger.log(DENSITY, 0.5)
        with pytest.raises(TypeError, match="max_records"):
            logger.configure_logging(str(tmp_path / "other"), max_records="x")  # type: ignore[arg-type]
        assert logger.log_path == str(tmp_path)
        assert logger.get_total_records_logged() == 1
        assert logger.is_metric_enabled(DENSITY)

    @pytest.mark.parametrize("value", ["x", None, math.nan], ids=["str", "None", "nan"])
    def test_flush_interval_not_a_number_takes_the_default(
        self, value: Any, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """flush_interval that is not a number: warning, 60.0 (the writer thread keeps going)."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger = fresh_logger(log_path=str(tmp_path), flush_interval=value)
        assert logger.flush_interval == 60.0
        assert _warnings(caplog, "flush_interval=") == 1


class TestCardinality:
    """Attribute sets come from metadata; the default limit fits 128 layers x 128 heads.

    Past the limit, points go to one overflow series (tests/test_pipeline.py::TestAggregation::
    test_cardinality_overflow_goes_to_one_series).
    """

    def test_default_limit_holds_128_layers_by_128_heads(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """16,384 (layer, head) series by tensor, per-layer tensors and scalars: no overflow."""
        layers = heads = 128
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=[sink])
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.log(DENSITY, torch.full((layers, heads), 0.5), {})
            for layer in range(layers):
                logger.log(DENSITY, torch.full((heads,), 0.25), {"layer_idx": layer})
                for head in range(heads):
                    logger.log(DENSITY, 0.125, {"layer_idx": layer, "head_idx": head})
            logger.flush()
        points = sink.points(NAME)
        assert len(points) == layers * heads
        assert {(p.attributes["layer"], p.attributes["head"])  # type: ignore[index]
                for p in points} == {
            (layer, head) for layer in range(layers) for head in range(heads)}
        assert {(p.count, p.sum) for p in points} == {(3, 0.875)}  # type: ignore[union-attr]
        with pytest.raises(KeyError):
            sink.value(DROPPED, metric=DENSITY, reason="cardinality_overflow")
        assert _warnings(caplog, "overflow") == 0


class TestRealSubclasses:
    """A float subclass (or any numbers.Real but bool) is a number."""

    def test_float_subclass_and_fraction_are_recorded(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """class Density(float) and Fraction values enter the histogram; nothing is dropped."""
        import fractions

        class Density(float):
            pass

        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("research_attention_density", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=[sink])
        for value in (Density(0.5), Density(0.25), fractions.Fraction(1, 4)):
            logger.log("research_attention_density", value, {"layer_idx": 0})
        logger.flush()
        point = sink.histogram("sparse_attention.research_attention_density")
        assert (point.count, point.sum) == (3, 1.0)
        with pytest.raises(KeyError):
            sink.value("otel_sparse.events.dropped", reason="invalid_value")
        lines = [json.loads(x) for x in (tmp_path / "micro_metrics.jsonl").read_text().splitlines()]
        assert [line["value"] for line in lines[:2]] == [0.5, 0.25]
        logger.close()
