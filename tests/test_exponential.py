"""Exponential histograms: the bucket mapping, the automatic scale, and the metrics.jsonl rows."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.sdk.metrics._internal.exponential_histogram.mapping.logarithm_mapping import (
    LogarithmMapping,
)

from otel_sparse import MicroMetricLogger
from otel_sparse._exponential import (
    MAX_SCALE,
    ExponentialHistogramState,
    bucket_bound,
    flat_buckets,
    index_at_max_scale,
    indices_at_max_scale,
)
from otel_sparse._instruments import make_spec
from otel_sparse.config import Settings
from tests._helpers import read_jsonl

DENSITY = "research_attention_density"


def _values(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([
        rng.random(2000), rng.lognormal(0.0, 6.0, 2000), -rng.random(500),
        2.0 ** np.arange(-40, 40), np.zeros(17),
    ])


class TestMapping:
    """Our index mapping against the OTel SDK's own (the plain twin)."""

    def test_scalar_and_vector_match_the_sdk(self) -> None:
        """Random values and exact powers of two land in the SDK's bucket at MAX_SCALE."""
        sdk = LogarithmMapping(MAX_SCALE)
        values = np.abs(_values())
        values = values[values > 0]
        expected = [sdk.map_to_index(float(v)) for v in values]
        assert [index_at_max_scale(float(v)) for v in values] == expected
        assert indices_at_max_scale(values).tolist() == expected

    @pytest.mark.parametrize("scale", [8, 5, 1, 0, -3])
    def test_bucket_holds_its_values(self, scale: int) -> None:
        """base**i < v <= base**(i+1) for the index of v shifted down to ``scale``."""
        for v in np.abs(_values(3))[:3000]:
            if v == 0:
                continue
            i = index_at_max_scale(float(v)) >> (MAX_SCALE - scale)
            lo, hi = bucket_bound(i, scale), bucket_bound(i + 1, scale)
            assert lo < v <= hi * (1 + 1e-12), (v, i, lo, hi)


class TestState:
    """Automatic scale: the least downscale that fits max_buckets; scalar == block."""

    def test_scalar_and_block_paths_agree(self) -> None:
        """add() one by one and add_block() in chunks give identical states."""
        values = _values()
        one, block = ExponentialHistogramState(), ExponentialHistogramState()
        for v in values:
            one.add(float(v))
        for chunk in np.array_split(values, 7):
            block.add_block(chunk)
        for field in ("count", "scale", "zero_count", "positive", "negative", "min", "max"):
            assert getattr(one, field) == getattr(block, field), field
        assert one.sum == pytest.approx(block.sum)
        assert one.count == len(values) and one.zero_count == 17

    @pytest.mark.parametrize("max_buckets", [160, 20, 2])
    def test_scale_is_the_finest_that_fits(self, max_buckets: int) -> None:
        """Values in [1e-3, 1]: each sign spans <= max_buckets; one scale finer would not."""
        values = np.geomspace(1e-3, 1.0, 500)
        state = ExponentialHistogramState(max_buckets)
        state.add_block(values)
        assert max(state.positive) - min(state.positive) + 1 <= max_buckets
        finer = indices_at_max_scale(values) >> (MAX_SCALE - state.scale - 1)
        assert state.scale == MAX_SCALE or int(finer.max() - finer.min()) + 1 > max_buckets
        if max_buckets == 160:
            assert state.scale == 4  # the figure docs/configuration.md quotes

    def test_flat_buckets_count_every_value_where_it_lies(self) -> None:
        """bucket_counts[i] counts the values in (bounds[i-1], bounds[i]]."""
        values = _values(11)
        state = ExponentialHistogramState()
        state.add_block(values)
        point = state.point({}, 0, 1)
        bounds, counts = flat_buckets(point.scale, point.zero_count, point.positive,
                                      point.negative)
        assert len(counts) == len(bounds) + 1 and sum(counts) == len(values)
        assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)
        # a negative value exactly on a bound is the one place the conventions differ
        on_edge = np.isin(values, bounds) & (values < 0)
        direct = np.bincount(np.searchsorted(bounds, values[~on_edge], side="left"),
                             minlength=len(counts))
        assert (direct <= np.asarray(counts)).all()
        assert int(np.asarray(counts).sum() - direct.sum()) == int(on_edge.sum())


