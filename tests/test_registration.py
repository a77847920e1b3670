"""register_metric options: instrument kind, unit, boundaries, attributes, names."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from otel_sparse import InstrumentKind, MicroMetricLogger
from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES, instrument_name
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import read_jsonl


def _logger(cls: type[MicroMetricLogger], path: Path, sink: InMemoryMetricExporter
            ) -> MicroMetricLogger:
    return cls(log_path=str(path), enabled_metrics="all", exporters=[sink])


class TestDefaults:
    """What a bare register_metric(identifier, dtype) becomes."""

    def test_float_is_a_histogram_fine_over_unit_interval(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """float -> histogram, unit "1", bounds fine over [0, 1] with a few beyond."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("density", float)
        logger = _logger(fresh_logger, tmp_path, sink)
        logger.log("density", 0.42, {"layer_idx": 2, "head_idx": 5})
        logger.flush()
        point = sink.histogram("sparse_attention.density", layer=2, head=5)
        assert tuple(point.explicit_bounds) == DEFAULT_FLOAT_BOUNDARIES
        assert sum(b <= 1.0 for b in point.explicit_bounds) >= 20
        assert max(point.explicit_bounds) > 1.0
        assert point.sum == 0.42

    def test_int_is_a_histogram_and_str_stays_in_the_event_file(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """int -> histogram; str -> event file only (no metric, no drop)."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("kept_tokens", int)
        fresh_logger.register_metric("mask_kind", str)
        logger = _logger(fresh_logger, tmp_path, sink)
        logger.log("kept_tokens", 128, {"layer": 0})
        logger.log("mask_kind", "topk", {"layer": 0})
        logger.flush()
        assert sink.histogram("sparse_attention.kept_tokens", layer=0).sum == 128
        assert sink.points("sparse_attention.mask_kind") == []
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [128, "topk"]

    def test_layer_and_head_aliases_and_undeclared_keys(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """layer/layer_idx -> layer, head/head_idx -> head; other keys stay in the event file."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("density", float)
        logger = _logger(fresh_logger, tmp_path, sink)
        logger.log("density", 0.5, {"layer": 1, "head_idx": 2, "seq_len": 4096})
        logger.flush()
        (point,) = sink.points("sparse_attention.density")
        assert dict(point.attributes) == {"layer": 1, "head": 2}
        assert read_jsonl(tmp_path / "micro_metrics.jsonl")[0]["metadata"]["seq_len"] == 4096


class TestOptions:
    """Keyword options describe the OTel instrument."""

    def test_counter_gauge_and_up_down_counter(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Counters sum, gauges keep the last value, up-down counters go both ways."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("tokens", int, kind="counter", unit="{token}")
        fresh_logger.register_metric("kv_bytes", float, kind=InstrumentKind.GAUGE, unit="By")
        fresh_logger.register_metric("live_blocks", int, kind="up_down_counter")
        logger = _logger(fresh_logger, tmp_path, sink)
        for v in (3, 4, -1):
            logger.log("tokens", v)
            logger.log("kv_bytes", float(v * 100))
            logger.log("live_blocks", v)
        logger.flush()
        assert sink.value("sparse_attention.tokens") == 7  # the negative one is dropped
        assert sink.value("otel_sparse.events.dropped", metric="tokens",
                          reason="negative_counter") == 1
        assert sink.value("sparse_attention.kv_bytes") == -100.0
        assert sink.value("sparse_attention.live_blocks") == 6

    def test_declared_attributes_boundaries_unit_description(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Declared metadata keys become attributes; bounds, unit and description apply."""
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("attention_time", float, unit="s", description="per call",
                                     boundaries=[0.001, 0.01], attributes=["stage"])
        logger = _logger(fresh_logger, tmp_path, sink)
        logger.log("attention_time", 0.005, {"layer": 3, "stage": "prefill", "step": 9})
        logger.flush()
        (point,) = sink.points("sparse_attention.attention_time")
        assert dict(point.attributes) == {"layer": 3, "stage": "prefill"}
        assert list(point.bucket_counts) == [0, 1, 0]
        metric = next(m for rm in sink.exports[-1].resource_metrics for sm in rm.scope_metrics
                      for m in sm.metrics if m.name == "sparse_attention.attention_time")
        assert (metric.unit, metric.description) == ("s", "per call")

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"kind": "summary"}, "summary"),
            ({"boundaries": [1.0, 0.5]}, "strictly increasing"),
            ({"kind": "counter", "boundaries": [1.0]}, "histograms only"),
            ({"unit": "µs"}, "UCUM"),
        ],
    )
    def test_bad_options_raise_at_registration(
        self, fresh_logger: type[MicroMetricLogger], options: dict[str, object], message: str
    ) -> None:
        """Options that cannot describe an instrument fail here, not later in log()."""
        with pytest.raises(ValueError, match=message):
            fresh_logger.register_metric("m", float, **options)  # type: ignore[arg-type]
        assert "m" not in fresh_logger.get_registered_metrics()


class TestNames:
    """Instrument names: <namespace>.<identifier>, valid OTel names."""

    def test_namespace_from_environment(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """OTEL_SPARSE_NAMESPACE replaces the default prefix."""
        monkeypatch.setenv("OTEL_SPARSE_NAMESPACE", "lab")
        sink = InMemoryMetricExporter()
        fresh_logger.register_metric("density", float)
        logger = _logger(fresh_logger, tmp_path, sink)
        logger.log("density", 0.5)
        logger.flush()
        assert sink.histogram("lab.density").count == 1

    @pytest.mark.parametrize(
        ("identifier", "expected"),
        [("density", "ns.density"), ("attn density/π", "ns.attn_density/_"),
         ("layer.3-err", "ns.layer.3-err")],
    )
    def test_invalid_characters_are_replaced(self, identifier: str, expected: str) -> None:
        """Characters OTel names do not allow become underscores."""
        assert instrument_name("ns", identifier) == expected


def _lines_run(call: Callable[[], object]) -> int:
    """Python lines executed by ``call()`` on this thread: an operation count, not a time."""
    count = 0

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


class TestScale:
    """Set-up work grows linearly with the number of identifiers (issue 11, item 8)."""

    def test_enable_all_is_linear_in_the_identifiers(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Twice the identifiers (one per layer and head): enable_metrics("all") runs at most
        about twice the lines. A scan of every name per new name made it four times."""
        counts = []
        for n in (150, 300):
            for i in range(n):
                fresh_logger.register_metric(f"density_l{i // 16}_h{i % 16}", float)
            logger = fresh_logger(log_path=str(tmp_path / str(n)), enabled_metrics="all",
                                  exporters=["jsonl"])
            counts.append(_lines_run(lambda lg=logger: lg.enable_metrics("all")))
            assert len(logger.get_enabled_metrics()) == n
            logger.close()
            fresh_logger._instance = None
            fresh_logger._initialized = False
        assert counts[1] < 2.5 * counts[0], counts


class TestEnabledAll:
    """``enabled_metrics="all"`` means all: identifiers registered later are enabled too."""

    def test_registered_after_start_run_all_is_logged(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A metric registered (or re-registered) after start_run("all") reaches the files."""
        import otel_sparse

        fresh_logger.register_metric("early", float)
        logger = otel_sparse.start_run(str(tmp_path), enabled_metrics="all")
        fresh_logger.register_metric("late", float)
        fresh_logger._registered_metrics.clear()  # as the hub's own tests do between cases
        fresh_logger.register_metric("again", float)
        logger.log("early", 0.1)
        logger.log("late", 0.2)
        logger.log("again", 0.3)
        otel_sparse.end_run()
        events = read_jsonl(tmp_path / "micro_metrics.jsonl")
        assert [(e["metric"], e["value"]) for e in events] == [
            ("early", 0.1), ("late", 0.2), ("again", 0.3)]
        assert logger.is_metric_enabled("late") and logger.is_metric_enabled("again")

    def test_a_later_enable_metrics_replaces_all(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """After enable_metrics([...]) the set is as chosen: a later registration stays off."""
        fresh_logger.register_metric("a", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        logger.enable_metrics(["a"])
        fresh_logger.register_metric("b", float)
        assert logger.get_enabled_metrics() == {"a"}
        logger.enabled_metrics = {"a"}  # the old attribute, assigned by hand: no "all" either
        fresh_logger.register_metric("c", float)
        assert logger.get_enabled_metrics() == {"a"}


class TestHints:
    """One-time hints through logging; the contract's stdout lines stay exactly as they are."""

    def test_unregistered_identifier_names_close_matches_once(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A typo in log() prints the contract line and logs one hint with the close match."""
        fresh_logger.register_metric("research_attention_density", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for _ in range(3):
                logger.log("research_attention_densty", 0.5)
        assert capsys.readouterr().out == (
            "Warning: Attempting to log metric 'research_attention_densty' which is not enabled\n")
        hints = [r.getMessage() for r in caplog.records if "never registered" in r.getMessage()]
        assert len(hints) == 1
        assert "'research_attention_densty'" in hints[0]
        assert "close matches: research_attention_density" in hints[0]

    def test_registered_but_disabled_gets_no_hint(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Only identifiers never registered get the hint."""
        fresh_logger.register_metric("a", float)
        fresh_logger.register_metric("b", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics=["a"])
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.log("b", 0.5)
        assert not [r for r in caplog.records if "never registered" in r.getMessage()]

    def test_enable_unregistered_hints_with_matches(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """enable_metrics with a typo: the contract line on stdout, the hint in logging."""
        fresh_logger.register_metric("output_error", float)
        logger = fresh_logger(log_path=str(tmp_path))
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.enable_metrics(["output_eror"])
            logger.log("output_eror", 1.0)  # same id: no second hint
        out = capsys.readouterr().out
        assert "Warning: Attempting to enable unregistered metrics: {'output_eror'}\n" in out
        hints = [r.getMessage() for r in caplog.records if "never registered" in r.getMessage()]
        assert len(hints) == 1 and "close matches: output_error" in hints[0]

    def test_no_close_match_says_so_without_a_list(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Nothing alike registered: the hint has no match list."""
        logger = fresh_logger(log_path=str(tmp_path))
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.log("zzz", 1.0)
        hints = [r.getMessage() for r in caplog.records if "never registered" in r.getMessage()]
        assert len(hints) == 1 and "close matches" not in hints[0]

    def test_log_path_after_a_bare_constructor_explains_once(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
    ) -> None:
        """MicroMetricLogger() then MicroMetricLogger(log_path=...): old behaviour, one note."""
        first = fresh_logger()
        with caplog.at_level("WARNING", logger="otel_sparse"):
            second = fresh_logger(log_path=str(tmp_path / "a"), enabled_metrics="all")
            fresh_logger(log_path=str(tmp_path / "b"))
        assert second is first and second.log_path is None  # the contract: only the first applies
        assert not (tmp_path / "a").exists()
        assert capsys.readouterr().out == ""
        notes = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
        assert len(notes) == 1
        assert "configure_logging(" in notes[0] and "start_run()" in notes[0]


SUFFIX_WARNING = "suffix reserved for histogram parts"


def _suffix_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SUFFIX_WARNING in r.getMessage()]


class TestHistogramSuffixes:
    """A gauge or up-down counter whose Prometheus name ends in _count, _sum or _bucket
    (OpenMetrics reserves them for histogram parts) is what the aggregation tier
    (collector-config/aggregation.yaml, matched by name only) would sum over ranks as a
    histogram part. One warning at registration, through logging; logging goes on."""

    @pytest.mark.parametrize(
        ("identifier", "kind", "unit", "suffix"),
        [
            ("live_blocks_count", "up_down_counter", "1", "_count"),  # no suffix for "1"
            ("tokens_count", "gauge", "{token}", "_count"),  # annotations add none
            ("kv_cache.sum", "gauge", "", "_sum"),  # dots become underscores
            ("free_bucket", "gauge", "", "_bucket"),
            ("tokens", "gauge", "count", "_count"),  # a unit kept as spelled
        ],
    )
    def test_warned_once_and_logged(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
        identifier: str, kind: str, unit: str, suffix: str,
    ) -> None:
        sink = InMemoryMetricExporter()
        with caplog.at_level("WARNING", logger="otel_sparse"):
            fresh_logger.register_metric(identifier, float, kind=kind, unit=unit)
            fresh_logger.register_metric(identifier, float, kind=kind, unit=unit)
            logger = _logger(fresh_logger, tmp_path, sink)
            logger.log(identifier, 3.0)
            logger.log(identifier, 2.0)
            logger.flush()
        (message,) = _suffix_warnings(caplog)
        cause = "unit" if unit == "count" else "identifier"
        for part in (repr(identifier), kind.replace("_", "-"), f"ends in {suffix}",
                     "aggregation.yaml", f"rename the {cause}"):
            assert part in message, (part, message)
        # stdout: only the contract's re-registration line
        assert capsys.readouterr().out == (
            f"Warning: Metric '{identifier}' is being re-registered\n")
        expected = 5.0 if kind == "up_down_counter" else 2.0
        assert sink.value(instrument_name("sparse_attention", identifier)) == expected

    @pytest.mark.parametrize(
        ("identifier", "kind", "unit"),
        [
            ("tokens_count", "gauge", "1"),  # -> ..._count_ratio
            ("tokens_count", "gauge", "s"),  # -> ..._count_seconds
            ("live_blocks_count", "up_down_counter", "By"),  # -> ..._count_bytes
            ("tokens_count", "counter", "1"),  # -> ..._count_total
            ("tokens_count", "histogram", "1"),  # -> ..._count_count, a histogram part
            ("account", "gauge", ""),  # not a suffix
            ("discount", "up_down_counter", "1"),
        ],
    )
    def test_no_warning_where_the_name_is_not_a_histogram_part(
        self, fresh_logger: type[MicroMetricLogger], caplog: pytest.LogCaptureFixture,
        identifier: str, kind: str, unit: str,
    ) -> None:
        with caplog.at_level("WARNING", logger="otel_sparse"):
            fresh_logger.register_metric(identifier, float, kind=kind, unit=unit)
        assert _suffix_warnings(caplog) == []
