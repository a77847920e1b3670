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
from tests._helpers import latest_points, read_jsonl

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


def _values(folder: Path) -> list[float]:
    return [e["value"] for e in read_jsonl(folder / "micro_metrics.jsonl")]


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "run.json").read_text())


class TestRunsDoNotBleed:
    """A run left open (a notebook cell that raised) never pours into the next run."""

    @pytest.mark.parametrize("attempt", range(10))
    def test_notebook_rerun_without_end_run(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, attempt: int,
    ) -> None:
        """A run that raises before end_run, then a new run at once: each keeps its events.

        The write delay is short so that the writer's stale-queue pickup races the switch;
        repeated (parametrised) to catch the timing-dependent path either way.
        """
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.01")
        fresh_logger.register_metric(DENSITY, float)
        first_dir, second_dir = tmp_path / "first", tmp_path / "second"

        def cell(folder: Path, value: float, fail: bool) -> None:
            logger = otel_sparse.start_run(str(folder), params={"v": value})
            for _ in range(200 + 37 * attempt):
                logger.log(DENSITY, value, {"layer_idx": 0})
            if fail:
                raise RuntimeError("cell failed before end_run()")

        with pytest.raises(RuntimeError):
            cell(first_dir, 0.25, fail=True)
        cell(second_dir, 0.75, fail=False)
        otel_sparse.end_run()

        n = 200 + 37 * attempt
        assert _values(first_dir) == [0.25] * n
        assert _values(second_dir) == [0.75] * n
        first, second = _manifest(first_dir), _manifest(second_dir)
        assert first["status"] == "superseded" and first["end"]
        assert second["status"] == "finished" and second["end"]
        for folder, value in ((first_dir, 0.25), (second_dir, 0.75)):  # totals, not only lines
            totals = latest_points(folder / "metrics.jsonl", f"sparse_attention.{DENSITY}")
            assert totals[(0, None)]["count"] == n
            assert totals[(0, None)]["sum"] == pytest.approx(n * value)

    @pytest.mark.parametrize("attempt", range(5))
    def test_with_block_that_raises_then_new_run(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, attempt: int,
    ) -> None:
        """``with start_run()`` ends its run however the block ends, and says how in run.json."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.01")
        fresh_logger.register_metric(DENSITY, float)
        with pytest.raises(ZeroDivisionError), otel_sparse.start_run(str(tmp_path / "a")) as logger:
            assert isinstance(logger, MicroMetricLogger)
            for _ in range(300):
                logger.log(DENSITY, 0.5)
            _ = 1 / 0
        with otel_sparse.start_run(str(tmp_path / "b")) as logger:
            for _ in range(100 + attempt):
                logger.log(DENSITY, 1.0)
        assert _values(tmp_path / "a") == [0.5] * 300
        assert _values(tmp_path / "b") == [1.0] * (100 + attempt)
        failed, finished = _manifest(tmp_path / "a"), _manifest(tmp_path / "b")
        assert failed["status"] == "failed" and failed["error"] == "ZeroDivisionError"
        assert failed["ranks"]["0"]["status"] == "failed"
        assert finished["status"] == "finished" and "error" not in finished
        assert logger._pipeline is None  # the block closed the logger

    def test_nested_start_run_supersedes_and_outer_exit_is_a_no_op(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The outer block's exit does not end the inner run that replaced its own."""
        fresh_logger.register_metric(DENSITY, float)
        with otel_sparse.start_run(str(tmp_path / "outer")) as outer:
            outer.log(DENSITY, 0.1)
            inner = otel_sparse.start_run(str(tmp_path / "inner"))
            inner.log(DENSITY, 0.2)
        inner.log(DENSITY, 0.3)
        otel_sparse.end_run()
        assert _values(tmp_path / "outer") == [0.1]
        assert _values(tmp_path / "inner") == [0.2, 0.3]
        assert _manifest(tmp_path / "outer")["status"] == "superseded"
        assert _manifest(tmp_path / "inner")["status"] == "finished"

    def test_configure_logging_to_a_new_path_keeps_queued_events_in_the_old_one(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The old API's path switch writes what was queued for the old path there."""
        fresh_logger.register_metric(DENSITY, float)
        logger = fresh_logger(log_path=str(tmp_path / "a"), enabled_metrics="all")
        logger.log(DENSITY, 0.5)
        logger.configure_logging(str(tmp_path / "b"), "all")
        logger.log(DENSITY, 1.0)
        logger.flush()
        assert _values(tmp_path / "a") == [0.5]
        assert _values(tmp_path / "b") == [1.0]


_NO_END_RUN = """
import sys, otel_sparse
from otel_sparse import MicroMetricLogger
MicroMetricLogger.register_metric("d", float)
lg = otel_sparse.start_run(sys.argv[1])
for _ in range(50):
    lg.log("d", 0.5)
if sys.argv[2] == "raise":
    raise RuntimeError("the script died")
"""


@pytest.mark.parametrize(("how", "status", "error"), [
    ("exit", "finished", None), ("raise", "failed", "RuntimeError")])
def test_a_run_never_ended_is_ended_at_exit(
    tmp_path: Path, how: str, status: str, error: str | None
) -> None:
    """A script without end_run(): its events are written and run.json says how it ended."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", _NO_END_RUN, str(tmp_path), how], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == (0 if how == "exit" else 1), done.stderr
    assert (how == "raise") == ("RuntimeError: the script died" in done.stderr)  # still shown
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["status"] == status and manifest.get("error") == error and manifest["end"]
    assert _values(tmp_path) == [0.5] * 50


_FORK_CHILD_EXITS = """
import json, os, sys, otel_sparse
from otel_sparse import MicroMetricLogger
MicroMetricLogger.register_metric("d", float)
lg = otel_sparse.start_run(sys.argv[1])
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a child leaving normally runs the exit hooks it inherited
os.waitpid(pid, 0)
with open(os.path.join(sys.argv[1], "run.json")) as f:
    print(json.dumps("end" in json.load(f)))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_ends_the_parents_run(tmp_path: Path) -> None:
    """The exit hook ends only runs its own process started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", _FORK_CHILD_EXITS, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "false"
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "finished"  # the parent's