class TestSpec:
    """Who gets exponential buckets."""

    def test_explicit_boundaries_timers_and_ints_stay_explicit(self) -> None:
        """boundaries= and int dtype fix explicit; a float left open follows the setting."""
        assert make_spec("a", float).histogram is None
        assert make_spec("a", float, boundaries=[0.5]).histogram == "explicit"
        assert make_spec("a", int).histogram == "explicit"
        assert make_spec("a", float, histogram="exponential").histogram == "exponential"
        with pytest.raises(ValueError, match="no boundaries"):
            make_spec("a", float, histogram="exponential", boundaries=[1.0])
        with pytest.raises(ValueError, match="histogram must be"):
            make_spec("a", float, histogram="native")

    def test_setting_default_and_variables(self, caplog: pytest.LogCaptureFixture) -> None:
        """explicit by default; OTEL_SPARSE_HISTOGRAM chooses; a typo warns and keeps it."""
        assert Settings.from_env({}).histogram == "explicit"
        assert Settings.from_env({}).histogram_max_buckets == 160
        env = {"OTEL_SPARSE_HISTOGRAM": "Exponential", "OTEL_SPARSE_HISTOGRAM_MAX_BUCKETS": "40"}
        settings = Settings.from_env(env)
        assert (settings.histogram, settings.histogram_max_buckets) == ("exponential", 40)
        assert Settings.from_env({"OTEL_SPARSE_HISTOGRAM": "native"}).histogram == "explicit"
        assert "OTEL_SPARSE_HISTOGRAM" in caplog.text


def _log_run(cls: type[MicroMetricLogger], path: Path) -> np.ndarray:
    """Scalars and [heads] tensors into one exponential metric; returns layer 0 head 1's values."""
    torch = pytest.importorskip("torch")
    cls.register_metric(DENSITY, float)
    cls.register_timer("step_time")
    cls.register_metric("tokens", int)
    logger = cls(log_path=str(path), enabled_metrics="all", exporters=["jsonl"])
    rng = np.random.default_rng(5)
    kept = []
    for step in range(60):
        heads = rng.random(4) ** 3
        heads[0] = -heads[0] if step % 5 == 0 else heads[0]
        heads[2] = 0.0 if step % 7 == 0 else heads[2]
        if step % 2:
            logger.log(DENSITY, torch.tensor(heads), {"layer": 0})
        else:
            for head, value in enumerate(heads.tolist()):
                logger.log(DENSITY, value, {"layer": 0, "head": head})
        kept.append(heads[1])
        logger.log("step_time", 0.001 * (step + 1), {})
        logger.log("tokens", step, {})
    logger.close()
    return np.asarray(kept)


