"""The N-rank simulation (bench/bench_cluster.py) in CI: N = 4 and 64 ranks, small models.

Real processes end to end (senders -> 2 agents -> gateway -> vmagent -> Prometheus). Each
run asserts that the stored cluster-wide count and sum equal the logged totals exactly, and
that the series stored for the (layer, head) views do not depend on N: metrics x layers x
heads x 29 (27 buckets, _sum, _count), plus 3 per rank (two events_logged counters and
target_info; over OTLP to vmagent, which has no target_info, 2 per rank). N = 256 and 1024
run in bench/ only (docs/cluster.md has the table).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from otel_sparse._instruments import DEFAULT_FLOAT_BOUNDARIES

sys.path.insert(0, str(REPO_ROOT / "bench"))
import bench_cluster

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("protocol", "ranks", "layers", "heads"),
                         [("prw", 4, 2, 2), ("prw", 64, 2, 4), ("otlp", 64, 2, 4)])
def test_simulated_ranks_exact_and_rank_independent(
    protocol: str, ranks: int, layers: int, heads: int, otelcol_bin: Path, vmagent_bin: Path,
    tmp_path: Path,
) -> None:
    """Exact totals; histogram series = metrics x layers x heads x 29 at any N."""
    result = bench_cluster.run(ranks, layers, heads, metrics=2, rounds=2, steps=2,
                               procs=4, agents=2, interval_s=1.0, workdir=str(tmp_path),
                               protocol=protocol)
    assert result.exact, result
    per_cell = len(DEFAULT_FLOAT_BOUNDARIES) + 1 + 2
    assert result.histogram_series == 2 * layers * heads * per_cell
    per_rank = 3 if protocol == "prw" else 2  # target_info exists on remote write only
    assert result.per_rank_series == per_rank * ranks
    assert result.series_stored == result.histogram_series + result.per_rank_series
