"""The ceiling bench's mechanism (bench/bench_ceiling.py) in CI, at a small fixed rate.

Real processes: pre-encoded OTLP senders -> one agent (agent.yaml) -> gateway (gateway.yaml)
-> vmagent. Nothing is timed; the test checks what the bench's figures rest on: every point
the senders had acknowledged is counted accepted by the agent AND by the gateway, the
senders' CPU is reported as its own tier, and the row has every field.

The requests are a real rank's size (32 layers x 32 heads x 2 metrics = 2050 points, about
1 MB), at 12k points/s into ONE agent, so its batch processor fills a batch of 8192 points
within its 1 s timeout: about 4.2 MB, past gRPC's default 4 MiB receive limit. Before
agent.yaml capped its batches and gateway.yaml raised the limit, the gateway refused such
a batch (ResourceExhausted) and the agent dropped it for good ("not retryable").
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import bench_ceiling

pytestmark = pytest.mark.integration


def test_every_offered_point_accepted_and_senders_reported_apart(
    otelcol_bin: Path, vmagent_bin: Path, tmp_path: Path,
) -> None:
    """Real-size requests at a fixed rate: agent and gateway count every acknowledged point."""
    row = bench_ceiling.ceiling(4, 32, 32, metrics=2, rate=12_000, sink="drop", procs=1,
                                agents=1, in_flight=2, warmup_s=1.0, window_s=3.0,
                                drain_s=30.0, workdir=str(tmp_path))
    assert row.points_per_request == 2 * 32 * 32 + 2
    assert row.points_sent > 0
    assert row.points_acked == row.points_sent, row
    assert row.agents_accepted == row.points_acked, row
    assert row.gateway_accepted == row.points_acked, row
    assert row.drained, row
    assert row.agents_send_failed_points_per_s == 0, row
    assert row.gateway_refused_points_per_s == 0, row
    # the senders are their own tier, next to every pipeline tier
    assert set(row.cores) == set(bench_ceiling.TIERS)
    assert row.cores["senders"] > 0 and row.cores["gateway"] > 0
    assert row.offered_points_per_s > 0 and row.gateway_accepted_points_per_s > 0
    assert 0 < row.sustained_points_per_s <= row.gateway_accepted_points_per_s
    for f in dataclasses.fields(row):
        value = getattr(row, f.name)
        assert value is not None, f.name
        if isinstance(value, float) and f.name != "load_1m_start":
            assert not math.isnan(value), f.name
    assert set(row.us_per_point) == set(bench_ceiling.TIERS)
    assert all(not math.isnan(v) for v in row.us_per_point.values()), row.us_per_point
    assert set(row.rss_mib) == set(bench_ceiling.TIERS)
