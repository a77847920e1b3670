"""Tests of otel_sparse.analysis on runs logged through the facade with known values."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import otel_sparse
from otel_sparse import MicroMetricLogger
from otel_sparse.analysis import (
    AnalysisError,
    EventFollower,
    RunNotFoundError,
    UnknownMetricError,
    layer_head_matrix,
    read_run,
    summarize,
)

DENSITY = "research_attention_density"
ERROR = "research_attention_output_error"
STEPS, LAYERS, HEADS = 4, 3, 4
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")


def density_value(step: int, layer: int, head: int, rank: int) -> float:
    """The known density of one (step, layer, head, rank): a multiple of 1/8."""
    return ((step + layer + 2 * head + 3 * rank) % 8) / 8


def error_value(step: int, layer: int, head: int, rank: int) -> float:
    """The known output error of one (step, layer, head, rank): a multiple of 1/8."""
    return ((step * head + layer + rank) % 8) / 8


def log_known(run_dir: str, rank: int) -> None:
    """Log the known values of one rank: density as [heads] arrays, error as scalars."""
    if MicroMetricLogger.get_registered_metrics().get(DENSITY) is not float:
        MicroMetricLogger.register_metric(DENSITY, float)
        MicroMetricLogger.register_metric(ERROR, float)
    logger = otel_sparse.start_run(run_dir, params={"masker": "known", "k": 8})
    for step in range(STEPS):
        for layer in range(LAYERS):
            values = np.array([density_value(step, layer, h, rank) for h in range(HEADS)])
            logger.log(DENSITY, values, metadata={"layer_idx": layer})
            for head in range(HEADS):
                logger.log(ERROR, error_value(step, layer, head, rank),
                           metadata={"layer_idx": layer, "head_idx": head})
    otel_sparse.end_run(logger)


def expected(fn: Callable[[int, int, int, int], float], ranks: tuple[int, ...]) -> dict[tuple[int, int], list[float]]:
    """(layer, head) -> every value of that cell over steps and ranks."""
    out: dict[tuple[int, int], list[float]] = {}
    for rank in ranks:
        for step in range(STEPS):
            for layer in range(LAYERS):
                for head in range(HEADS):
                    out.setdefault((layer, head), []).append(fn(step, layer, head, rank))
    return out


@pytest.fixture
def clean(fresh_logger: type[MicroMetricLogger], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh singleton (conftest's reset, closed afterwards) writing only the jsonl files."""
    monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl")


