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
