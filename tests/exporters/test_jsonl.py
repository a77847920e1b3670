"""The JSONL metric exporter: one flat, strict-JSON row per data point, pandas-ready."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_sparse import MicroMetricLogger
from tests._helpers import read_jsonl

DENSITY = "research_attention_density"
ERROR = "research_attention_output_error"


def _run(cls: type[MicroMetricLogger], path: Path) -> None:
    cls.register_metric(DENSITY, float)
    cls.register_metric(ERROR, float)
    logger = cls(log_path=str(path), enabled_metrics="all", exporters=["jsonl"])
    for step in range(4):
        for layer in range(2):
            for head in range(3):
                logger.log(DENSITY, (layer + head + step) / 8,
                           {"layer_idx": layer, "head_idx": head})
                logger.log(ERROR, float("nan") if step == 3 else step / 4, {"layer": layer})
    logger.close()


class TestJsonlMetricExporter:
    """Rows a researcher loads with pandas in one line."""

    def test_pandas_reads_a_tidy_frame(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """read_json(lines=True) gives one row per point with typed columns and exact totals."""
        pd = pytest.importorskip("pandas")
        _run(fresh_logger, tmp_path)
        df = pd.read_json(tmp_path / "metrics.jsonl", lines=True)
        for column in ("timestamp", "start_time", "temporality", "metric", "unit", "layer", "head", "count", "sum",
                       "min", "max", "bucket_bounds", "bucket_counts", "run_id", "rank",
                       "host_name", "service_instance_id"):
            assert column in df.columns, column
        assert str(df["timestamp"].dt.tz) == "UTC" and str(df["start_time"].dt.tz) == "UTC"
        density = df[df.metric == f"sparse_attention.{DENSITY}"]
        totals = density.groupby(["layer", "head"]).last()
        assert len(totals) == 6
        assert totals.loc[(1, 2), "count"] == 4
        assert totals.loc[(1, 2), "sum"] == sum((1 + 2 + s) / 8 for s in range(4))
        assert totals.loc[(0, 0), "min"] == 0.0 and totals.loc[(0, 0), "max"] == 3 / 8
        assert set(density["temporality"]) == {"cumulative"}
        assert set(density["unit"]) == {"1"}

    def test_rows_are_strict_json_and_name_is_not_micro_metrics(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """No NaN/Infinity tokens (strict JSON), and the file never matches micro_metrics*."""
        _run(fresh_logger, tmp_path)
        text = (tmp_path / "metrics.jsonl").read_text()

        def strict(token: str) -> float:
            raise ValueError(f"non-strict JSON token {token}")

        for line in text.splitlines():
            json.loads(line, parse_constant=strict)
        # old parsers glob micro_metrics*: only the event file may match
        assert sorted(p.name for p in tmp_path.glob("micro_metrics*")) == ["micro_metrics.jsonl"]
        assert all("location" in row for row in read_jsonl(tmp_path / "micro_metrics.jsonl"))
        error_rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                      if r["metric"].endswith(ERROR)]
        # the NaN values of step 3 stay in the event file but never reach the histogram
        assert {r["layer"]: r["count"] for r in error_rows} == {0: 9, 1: 9}

    def test_buckets_follow_otel_bounds(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """bucket_counts has one more entry than bucket_bounds; value v goes to (b[i-1], b[i]]."""
        fresh_logger.register_metric("m", float, boundaries=[0.25, 0.5])
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=["jsonl"])
        for v in (0.0, 0.25, 0.3, 0.5, 0.75, 2.0):
            logger.log("m", v)
        logger.close()
        (row,) = read_jsonl(tmp_path / "metrics.jsonl")[:1]
        assert row["bucket_bounds"] == [0.25, 0.5]
        assert row["bucket_counts"] == [2, 2, 2]


class TestResourceColumns:
    """Resource attributes never overwrite a row's own fields."""

    def test_colliding_resource_attributes_go_under_the_prefix(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """type/unit/layer/count from OTEL_RESOURCE_ATTRIBUTES land in resource_* columns."""
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES",
                           "type=training,unit=team-a,layer=all,count=7,host.name=node-7")
        monkeypatch.setenv("OTEL_SPARSE_RUN_ID", "resource-run")
        _run(fresh_logger, tmp_path)
        rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl")
                if r["metric"] == f"sparse_attention.{DENSITY}"]
        assert rows
        for row in rows:
            assert row["type"] == "histogram" and row["unit"] == "1"
            assert row["layer"] in (0, 1) and isinstance(row["count"], int)
            assert (row["resource_type"], row["resource_unit"], row["resource_layer"],
                    row["resource_count"]) == ("training", "team-a", "all", "7")
            assert row["host_name"] == "node-7"  # the resource attribute still overrides ours
            assert row["run_id"] == "resource-run" and row["rank"] == 0
        totals = {(r["layer"], r["head"]): r["count"] for r in rows}
        assert totals == {(layer, head): 4 for layer in range(2) for head in range(3)}
