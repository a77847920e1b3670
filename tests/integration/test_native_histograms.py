"""Exponential histograms reach Prometheus 2.42 as native histograms, on both paths.

    this process (OTEL_SPARSE_HISTOGRAM=exponential) --OTLP/gRPC--> gateway.yaml
        --prometheusremotewrite--> Prometheus "rw"   (--enable-feature=native-histograms
                                                       --web.enable-remote-write-receiver)
        <--scrape /metrics (protobuf)-- Prometheus "scrape" (--enable-feature=native-histograms)

At collector v0.145.0 both paths carry them: prometheusremotewrite sends native histograms,
and the prometheus exporter serves them when the scrape negotiates the protobuf format (which
Prometheus asks for once the feature flag is on; contrib PR #43053). Each exponential series
arrives as ONE series (no ``_bucket``/``_sum``/``_count``); a metric with explicit
``boundaries=`` keeps its classic buckets beside it.

Error bound (docs/quantiles.md): ``histogram_quantile(q)`` of a native histogram returns a
value inside the bucket that holds the ``ceil(q * count)``-th smallest value (Prometheus 2.42
interpolates within that bucket), so it lies within one bucket of the exact quantile of the
event file (numpy's ``inverted_cdf``): relative error <= ``2**(2**-scale) - 1``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import Collector, Prometheus

from otel_sparse import MicroMetricLogger
from otel_sparse._exponential import MAX_SCALE, bucket_bound, index_at_max_scale
from otel_sparse.analysis import read_run
from tests._helpers import read_jsonl

pytestmark = pytest.mark.integration

DENSITY, ERROR = "research_attention_density", "research_attention_output_error"
PROM_DENSITY = f"sparse_attention_{DENSITY}"
LAYERS, HEADS, STEPS = 2, 2, 1500
QUANTILES = (0.05, 0.5, 0.9, 0.95, 0.99)


def _log(cls: type[MicroMetricLogger], folder: Path) -> None:
    """[heads] tensors per layer and step: skewed values over five orders of magnitude."""
    torch = pytest.importorskip("torch")
    cls.register_metric(DENSITY, float)
    cls.register_metric(ERROR, float, boundaries=[0.01, 0.1, 0.5, 1.0])
    logger = cls(log_path=str(folder), enabled_metrics="all", exporters=["otlp", "jsonl"])
    rng = np.random.default_rng(2026)
    for _ in range(STEPS):
        for layer in range(LAYERS):
            heads = rng.beta(0.5, 2.0 + layer, HEADS) + 1e-5
            logger.log(DENSITY, torch.tensor(heads), {"layer": layer})
            logger.log(ERROR, float(heads[0]), {"layer": layer})
    logger.close()  # the final export carries every value


def _names(prom: Prometheus) -> set[str]:
    body = requests.get(f"{prom.url}/api/v1/label/__name__/values", timeout=5).json()
    return {n for n in body["data"] if n.startswith("sparse_attention_")}


def test_exponential_histograms_are_native_on_both_paths(
    fresh_logger: type[MicroMetricLogger], collector_factory: Callable[..., Collector],
    prometheus_factory: Callable[..., Prometheus], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One series per (layer, head); count exact, sum as logged, quantiles within a bucket."""
    rw = prometheus_factory(remote_write_receiver=True, native_histograms=True, name="rw")
    gateway = collector_factory("gateway.yaml",
                                env={"OTEL_SPARSE_REMOTE_WRITE_URL": rw.remote_write_url})
    scrape = prometheus_factory([gateway.prometheus_target], native_histograms=True,
                                name="scrape")
    run_id = f"native-{uuid.uuid4().hex[:8]}"
    for name, value in {
        "OTEL_SPARSE_HISTOGRAM": "exponential", "OTEL_SPARSE_RUN_ID": run_id,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{gateway.grpc_endpoint}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_SPARSE_EXPORT_INTERVAL": "500",
    }.items():
        monkeypatch.setenv(name, value)
    _log(fresh_logger, tmp_path / "run")

    events = read_run(tmp_path / "run").events
    rows = {(r["layer"], r["head"]): r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")
            if r["metric"] == f"sparse_attention.{DENSITY}"}  # the last row of each series
    run = f'run_id="{run_id}"'
    for prom in (rw, scrape):
        where = prom.process.name
        counts = prom.wait_for_query(
            f"histogram_count({PROM_DENSITY}{{{run}}})",
            lambda r: len(r) == LAYERS * HEADS and all(v == STEPS for _, v in r),
            timeout=60, procs=[gateway.process])
        assert len(counts) == LAYERS * HEADS, where
        names = _names(prom)
        assert PROM_DENSITY in names, where
        assert not {f"{PROM_DENSITY}_bucket", f"{PROM_DENSITY}_count"} & names, where
        assert f"sparse_attention_{ERROR}_bucket" in names, where  # explicit stays classic
        series = prom.query(f'count({{__name__=~"{PROM_DENSITY}.*", {run}}})')
        assert series[0][1] == LAYERS * HEADS, where
        sums = {(int(s["layer"]), int(s["head"])): v
                for s, v in prom.query(f"histogram_sum({PROM_DENSITY}{{{run}}})")}
        for q in QUANTILES:
            got = prom.query(f"histogram_quantile({q}, {PROM_DENSITY}{{{run}}})")
            assert len(got) == LAYERS * HEADS, (where, q)
            for labels, estimate in got:
                cell = (int(labels["layer"]), int(labels["head"]))
                row = rows[cell]
                assert sums[cell] == row["sum"], (where, cell)
                mine = events[(events["metric"] == DENSITY) & (events["layer"] == cell[0])
                              & (events["head"] == cell[1])]["value"].to_numpy()
                assert len(mine) == STEPS
                assert sums[cell] == pytest.approx(float(mine.sum()), rel=1e-12)
                exact = float(np.quantile(mine, q, method="inverted_cdf"))
                scale = row["scale"]
                index = index_at_max_scale(exact) >> (MAX_SCALE - scale)
                lower, upper = bucket_bound(index, scale), bucket_bound(index + 1, scale)
                assert lower <= estimate <= upper, (where, cell, q, exact, estimate)
                assert abs(estimate - exact) <= exact * (2.0 ** (2.0 ** -scale) - 1), \
                    (where, cell, q)
