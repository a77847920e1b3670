"""Tensors as values: no host sync inside log(), batched host copies, per-head series."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.testing import HostSyncError, forbid_host_reads
from tests._helpers import jsonl_logger, read_events

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

DENSITY = "research_attention_density"



@pytest.fixture
def logger(tmp_path: Path) -> Iterator[MicroMetricLogger]:
    with jsonl_logger(tmp_path, DENSITY) as log:
        yield log


def _points(path: Path) -> dict[tuple[Any, Any], dict[str, Any]]:
    """Latest metric row per (layer, head) of the density histogram."""
    latest: dict[tuple[Any, Any], dict[str, Any]] = {}
    for line in (path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["metric"].endswith(DENSITY):
            latest[(row["layer"], row["head"])] = row
    return latest


class TestNoHostSync:
    """log() never turns a tensor into host values."""

    def test_guard_catches_every_host_read(self) -> None:
        """The function mode itself fails on each forbidden call (so the next tests can fail)."""
        t = torch.ones(3)
        reads = [
            lambda: t[0].item(), lambda: t.tolist(), lambda: float(t[0]), lambda: int(t[0]),
            lambda: bool(t[0]), lambda: t.cpu(), lambda: t.numpy(),
        ]
        for read in reads:
            with forbid_host_reads(), pytest.raises(HostSyncError):
                read()

    @pytest.mark.parametrize(
        "make",
        [
            lambda: torch.rand(()),
            lambda: torch.rand(8),
            lambda: torch.rand(4, 8),
            lambda: torch.rand(8, requires_grad=True) * 1,
            lambda: torch.rand(8).to(torch.bfloat16),
            lambda: torch.rand(8).half(),
            lambda: torch.randint(0, 5, (8,)),
        ],
        ids=["0d", "heads", "layers_heads", "requires_grad", "bf16", "fp16", "int"],
    )
    def test_log_tensor_reads_nothing_back(self, logger: MicroMetricLogger, make: Any) -> None:
        """Logging 0-d, [heads] and [layers, heads] tensors of any dtype does no host read."""
        value = make()
        with forbid_host_reads():
            for layer in range(3):
                metadata = {"step": layer} if value.dim() == 2 else {"layer_idx": layer}
                logger.log(DENSITY, value, metadata)
        assert logger.get_total_records_logged() == 3
        assert all(torch.is_tensor(ev.value) for ev in logger.log_queue)

    def test_log_tensor_does_not_import_host_paths_on_flush_boundary(
        self, logger: MicroMetricLogger
    ) -> None:
        """Even the log() that hands a full batch to the writer reads nothing back."""
        logger.flush_every = 4
        with forbid_host_reads():
            for layer in range(8):
                logger.log(DENSITY, torch.rand(8), {"layer_idx": layer})
        assert len(logger.log_queue) == 0


class TestTensorValues:
    """Values written for tensors: plain JSON numbers and lists, exact per-head series."""

    def test_event_lines_hold_plain_lists(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """[heads] and [layers, heads] tensors become JSON lists; 0-d ones become numbers."""
        logger.log(DENSITY, torch.tensor([0.125, 0.25]), {"layer_idx": 1})
        logger.log(DENSITY, torch.tensor([[0.5, 0.75], [1.0, 0.0]]))
        logger.log(DENSITY, torch.tensor(0.375), {"layer_idx": 2, "head_idx": 1})
        logger.flush()
        values = [e["value"] for e in read_events(tmp_path)]
        assert values == [[0.125, 0.25], [[0.5, 0.75], [1.0, 0.0]], 0.375]

    def test_in_place_edit_after_log_does_not_change_the_logged_value(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """The caller may reuse its buffer right after log(): what was logged stays."""
        buf = torch.tensor([0.25, 0.5])
        logger.log(DENSITY, buf, {"layer_idx": 0})
        buf.fill_(0.875)
        logger.log(DENSITY, buf, {"layer_idx": 0})
        logger.flush()
        assert [e["value"] for e in read_events(tmp_path)] == [[0.25, 0.5], [0.875, 0.875]]

    def test_per_head_series_are_exact(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Each element of a [heads] tensor lands in its own (layer, head) histogram."""
        for step in range(10):
            logger.log(DENSITY, torch.tensor([0.125, 0.25, 0.5]) * (step % 2),
                       {"layer_idx": 3})
        logger.flush()
        points = _points(tmp_path)
        assert sorted(points) == [(3, 0), (3, 1), (3, 2)]
        assert [points[(3, h)]["count"] for h in range(3)] == [10, 10, 10]
        assert [points[(3, h)]["sum"] for h in range(3)] == [0.625, 1.25, 2.5]
        assert points[(3, 2)]["max"] == 0.5 and points[(3, 2)]["min"] == 0.0

    def test_layers_heads_tensor_spans_both_attributes(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A [layers, heads] tensor fills layer x head series from one call."""
        logger.log(DENSITY, torch.arange(6, dtype=torch.float32).reshape(2, 3) / 8)
        logger.flush()
        points = _points(tmp_path)
        assert {k: v["sum"] for k, v in points.items()} == {
            (0, 0): 0.0, (0, 1): 0.125, (0, 2): 0.25, (1, 0): 0.375, (1, 1): 0.5, (1, 2): 0.625,
        }

    def test_one_log_is_one_record_for_max_records(self, tmp_path: Path) -> None:
        """max_records counts calls, not tensor elements."""
        MicroMetricLogger._instance = None
        MicroMetricLogger._initialized = False
        MicroMetricLogger.register_metric(DENSITY, float)
        log = MicroMetricLogger(log_path=str(tmp_path), enabled_metrics="all", max_records=2)
        try:
            for _ in range(5):
                log.log(DENSITY, torch.rand(32))
            assert log.get_total_records_logged() == 2
            assert log.get_records_remaining() == 0
        finally:
            log.close()

    def test_head_metadata_with_a_heads_tensor_is_dropped_and_warned_once(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A [heads] tensor already spans heads: a `head` key too is a caller error."""
        with caplog.at_level("WARNING", logger="otel_sparse"):
            logger.log(DENSITY, torch.rand(4), {"layer_idx": 0, "head": 1})
            logger.log(DENSITY, torch.rand(4), {"layer_idx": 0, "head_idx": 2})
        assert logger.get_total_records_logged() == 0
        warnings = [r for r in caplog.records if "tensor_metadata_clash" in r.getMessage()]
        assert len(warnings) == 1
        logger.log(DENSITY, 0.5, {"layer_idx": 0})
        logger.flush()
        assert len(read_events(tmp_path)) == 1

    def test_tensor_beyond_two_dims_is_refused_without_copy(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A [heads, seq, seq] map is refused (documented rule), never copied to the host."""
        with caplog.at_level("WARNING", logger="otel_sparse"), forbid_host_reads():
            logger.log(DENSITY, torch.rand(4, 16, 16), {"layer_idx": 0})
        assert logger.get_total_records_logged() == 0
        assert any("tensor_rank" in r.getMessage() for r in caplog.records)

    def test_drop_counts_reach_the_metric_file(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Refused tensors are counted in otel_sparse.events.dropped."""
        for _ in range(3):
            logger.log(DENSITY, torch.rand(2, 2, 2))
        logger.log(DENSITY, 0.5)
        logger.flush()
        rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        dropped = [r for r in rows if r["metric"] == "otel_sparse.events.dropped"]
        assert [(r["attributes"], r["value"]) for r in dropped] == [
            ({"metric": DENSITY, "reason": "tensor_rank"}, 3)
        ]


def test_import_does_not_import_torch() -> None:
    """`import otel_sparse` leaves torch (and pandas, matplotlib) unimported."""
    code = "import sys, otel_sparse; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
class TestCuda:
    """On a GPU, log() never synchronises (sync debug mode "error" would raise)."""

    def test_log_cuda_tensors_without_sync(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Per-head CUDA tensors log under set_sync_debug_mode('error'); values arrive intact."""
        values = torch.arange(8, device="cuda", dtype=torch.float32) / 8
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with forbid_host_reads():
                for layer in range(4):
                    logger.log(DENSITY, values * (layer % 2), {"layer_idx": layer})
        finally:
            torch.cuda.set_sync_debug_mode(0)
        logger.flush()
        events = read_events(tmp_path)
        assert [e["value"] for e in events][:2] == [[0.0] * 8, (torch.arange(8) / 8).tolist()]
        points = _points(tmp_path)
        assert points[(1, 7)]["sum"] == 0.875

    def test_writer_copies_without_blocking_sync(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """The background writer's copies are non-blocking too (debug mode stays on)."""
        torch.cuda.set_sync_debug_mode("error")
        try:
            logger.log(DENSITY, torch.ones(4, device="cuda") / 2, {"layer_idx": 0})
            logger.flush()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        assert read_events(tmp_path)[0]["value"] == [0.5] * 4
