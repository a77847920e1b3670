"""start_run/end_run: run folders, sweeps in one process, and the manifest across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import otel_sparse
from otel_sparse import MicroMetricLogger
from otel_sparse._compat import zip_strict
from tests._helpers import read_jsonl

DENSITY = "research_attention_density"


class TestRuns:
    """Each start_run is its own run folder with its own exporters."""

    def test_runs_go_to_their_own_folders(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Two runs in one process (a sweep) get two run ids and two folders."""
        monkeypatch.setenv("OTEL_SPARSE_RUN_DIR", str(tmp_path))
        fresh_logger.register_metric(DENSITY, float)
        folders = []
        for k in (8, 16):
            logger = otel_sparse.start_run(params={"k": k})
            logger.log(DENSITY, k / 32)
            folders.append(Path(logger.log_path or ""))
            otel_sparse.end_run()
        assert folders[0] != folders[1] and all(f.parent == tmp_path for f in folders)
        for folder, k in zip_strict(folders, (8, 16)):
            manifest = json.loads((folder / "run.json").read_text())
            assert manifest["params"] == {"k": k}
            assert manifest["run_id"] == folder.name and manifest["end"]
            assert [e["value"] for e in read_jsonl(folder / "micro_metrics.jsonl")] == [k / 32]
            rows = read_jsonl(folder / "metrics.jsonl")
            assert {r["run_id"] for r in rows} == {folder.name}

    def test_exporters_do_not_carry_over(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A run that chose otlp_file does not make the next run write one."""
        fresh_logger.register_metric(DENSITY, float)
        first = otel_sparse.start_run(str(tmp_path / "a"), exporters=["otlp_file"])
        first.log(DENSITY, 0.5)
        otel_sparse.end_run()
        second = otel_sparse.start_run(str(tmp_path / "b"))
        second.log(DENSITY, 0.5)
        otel_sparse.end_run()
        assert (tmp_path / "a" / "otlp" / "metrics.jsonl").exists()
        assert not (tmp_path / "b" / "otlp").exists()
        assert (tmp_path / "b" / "metrics.jsonl").exists()

    def test_close_twice_starts_nothing(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A second close() (the atexit hook after end_run) starts no writer again."""
        fresh_logger.register_metric(DENSITY, float)
        logger = otel_sparse.start_run(str(tmp_path))
        logger.log(DENSITY, 0.5)
        otel_sparse.end_run()
        logger.close()
        assert logger._pipeline is None


_RANK = """
import sys, otel_sparse
from otel_sparse import MicroMetricLogger
MicroMetricLogger.register_metric("d", float)
lg = otel_sparse.start_run(sys.argv[1], params={"k": 4})
lg.log("d", 0.5)
otel_sparse.end_run()
"""


def test_manifest_keeps_every_rank(tmp_path: Path) -> None:
    """Four ranks starting together all end up in run.json, each with its end time."""
    procs = []
    for rank in range(4):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(RANK=str(rank), WORLD_SIZE="4", LOCAL_RANK=str(rank),
                   TORCHELASTIC_RUN_ID="job-1")
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK, str(tmp_path)], env=env))
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["run_id"] == "job-1" and manifest["world_size"] == 4
    assert sorted(manifest["ranks"]) == ["0", "1", "2", "3"]
    assert all(r["end"] for r in manifest["ranks"].values())
    assert manifest["end"] == max(r["end"] for r in manifest["ranks"].values())