class TestRows:
    """metrics.jsonl rows of exponential histograms, read with pandas and read_run."""

    def test_rows_carry_derived_and_raw_buckets(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Counts, sums, min/max exact; flat buckets hold every value; raw fields rebuild them."""
        monkeypatch.setenv("OTEL_SPARSE_HISTOGRAM", "exponential")
        head1 = _log_run(fresh_logger, tmp_path)
        rows = read_jsonl(tmp_path / "metrics.jsonl")
        last = {}
        for row in rows:
            last[(row["metric"], row["layer"], row["head"])] = row
        row = last[(f"sparse_attention.{DENSITY}", 0, 1)]
        assert row["type"] == "histogram" and row["count"] == 60
        assert row["sum"] == pytest.approx(float(head1.sum()))
        assert (row["min"], row["max"]) == (float(head1.min()), float(head1.max()))
        assert sum(row["bucket_counts"]) == 60
        assert len(row["bucket_counts"]) == len(row["bucket_bounds"]) + 1
        index = np.searchsorted(row["bucket_bounds"], head1, side="left")
        assert np.bincount(index, minlength=len(row["bucket_counts"])).tolist() == \
            row["bucket_counts"]
        scale = row["scale"]
        assert row["positive_offset"] == min(index_at_max_scale(float(v)) >> (MAX_SCALE - scale)
                                             for v in head1)
        assert sum(row["positive_counts"]) + sum(row["negative_counts"]) + row["zero_count"] \
            == 60
        head0 = last[(f"sparse_attention.{DENSITY}", 0, 0)]
        assert sum(head0["negative_counts"]) == 12 and head0["bucket_bounds"][0] < 0
        assert last[(f"sparse_attention.{DENSITY}", 0, 2)]["zero_count"] == 9
        # timers and int metrics keep explicit buckets
        timer = last[("sparse_attention.step_time", None, None)]
        tokens = last[("sparse_attention.tokens", None, None)]
        assert "scale" not in timer and "scale" not in tokens
        assert timer["bucket_bounds"][:2] == [1e-6, 5e-6]

    def test_read_run_exposes_them_and_summary_stays_exact(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """read_run types the raw columns; summarize's p50/p95 come from the events, exactly."""
        pytest.importorskip("pandas")
        from otel_sparse.analysis import read_run, summarize

        monkeypatch.setenv("OTEL_SPARSE_HISTOGRAM", "exponential")
        head1 = _log_run(fresh_logger, tmp_path)
        run = read_run(tmp_path)
        points = run.points
        density = points[(points["metric"] == f"sparse_attention.{DENSITY}") & (points["head"] == 1)]
        last = density.iloc[-1]
        assert str(points["scale"].dtype) == "Int64" and last["scale"] <= MAX_SCALE
        assert isinstance(last["positive_counts"], list)
        assert points[points.metric == "sparse_attention.step_time"]["scale"].isna().all()
        stats = summarize(run.events, by_head=True, metric=DENSITY)
        row = stats[(stats["layer"] == 0) & (stats["head"] == 1)].iloc[0]
        assert row["count"] == 60
        assert row["p50"] == pytest.approx(float(np.percentile(head1, 50)))
        assert row["p95"] == pytest.approx(float(np.percentile(head1, 95)))

    def test_unknown_point_types_warn(self, caplog: pytest.LogCaptureFixture) -> None:
        """A data type metrics.jsonl has no rows for is reported, not skipped silently."""
        from opentelemetry.sdk.metrics.export import (
            Metric,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
        )
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from otel_sparse.exporters import jsonl

        class Summary:
            data_points: tuple[object, ...] = ()

        metric = Metric(name="odd", description="", unit="1", data=Summary())  # type: ignore[arg-type]
        data = MetricsData(resource_metrics=[ResourceMetrics(
            resource=Resource({}), schema_url="",
            scope_metrics=[ScopeMetrics(scope=InstrumentationScope("x"), metrics=[metric],
                                        schema_url="")])])
        jsonl._warned_types.discard("Summary")
        assert jsonl.metrics_rows(data) == []
        assert "no rows for Summary points (metric odd)" in caplog.text


def test_bound_docstring_figure() -> None:
    """Scale 4 buckets are 2**(1/16) wide: 4.4 %, as docs/configuration.md says."""
    assert math.isclose(bucket_bound(1, 4) - 1, 0.0443, abs_tol=5e-5)


def test_delta_rows_merge_at_the_coarsest_scale(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Delta rows with different scales: totals() adds their raw buckets exactly."""
    pytest.importorskip("pandas")
    from otel_sparse.analysis import read_run

    monkeypatch.setenv("OTEL_SPARSE_HISTOGRAM", "exponential")
    monkeypatch.setenv("OTEL_SPARSE_TEMPORALITY", "delta")
    fresh_logger.register_metric(DENSITY, float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=["jsonl"])
    pipeline = logger._pipeline_or_start()
    logged = []
    for spread in (1.5, 10.0, 1e4):  # each delta row spans more: its scale drops
        values = [spread ** (k / 10) * 0.3 for k in range(-10, 11)] + [0.0, -spread]
        for v in values:
            logger.log(DENSITY, v, {"layer": 0, "head": 0})
        logged += values
        logger.flush()
        pipeline._export(wait_local=True)
    logger.close()
    run = read_run(tmp_path)
    points = run.points[run.points["metric"] == f"sparse_attention.{DENSITY}"]
    assert points["scale"].nunique() > 1
    total = run.totals()
    row = total[total["metric"] == f"sparse_attention.{DENSITY}"].iloc[0]
    assert row["count"] == len(logged) and row["scale"] == points["scale"].min()
    assert row["zero_count"] == 3 and sum(row["bucket_counts"]) == len(logged)
    bounds = row["bucket_bounds"]
    inner = np.asarray([v for v in logged if v not in bounds])
    direct = np.bincount(np.searchsorted(bounds, inner, side="left"),
                         minlength=len(row["bucket_counts"]))
    assert (direct <= np.asarray(row["bucket_counts"])).all()