def run_rank_subprocess(run_dir: Path, rank: int, run_id: str) -> int:
    """Log the known values as another rank in a child process; returns its pid."""
    code = (
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('known', {__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"mod.log_known({str(run_dir)!r}, {rank})\n"
        "print(os.getpid())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS and not k.startswith("OTEL_")}
    env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
               OTEL_SPARSE_RUN_ID=run_id, OTEL_SPARSE_EXPORTERS="jsonl")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    """A run folder written by rank 0 (this process) and rank 1 (a child); returns the child pid.

    Module scoped (the tests only read it), so it resets the singleton itself, the way
    conftest's fresh_logger does, and puts the registrations back afterwards.
    """
    run_dir = tmp_path_factory.mktemp("known") / "run"
    saved = dict(MicroMetricLogger._registered_metrics)
    saved_specs = dict(MicroMetricLogger._metric_specs)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith("OTEL_") or name in ENV_VARS:
                mp.delenv(name)
        mp.setenv("OTEL_SPARSE_EXPORTERS", "jsonl")
        mp.setenv("OTEL_SPARSE_RUN_ID", "known-run")
        mp.setenv("WORLD_SIZE", "2")
        MicroMetricLogger._instance = None
        MicroMetricLogger._initialized = False
        MicroMetricLogger._registered_metrics.clear()
        MicroMetricLogger._metric_specs.clear()
        try:
            log_known(str(run_dir), rank=0)
        finally:
            instance: MicroMetricLogger | None = getattr(MicroMetricLogger, "_instance", None)
            if instance is not None:
                instance.close()
            MicroMetricLogger._instance = None
            MicroMetricLogger._initialized = False
            MicroMetricLogger._registered_metrics.clear()
            MicroMetricLogger._registered_metrics.update(saved)
            MicroMetricLogger._metric_specs.clear()
            MicroMetricLogger._metric_specs.update(saved_specs)
    pid = run_rank_subprocess(run_dir, 1, "known-run")
    yield run_dir, pid


class TestReadRun:
    """read_run on a two-rank run of known values."""

    def test_events_explode_heads_and_merge_ranks(self, two_rank_run: tuple[Path, int]) -> None:
        """Every logged scalar is one row, with rank and pid from the file that held it."""
        run_dir, child_pid = two_rank_run
        data = read_run(run_dir)
        events = data.events
        per_rank = STEPS * LAYERS * HEADS
        assert len(events[events["metric"] == DENSITY]) == 2 * per_rank
        assert len(events[events["metric"] == ERROR]) == 2 * per_rank
        assert sorted(set(events["rank"].tolist())) == [0, 1]
        rank1 = events[events["rank"] == 1]
        assert set(rank1["pid"].tolist()) == {child_pid}
        assert set(rank1["file"].map(os.path.basename)) == {
            f"micro_metrics.rank1.pid{child_pid}.jsonl"
        }
        rank0 = events[events["rank"] == 0]
        assert set(rank0["pid"].tolist()) == {os.getpid()}

    def test_column_types(self, two_rank_run: tuple[Path, int]) -> None:
        """Timestamps are datetimes, values floats, layer/head nullable integers."""
        events = read_run(two_rank_run[0]).events
        assert pd.api.types.is_datetime64_any_dtype(events["timestamp"])
        assert events["value"].dtype == np.float64
        assert str(events["layer"].dtype) == "Int64"
        assert str(events["head"].dtype) == "Int64"
        assert events["timestamp"].is_monotonic_increasing
        assert set(events[events["rank"] == 0]["location"]) == {f"{__name__}.log_known"}

    def test_exact_means_per_layer_and_head(self, two_rank_run: tuple[Path, int]) -> None:
        """Means per (layer, head) over both ranks equal the known values exactly."""
        events = read_run(two_rank_run[0]).events
        for metric, fn in ((DENSITY, density_value), (ERROR, error_value)):
            rows = events[events["metric"] == metric]
            means = rows.groupby(["layer", "head"])["value"].mean()
            for (layer, head), values in expected(fn, (0, 1)).items():
                assert means[(layer, head)] == sum(values) / len(values)

    def test_points_totals_per_series(self, two_rank_run: tuple[Path, int]) -> None:
        """metrics.jsonl of both ranks: the last row per series holds the totals."""
        data = read_run(two_rank_run[0])
        assert sorted(set(data.points["rank"].dropna().tolist())) == [0, 1]
        assert str(data.points["count"].dtype) == "Int64"
        assert pd.api.types.is_datetime64_any_dtype(data.points["time"])
        totals = data.totals()
        hist = totals[totals["metric"] == f"sparse_attention.{DENSITY}"]
        assert len(hist) == 2 * LAYERS * HEADS  # one series per (layer, head) per rank
        merged = hist.groupby(["layer", "head"])[["count", "sum"]].sum()
        for (layer, head), values in expected(density_value, (0, 1)).items():
            assert merged.loc[(layer, head), "count"] == len(values)
            assert merged.loc[(layer, head), "sum"] == pytest.approx(sum(values))

    def test_manifest(self, two_rank_run: tuple[Path, int]) -> None:
        """Both ranks are in the manifest, with the params of the run."""
        data = read_run(two_rank_run[0])
        assert data.run_ids == ["known-run"]
        assert data.manifest["params"] == {"masker": "known", "k": 8}
        assert set(data.manifest["ranks"]) == {"0", "1"}

    def test_truncated_last_line_skipped_with_one_warning(
        self, two_rank_run: tuple[Path, int], caplog: pytest.LogCaptureFixture, tmp_path: Path
    ) -> None:
        """A last line cut mid-write (in two files) loses only that line, warned once."""
        run_dir = tmp_path / "copy"
        shutil.copytree(two_rank_run[0], run_dir)
        before = read_run(run_dir)
        with open(run_dir / "micro_metrics.jsonl", "ab") as f:
            f.write(b'{"timestamp": "2026-01-01T00:00:00", "metric": "research_attention_de')
        with open(run_dir / "metrics.jsonl", "ab") as f:
            f.write(b'{"time": "2026-01-01T00:')
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            after = read_run(run_dir)
        assert len(after.events) == len(before.events)
        assert len(after.points) == len(before.points)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "truncated last line" in warnings[0].getMessage()
        assert "micro_metrics.jsonl" in warnings[0].getMessage()


class TestSummaries:
    """summarize and layer_head_matrix on the known values."""

    def test_summarize_by_head_is_exact(self, two_rank_run: tuple[Path, int]) -> None:
        """count, mean, min, max, p50, p95 per (layer, head) match numpy on the known values."""
        stats = summarize(read_run(two_rank_run[0]).events, by_head=True, metric=DENSITY)
        assert len(stats) == LAYERS * HEADS
        cells = expected(density_value, (0, 1))
        for row in stats.to_dict("records"):
            values = np.array(cells[(int(row["layer"]), int(row["head"]))])
            assert row["count"] == len(values)
            assert row["mean"] == values.mean()
            assert row["min"] == values.min()
            assert row["max"] == values.max()
            assert row["p50"] == pytest.approx(np.percentile(values, 50), abs=1e-12)
            assert row["p95"] == pytest.approx(np.percentile(values, 95), abs=1e-12)

    def test_summarize_per_layer_pools_heads(self, two_rank_run: tuple[Path, int]) -> None:
        """Without by_head, a layer's row pools every head's values."""
        stats = summarize(read_run(two_rank_run[0]).events, metric="sparse_attention." + ERROR)
        assert list(stats["layer"]) == list(range(LAYERS))
        cells = expected(error_value, (0, 1))
        for row in stats.to_dict("records"):
            values = [v for (layer, _), vs in cells.items() if layer == row["layer"] for v in vs]
            assert row["count"] == len(values)
            assert row["mean"] == pytest.approx(sum(values) / len(values), abs=1e-15)

    def test_unknown_metric(self, two_rank_run: tuple[Path, int]) -> None:
        """An unknown metric names the metrics the run has."""
        events = read_run(two_rank_run[0]).events
        with pytest.raises(UnknownMetricError, match=DENSITY):
            summarize(events, metric="nope")
        with pytest.raises(UnknownMetricError):
            layer_head_matrix(events, "nope")

    def test_layer_head_matrix(self, two_rank_run: tuple[Path, int]) -> None:
        """The heatmap matrix holds the exact mean of each cell."""
        matrix, layers, heads = layer_head_matrix(read_run(two_rank_run[0]).events, DENSITY)
        assert layers == list(range(LAYERS))
        assert heads == list(range(HEADS))
        for (layer, head), values in expected(density_value, (0, 1)).items():
            assert matrix[layer, head] == sum(values) / len(values)


class TestShapesAndPaths:
    """Other value shapes, several runs, wrong and empty paths."""

    def test_layers_by_heads_tensor_and_scalars_without_layer(
        self, tmp_path: Path, clean: None
    ) -> None:
        """A [layers, heads] value takes layer and head from its position."""
        MicroMetricLogger.register_metric("grid", float)
        MicroMetricLogger.register_metric("loss", float)
        MicroMetricLogger.register_metric("note", str)
        logger = otel_sparse.start_run(str(tmp_path / "run"))
        logger.log("grid", np.arange(6, dtype=np.float64).reshape(2, 3) / 8)
        logger.log("loss", 0.5)
        logger.log("note", "hello")
        otel_sparse.end_run(logger)
        data = read_run(tmp_path / "run")
        grid = data.events[data.events["metric"] == "grid"]
        assert list(zip(grid["layer"], grid["head"], grid["value"])) == [  # columns of one frame
            (layer, head, (3 * layer + head) / 8) for layer in range(2) for head in range(3)
        ]
        loss = data.events[data.events["metric"] == "loss"]
        assert loss["layer"].isna().all() and loss["head"].isna().all()
        assert data.non_numeric == 1
        with pytest.raises(AnalysisError, match="layer/head"):
            layer_head_matrix(data.events, "loss")

    def test_several_runs_and_parent_folder(
        self, tmp_path: Path, clean: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A parent of runs reads every run; so does a list of run folders."""
        for run_id in ("run-a", "run-b"):
            monkeypatch.setenv("OTEL_SPARSE_RUN_ID", run_id)
            log_known(str(tmp_path / "runs" / run_id), rank=0)
        parent = read_run(tmp_path / "runs")
        assert sorted(parent.run_ids) == ["run-a", "run-b"]
        assert sorted(set(parent.events["run"])) == ["run-a", "run-b"]
        listed = read_run([tmp_path / "runs" / "run-a", tmp_path / "runs" / "run-b"])
        assert len(listed.events) == len(parent.events)
        by_run = summarize(parent.events, by_run=True)
        assert set(by_run["run"]) == {"run-a", "run-b"}

    def test_wrong_path(self, tmp_path: Path) -> None:
        """A path that does not exist raises RunNotFoundError."""
        with pytest.raises(RunNotFoundError, match="no such file"):
            read_run(tmp_path / "missing")

    def test_empty_folder_is_an_empty_run(self, tmp_path: Path) -> None:
        """An empty folder gives empty frames with every column."""
        data = read_run(tmp_path)
        assert data.events.empty
        assert "layer" in data.events.columns and "value" in data.events.columns
        assert data.points.empty and "count" in data.points.columns

    def test_file_path_reads_its_folder(self, two_rank_run: tuple[Path, int]) -> None:
        """A file inside a run folder stands for the run."""
        data = read_run(two_rank_run[0] / "micro_metrics.jsonl")
        assert sorted(set(data.events["rank"].tolist())) == [0, 1]

    def test_old_api_run_without_manifest(self, tmp_path: Path, clean: None) -> None:
        """A run written with log_path (no start_run) has no manifest but reads the same."""
        MicroMetricLogger.register_metric(DENSITY, float)
        logger = MicroMetricLogger(log_path=str(tmp_path / "old"), enabled_metrics="all")
        logger.log(DENSITY, 0.25, {"layer_idx": 2})
        logger.close()
        data = read_run(tmp_path / "old")
        assert data.manifest == {}
        assert data.run_ids == ["old"]
        assert data.events["value"].tolist() == [0.25]
        assert data.events["layer"].tolist() == [2]


class TestEventFollower:
    """The incremental reader behind ``otel-sparse tail``."""

    def test_partial_lines_wait_and_new_rank_files_are_picked_up(self, tmp_path: Path) -> None:
        """Only complete lines come out; a file that appears later is read from its start."""
        main = tmp_path / "micro_metrics.jsonl"

        def line(metric: str, ts: str) -> bytes:
            return json.dumps({"timestamp": ts, "metric": metric, "value": 0.5, "metadata": {},
                               "location": "m.f"}).encode() + b"\n"

        main.write_bytes(line("a", "2026-01-01T00:00:01") + line("b", "2026-01-01T00:00:02"))
        follower = EventFollower(tmp_path, last=1)
        assert [r["metric"] for _, r in follower.poll()] == ["b"]
        partial = line("c", "2026-01-01T00:00:03")
        with open(main, "ab") as f:
            f.write(partial[:10])
        assert follower.poll() == []
        with open(main, "ab") as f:
            f.write(partial[10:])
        (tmp_path / "micro_metrics.rank1.pid7.jsonl").write_bytes(
            line("d", "2026-01-01T00:00:04") + line("e", "2026-01-01T00:00:05"))
        polled = follower.poll()
        assert [r["metric"] for _, r in polled] == ["c", "d", "e"]
        assert polled[-1][0].rank == 1 and polled[-1][0].pid == 7
        assert follower.poll() == []


# -- context, parameters, selections, sweeps -------------------------------------------------

from otel_sparse.analysis import (  # noqa: E402
    compare,
    filter_events,
    layer_head_panels,
    metric_over_steps,
    parse_where,
    plot_heatmap,
    plot_heatmaps,
    plot_over_steps,
    run_labels,
)
from tests import _sweep  # noqa: E402
from tests._sweep import DENSITY as SWEEP_DENSITY  # noqa: E402
from tests._sweep import ERROR as SWEEP_ERROR  # noqa: E402


@pytest.fixture
def sweep(tmp_path: Path, clean: None) -> list[Path]:
    """Three runs, k = 8, 16, 32, with step and stage contexts (tests/_sweep.py)."""
    return _sweep.write_sweep(tmp_path / "sweep")


class TestContextColumns:
    """read_run's events carry context keys, metadata keys and run.json parameters."""

    def test_step_stage_and_params_are_typed_columns(self, sweep: list[Path]) -> None:
        """step is Int64, stage text, k Int64, masker text; every value where it was logged."""
        events = read_run(sweep[0]).events
        assert str(events["step"].dtype) == "Int64" and str(events["k"].dtype) == "Int64"
        assert set(events["stage"]) == {"prefill", "decode"}
        assert set(events["k"]) == {8} and set(events["masker"]) == {"topk"}
        per_step = events[events["metric"] == SWEEP_DENSITY].groupby("step").size()
        assert per_step.to_dict() == {s: 2 * _sweep.LAYERS * _sweep.HEADS
                                      for s in range(_sweep.STEPS)}
        decode = events[(events["stage"] == "decode") & (events["metric"] == SWEEP_ERROR)]
        expected_mean = _sweep.values(_sweep.error, 8, stages=("decode",)).mean()
        assert decode["value"].mean() == expected_mean

    def test_colliding_keys_get_documented_prefixes(self, tmp_path: Path, clean: None) -> None:
        """A context key named like an event column becomes context_<key>; a metadata key
        named like a context key meta_<key>; a parameter named like either param_<key>."""
        from otel_sparse.analysis import CONTEXT_PREFIX, METADATA_PREFIX, PARAM_PREFIX

        MicroMetricLogger.register_metric("d", float)
        logger = otel_sparse.start_run(str(tmp_path / "r"), params={"stage": "sweep-a",
                                                                   "masker": {"k": 4}})
        with logger.context(stage="decode", value="ctx", step=3):
            logger.log("d", 0.25, {"layer_idx": 1, "step": 99, "seq": 7})
        otel_sparse.end_run(logger)
        row = read_run(tmp_path / "r").events.iloc[0]
        assert row["value"] == 0.25 and row["layer"] == 1
        assert row["stage"] == "decode" and row["step"] == 3
        assert row[CONTEXT_PREFIX + "value"] == "ctx"
        assert row[METADATA_PREFIX + "step"] == 99 and row["seq"] == 7
        assert row[PARAM_PREFIX + "stage"] == "sweep-a" and row["masker.k"] == 4
        assert "layer_idx" not in row.index  # the layer alias is the layer column

    def test_points_time_is_a_utc_timestamp(self, sweep: list[Path]) -> None:
        """points["time"] holds the metrics.jsonl timestamp as UTC datetimes, never NaT."""
        data = read_run(sweep[0])
        time = data.points["time"]
        assert len(time) and str(time.dtype).startswith("datetime64") and str(time.dt.tz) == "UTC"
        assert time.notna().all()
        start = pd.Timestamp(data.manifest["start"])
        end = pd.Timestamp(data.manifest["end"])
        assert ((time >= start) & (time <= end + pd.Timedelta(seconds=5))).all()


class TestSelect:
    """--where and --by as functions."""

    def test_where_same_key_or_different_keys_and(self, sweep: list[Path]) -> None:
        events = read_run(sweep).events
        where = parse_where(["stage=decode", "k=8", "k=32"])
        assert where == {"stage": ["decode"], "k": ["8", "32"]}
        picked = filter_events(events, where)
        assert set(picked["stage"]) == {"decode"} and set(picked["k"]) == {8, 32}
        assert len(picked) == len(events) // 2 * 2 // 3

    def test_where_unknown_key_lists_keys(self, sweep: list[Path]) -> None:
        with pytest.raises(AnalysisError, match=r"no such key.*stage"):
            filter_events(read_run(sweep[0]).events, {"phase": ["decode"]})
        with pytest.raises(AnalysisError, match="KEY=VALUE"):
            parse_where(["stage"])

    def test_summarize_by_stage_does_not_blend(self, sweep: list[Path]) -> None:
        """Decode and prefill get their own rows, each the exact mean of its values."""
        stats = summarize(read_run(sweep[0]).events, metric=SWEEP_ERROR, by=["stage"])
        assert list(stats.columns[:3]) == ["stage", "metric", "layer"]
        for row in stats.to_dict("records"):
            values = _sweep.values(_sweep.error, 8, stages=(row["stage"],), layer=row["layer"])
            assert row["count"] == values.size and row["mean"] == values.mean()
            assert row["p95"] == pytest.approx(np.percentile(values, 95))


class TestCompare:
    """compare(): runs side by side, labelled by their parameters."""

    def test_numbers_and_differences(self, sweep: list[Path]) -> None:
        table = compare(read_run(sweep), metric=SWEEP_DENSITY, where={"stage": ["decode"]})
        assert list(dict.fromkeys(table["label"])) == ["k=8", "k=16", "k=32"]
        assert len(table) == 3 * _sweep.LAYERS
        for row in table.to_dict("records"):
            k = int(row["label"].split("=")[1])
            values = _sweep.values(_sweep.density, k, stages=("decode",), layer=row["layer"])
            first = _sweep.values(_sweep.density, 8, stages=("decode",), layer=row["layer"])
            assert row["count"] == values.size
            assert row["mean"] == pytest.approx(values.mean())
            assert row["p50"] == pytest.approx(np.percentile(values, 50))
            assert row["p95"] == pytest.approx(np.percentile(values, 95))
            assert row["diff_mean"] == pytest.approx(values.mean() - first.mean())

    def test_by_head_and_by_param_pooling(self, tmp_path: Path, clean: None) -> None:
        """--by k pools runs sharing k (two seeds) and orders labels by value."""
        _sweep.write_run(tmp_path / "a", 16, seed=1)
        _sweep.write_run(tmp_path / "b", 8, seed=1)
        _sweep.write_run(tmp_path / "c", 16, seed=2)
        data = read_run([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
        labels = run_labels(data, "k")
        assert list(dict.fromkeys(labels.values())) == ["k=8", "k=16"]
        assert run_labels(data)[data.run_ids[0]] == "k=16 seed=1"
        table = compare(data, by="k", by_head=True, metric=SWEEP_ERROR)
        row = table[(table["label"] == "k=16") & (table["layer"] == 1) & (table["head"] == 2)]
        assert row["count"].item() == 2 * _sweep.STEPS * 2  # two runs pooled, two stages
        assert row["mean"].item() == pytest.approx(
            _sweep.values(_sweep.error, 16, layer=1, head=2).mean())
        with pytest.raises(AnalysisError, match=r"no run\.json parameter"):
            run_labels(data, "nope")


class TestFigures:
    """The plotting functions return their Figure: its data is what was asked."""

    def test_panels_share_one_colour_scale(self, sweep: list[Path]) -> None:
        panels = layer_head_panels(read_run(sweep), SWEEP_DENSITY, "mean")
        assert list(panels) == ["k=8", "k=16", "k=32"]
        fig = plot_heatmaps(panels, "density", "mean density")
        images = [ax.images[0] for ax in fig.axes if ax.images]
        assert len(images) == 3 and len(fig.axes) == 4  # three panels and one colour bar
        lo = min(float(f.min().min()) for f in panels.values())
        hi = max(float(f.max().max()) for f in panels.values())
        assert {im.get_clim() for im in images} == {(lo, hi)}
        assert f"shared scale {lo:.4g} to {hi:.4g}" in fig.axes[-1].get_ylabel()
        for image, frame in zip(images, panels.values()):
            assert np.array_equal(np.asarray(image.get_array()), frame.to_numpy())
        layer, head = 2, 3
        assert panels["k=16"].loc[layer, head] == _sweep.values(
            _sweep.density, 16, layer=layer, head=head).mean()

    def test_difference_panel_is_symmetric(self, sweep: list[Path]) -> None:
        panels = layer_head_panels(read_run(sweep[:2]), SWEEP_ERROR, "mean")
        diff = panels["k=8"] - panels["k=16"]
        fig = plot_heatmaps({"": diff}, "a minus b", "difference", diverging=True)
        image = fig.axes[0].images[0]
        bound = float(diff.abs().max().max())
        assert image.get_clim() == (-bound, bound)
        assert np.array_equal(np.asarray(image.get_array()), diff.to_numpy())

    def test_title_not_clipped_with_four_heads(self) -> None:
        """A long title on a 4-head heatmap is folded inside the figure, not cut at its edges."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        title = ("research_attention_output_error (mean) - run "
                 "20261206-233659-c96448-with-a-long-suffix")
        fig = plot_heatmap(np.arange(12.0).reshape(3, 4), [0, 1, 2], [0, 1, 2, 3], None,
                           title=title, colorbar_label="mean research_attention_output_error")
        canvas = FigureCanvasAgg(fig)
        canvas.draw()
        renderer = canvas.get_renderer()
        suptitle = fig.get_suptitle()
        assert suptitle.replace("\n", " ").replace("  ", " ").split() == title.split()
        found = fig.findobj(lambda a: hasattr(a, "get_text") and a.get_text() == suptitle)
        assert found
        for text in found:
            box = text.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1

    def test_metric_over_steps_one_line_per_layer(self, sweep: list[Path]) -> None:
        data = read_run(sweep[0])
        table = metric_over_steps(data, SWEEP_DENSITY, where={"stage": ["decode"]})
        assert table.attrs["x"] == "step"
        fig = plot_over_steps(table, by="layer")
        (ax,) = fig.axes
        assert ax.get_xlabel() == "step" and ax.get_ylabel() == f"mean {SWEEP_DENSITY}"
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert sorted(lines) == [f"layer {layer}" for layer in range(_sweep.LAYERS)]
        legend = ax.get_legend()
        assert legend is not None and legend.get_title().get_text() == "layer"
        for layer in range(_sweep.LAYERS):
            x, y = lines[f"layer {layer}"].get_data()
            assert list(x) == list(range(_sweep.STEPS))
            assert list(y) == [_sweep.values(_sweep.density, 8, stages=("decode",), layer=layer,
                                             step=s).mean() for s in range(_sweep.STEPS)]

    def test_over_steps_by_run_parameter_and_never_averaging_runs(
        self, sweep: list[Path]
    ) -> None:
        data = read_run(sweep)
        by_k = metric_over_steps(data, SWEEP_ERROR, by="k")
        assert sorted(set(by_k["line"])) == ["k=16", "k=32", "k=8"]
        row = by_k[(by_k["line"] == "k=32") & (by_k["x"] == 2)]
        assert row["mean"].item() == _sweep.values(_sweep.error, 32, step=2).mean()
        by_layer = metric_over_steps(data, SWEEP_ERROR, by="layer")
        assert len(set(by_layer["line"])) == 3 * _sweep.LAYERS  # per run: no blended lines
        assert "k=16 layer 2" in set(by_layer["line"])


def test_over_steps_without_steps_uses_event_time(two_rank_run: tuple[Path, int]) -> None:
    """A run logged without step() is drawn over event time, said on the x axis."""
    run_dir, _ = two_rank_run
    table = metric_over_steps(read_run(run_dir), DENSITY, by="layer")
    assert table.attrs["x"] == "timestamp"
    assert str(table["x"].dtype).startswith("datetime64")
    assert table.groupby("line")["count"].sum().to_dict() == {
        f"layer {layer}": STEPS * HEADS * 2 for layer in range(LAYERS)}  # two ranks
    (ax,) = plot_over_steps(table, by="layer").axes
    assert ax.get_xlabel() == "event time"
    assert len(ax.get_lines()) == LAYERS
