"""The background side: hand-off, timing, threads, garbage collection, ranks and forks."""

from __future__ import annotations

import gc
import json
import math
import multiprocessing
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_sparse import MicroMetricLogger
from otel_sparse.exporters import _files
from otel_sparse.testing import InMemoryMetricExporter
from tests._helpers import latest_points, read_jsonl, wait_for

DENSITY = "research_attention_density"
NAME = f"sparse_attention.{DENSITY}"


class ThreadRecordingExporter(MetricExporter):
    """Records which thread each export ran on."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.threads: list[str] = []
        self.fail = fail

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: Any) -> MetricExportResult:
        self.threads.append(threading.current_thread().name)
        if self.fail:
            raise ConnectionError("collector unreachable")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _logger(cls: type[MicroMetricLogger], path: Path, **kwargs: Any) -> MicroMetricLogger:
    cls.register_metric(DENSITY, float)
    return cls(log_path=str(path), enabled_metrics="all", **kwargs)


class TestHandOff:
    """Full batches and waiting events reach the file without an explicit flush."""

    def test_handed_off_batch_is_written_by_the_writer(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A batch handed over at flush_every appears in the file within about a second."""
        logger = _logger(fresh_logger, tmp_path, flush_every=10)
        for i in range(10):
            logger.log(DENSITY, i / 8, {"layer_idx": 0})
        assert len(logger.log_queue) == 0
        events = wait_for(lambda: len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == 10,
                          what="the handed-off batch")
        assert events
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [
            i / 8 for i in range(10)
        ]

    def test_waiting_events_are_written_after_the_write_delay(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Fewer events than flush_every still reach the disk (a kill -9 loses ~1 s at most)."""
        monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "0.2")
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.5, {"layer_idx": 1})
        wait_for(lambda: read_jsonl(tmp_path / "micro_metrics.jsonl"), timeout=5,
                 what="the waiting event")
        assert len(logger.log_queue) == 0

    def test_exports_run_on_exporter_threads_never_the_callers(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """log() (also at hand-off) never runs an exporter; exporter threads do."""
        recorder = ThreadRecordingExporter()
        logger = _logger(fresh_logger, tmp_path, flush_every=5, exporters=[recorder])
        for i in range(50):
            logger.log(DENSITY, i / 8)
        logger.close()
        caller = threading.current_thread().name
        assert recorder.threads, "the exporter was never called"
        assert caller not in recorder.threads
        assert all(t.startswith("otel-sparse-export-") for t in recorder.threads)

    def test_failing_exporter_is_counted_and_others_keep_going(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """An exporter that raises is reported once and counted; the JSONL file still fills."""
        broken = ThreadRecordingExporter(fail=True)
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=["jsonl", broken, sink])
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for round_ in range(3):
                logger.log(DENSITY, 0.25, {"layer_idx": 0})
                logger.flush()
                wait_for(lambda r=round_: len(broken.threads) > r, what="export attempt")
        logger.flush()
        assert sink.value("otel_sparse.export.failures", exporter="ThreadRecordingExporter") >= 3
        failures = [r for r in caplog.records if "ThreadRecordingExporter failed" in r.message]
        assert len(failures) == 1
        assert latest_points(tmp_path / "metrics.jsonl", NAME)[(0, None)]["count"] == 3


class TestLifecycle:
    """The writer holds its logger weakly: garbage collection still flushes."""

    def test_garbage_collection_flushes_and_stops_threads(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Dropping the last reference writes the queue and ends the writer thread."""
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.75)
        writer = logger._pipeline._thread  # type: ignore[union-attr]
        fresh_logger._instance = None
        del logger
        gc.collect()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [0.75]
        writer.join(timeout=5)
        assert not writer.is_alive()
        assert latest_points(tmp_path / "metrics.jsonl", NAME)[(None, None)]["count"] == 1

    def test_close_then_log_again_restarts(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """After close(), logging keeps working and reaches the same file."""
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.125)
        logger.close()
        logger.log(DENSITY, 0.25)
        logger.flush()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [0.125, 0.25]


_CHILD = """
import sys
from otel_sparse import MicroMetricLogger
from otel_sparse.exporters import _files
MicroMetricLogger.register_metric("research_attention_density", float)
lg = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all")
for i in range(4):
    lg.log("research_attention_density", 0.5, {"layer_idx": i})
print(__import__("os").getpid())
"""


class TestRanksAndForks:
    """Each process writes its own files; rank 0 keeps the exact old name."""

    @pytest.mark.parametrize("rank", ["0", "3"])
    def test_rank_file_names(self, tmp_path: Path, rank: str) -> None:
        """Rank 0 writes micro_metrics.jsonl; rank r writes micro_metrics.rank<r>.pid<pid>.jsonl."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(RANK=rank, WORLD_SIZE="4", LOCAL_RANK=rank, OTEL_SPARSE_RUN_ID="run-x")
        out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], env=env,
                             capture_output=True, text=True, check=True, timeout=120)
        pid = out.stdout.strip()
        suffix = "" if rank == "0" else f".rank{rank}.pid{pid}"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"micro_metrics{suffix}.jsonl", f"metrics{suffix}.jsonl"]
        )
        assert len(read_jsonl(tmp_path / f"micro_metrics{suffix}.jsonl")) == 4
        rows = read_jsonl(tmp_path / f"metrics{suffix}.jsonl")
        density = [r for r in rows if r["metric"] == NAME]
        assert {(r["rank"], r["world_size"], r["local_rank"], r["run_id"]) for r in density} == {
            (int(rank), 4, int(rank), "run-x")
        }

    def test_forked_worker_writes_its_own_file_without_parent_events(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A fork-started worker logs to a .pid file; the parent's queued events stay its own."""
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.125, {"layer_idx": 0})  # still queued in the parent at fork time
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_log_in_child, args=(3,))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        logger.flush()
        assert [e["value"] for e in read_jsonl(tmp_path / "micro_metrics.jsonl")] == [0.125]
        child_file = tmp_path / f"micro_metrics.rank0.pid{child.pid}.jsonl"
        assert [e["value"] for e in read_jsonl(child_file)] == [0.5, 0.5, 0.5]
        child_points = latest_points(tmp_path / f"metrics.rank0.pid{child.pid}.jsonl", NAME)
        assert child_points[(1, None)]["count"] == 3


def _log_in_child(n: int) -> None:
    logger = MicroMetricLogger()
    for _ in range(n):
        logger.log(DENSITY, 0.5, {"layer_idx": 1})
    # no flush and no atexit in a multiprocessing child: the library must write anyway


class TestAggregation:
    """What reaches the OTel data model: temporality, overflow, own counters."""

    def test_delta_temporality_resets_each_export(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """With OTEL_SPARSE_TEMPORALITY=delta each row counts only its own interval."""
        monkeypatch.setenv("OTEL_SPARSE_TEMPORALITY", "delta")
        logger = _logger(fresh_logger, tmp_path)
        for n in (2, 3):
            for _ in range(n):
                logger.log(DENSITY, 0.5, {"layer_idx": 0})
            logger.flush()
        rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["metric"] == NAME]
        assert [(r["temporality"], r["count"], r["sum"]) for r in rows] == [
            ("delta", 2, 1.0), ("delta", 3, 1.5)
        ]

    def test_cumulative_rows_only_for_changed_series(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A series that did not change is not written again; the last row has the totals."""
        logger = _logger(fresh_logger, tmp_path)
        logger.log(DENSITY, 0.5, {"layer_idx": 0})
        logger.log(DENSITY, 0.5, {"layer_idx": 1})
        logger.flush()
        logger.log(DENSITY, 0.25, {"layer_idx": 1})
        logger.flush()
        logger.flush()
        rows = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["metric"] == NAME]
        assert [(r["layer"], r["count"], r["sum"]) for r in rows] == [
            (0, 1, 0.5), (1, 1, 0.5), (1, 2, 0.75)
        ]

    def test_cardinality_overflow_goes_to_one_series(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Past OTEL_SPARSE_MAX_SERIES, points land in otel.metric.overflow="true" (counted)."""
        monkeypatch.setenv("OTEL_SPARSE_MAX_SERIES", "4")
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink])
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for _step in range(3):  # repeated attribute sets: each folded event counts
                for layer in range(10):
                    logger.log(DENSITY, 0.5, {"layer_idx": layer})
            logger.flush()
        overflow = sink.histogram(NAME, **{"otel.metric.overflow": "true"})
        assert overflow.count == 18 and overflow.sum == 9.0
        assert len(sink.points(NAME)) == 5
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="cardinality_overflow") == 18
        assert len([r for r in caplog.records if "overflow" in r.message]) == 1

    def test_library_counters_count_logged_and_dropped(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """events.logged and events.dropped{reason} carry exact counts."""
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink], max_records=3)
        for _ in range(5):
            logger.log(DENSITY, "not a number")
        logger.flush()
        assert sink.value("otel_sparse.events.logged", metric=DENSITY) == 3
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY, reason="max_records") == 2
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="invalid_value") == 3


def _asdict_line(event: Any) -> str:
    """The old logger's line: json.dumps of the event with its isoformat() timestamp."""
    return json.dumps({"timestamp": event.timestamp.isoformat(), "metric": event.metric,
                       "value": event.value, "metadata": event.metadata,
                       "location": event.location})


class TestLineCache:
    """The writer's fast loop (cached line parts and states) against the full per-event path.

    Each case logs across several flushes, so that later batches meet metadata whose line
    and series the first batch cached.
    """

    def _flush_batches(self, logger: MicroMetricLogger,
                       batches: list[list[tuple[Any, dict[str, Any]]]],
                       identifier: str = DENSITY) -> list[Any]:
        events: list[Any] = []
        for batch in batches:
            for value, metadata in batch:
                logger.log(identifier, value, metadata)
            events += list(logger.log_queue)
            logger.flush()
        return events

    def test_lines_equal_json_dumps_for_every_value_kind(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Floats, ints, non-finite, huge ints, bools and strings on cached series."""
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink])
        values: list[Any] = [0.25, 3, -1.5, 0.0, -0.0, 1e300, 2**62, -(2**62), 2**70,
                             float("nan"), float("inf"), True, "0.5", None, 1e-320]
        metadata = {"layer_idx": 2, "head_idx": 5, "tag": "a"}
        events = self._flush_batches(
            logger, [[(0.5, dict(metadata))]] + [[(v, dict(metadata))] for v in values]
            + [[(v, dict(metadata)) for v in values]])
        lines = (tmp_path / "micro_metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [_asdict_line(e) for e in events]
        finite = [0.5] + [float(v) for v in values
                          if type(v) in (int, float) and math.isfinite(v)] * 2
        point = sink.histogram(NAME, layer=2, head=5)
        assert point.count == len(finite)
        assert point.sum == pytest.approx(math.fsum(finite), rel=1e-12)
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="non_finite") == 4
        assert sink.value("otel_sparse.events.dropped", metric=DENSITY,
                          reason="invalid_value") == 6  # True, "0.5", None in both batches

    def test_equal_metadata_of_other_types_is_not_confused(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """1, True and 1.0 are equal and hash alike: a cached {"layer_idx": 1} must not
        spell or aggregate {"layer_idx": True} or {"layer_idx": 1.0}."""
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink])
        one: dict[str, Any] = {"layer_idx": 1}
        events = self._flush_batches(logger, [
            [(0.5, one)], [(0.5, one)],
            [(0.25, {"layer_idx": True})], [(0.25, {"layer_idx": 1.0})],
            [(0.5, one), (0.25, {"layer_idx": True}), (0.5, one)],
            [(0.5, {"layer_idx": 1, "note": "x"}), (0.25, {"layer_idx": 1, "note": None})],
        ])
        lines = (tmp_path / "micro_metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [_asdict_line(e) for e in events]
        assert '"metadata": {"layer_idx": true}' in lines[2]
        assert '"metadata": {"layer_idx": 1.0}' in lines[3]
        # equal attribute values make one attribute set, as in the OTel SDK: one series
        assert sink.histogram(NAME, layer=1).count == 9
        assert len(sink.points(NAME)) == 1

    def test_counter_refuses_negative_values_after_caching(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """The fast loop leaves negative counter values to the checked path."""
        fresh_logger.register_metric("tokens", int, kind="counter")
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink])
        events = self._flush_batches(
            logger, [[(5, {"layer_idx": 0})], [(3, {"layer_idx": 0}), (-2, {"layer_idx": 0}),
                                               (-0.5, {"layer_idx": 0}), (2.5, {"layer_idx": 0})]],
            identifier="tokens")
        lines = (tmp_path / "micro_metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [_asdict_line(e) for e in events]
        assert sink.value("sparse_attention.tokens", layer=0) == 10.5
        assert sink.value("otel_sparse.events.dropped", metric="tokens",
                          reason="negative_counter") == 2

    def test_context_changes_reach_cached_lines(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A new step() context gives new lines even for metadata cached under the last one."""
        logger = _logger(fresh_logger, tmp_path)
        for step in range(3):
            with logger.step(step):
                for _ in range(2):
                    logger.log(DENSITY, 0.5, {"layer_idx": 0})
                    logger.flush()
            logger.log(DENSITY, 0.5, {"layer_idx": 0})
            logger.flush()
        records = read_jsonl(tmp_path / "micro_metrics.jsonl")
        assert [r.get("context") for r in records] == [
            c for s in range(3) for c in ({"step": s}, {"step": s}, None)
        ]

    def test_call_sites_keep_their_location(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Equal metric and metadata from two functions keep each caller's location."""
        logger = _logger(fresh_logger, tmp_path)

        def first() -> None:
            logger.log(DENSITY, 0.5, {"layer_idx": 0})

        def second() -> None:
            logger.log(DENSITY, 0.5, {"layer_idx": 0})

        for _ in range(3):
            first()
            second()
            logger.flush()
        locations = [r["location"].rsplit(".", 1)[-1]
                     for r in read_jsonl(tmp_path / "micro_metrics.jsonl")]
        assert locations == ["first", "second"] * 3

    def test_whole_batches_of_known_lines_equal_json_dumps(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Batches where every line is known take the batch-at-once path; floats of every
        magnitude (where orjson and repr spell numbers differently) come out as json.dumps."""
        fresh_logger.register_metric("note", str)
        sink = InMemoryMetricExporter()
        logger = _logger(fresh_logger, tmp_path, exporters=[sink], flush_every=10**6)
        rng = random.Random(7)
        magnitudes = [rng.random() * 10.0 ** rng.randint(-30, 30) for _ in range(3000)]
        edges = [0.0, -0.0, 1e-4, 9.99e-5, 1e-5, 0.00012, 10.00001, 1e15, 1e16 - 2, 1e16,
                 5e-324, 123456789.125, 2**53 + 1.0, 1.5, 7]
        metadata = [{"layer_idx": i % 4, "head_idx": i % 3} for i in range(12)]
        events: list[Any] = []
        small = [rng.uniform(1e-5, 1e-4) for _ in range(50)]  # orjson: 0.0000..., repr: e-05
        for chunk in ([0.5] * 12, edges, [rng.random() for _ in range(500)], magnitudes,
                      [-v for v in magnitudes], [3, 4.5, 6] * 20, small, [1e15, 9e15, -5e15]):
            for i, value in enumerate(chunk):
                logger.log(DENSITY, value, metadata[i % 12])
                if i % 50 == 0:
                    logger.log("note", 0.25, {"layer_idx": 1})  # events only: no series
            events += list(logger.log_queue)
            logger.flush()
        lines = (tmp_path / "micro_metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [_asdict_line(e) for e in events]
        expected: dict[tuple[int, int], list[float]] = {}
        for e in events:
            if e.metric == DENSITY:  # added in order, as the aggregator adds them
                series = expected.setdefault((e.metadata["layer_idx"], e.metadata["head_idx"]),
                                             [0, 0.0])
                series[0] += 1
                series[1] += e.value
        got = {(p.attributes["layer"], p.attributes["head"]): [p.count, p.sum]
               for p in sink.points(NAME)}
        assert got == expected

    def test_metadata_orjson_cannot_key_keeps_exact_lines(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """None next to NaN (both null to orjson), "},{" inside strings, nested and
        non-str-keyed metadata: each line is still json.dumps of its event."""
        logger = _logger(fresh_logger, tmp_path)
        batches: list[list[tuple[Any, dict[Any, Any]]]] = [
            [(0.5, {"layer_idx": 1, "x": None})] * 2,
            [(0.5, {"layer_idx": 1, "x": float("nan")}), (0.5, {"layer_idx": 1, "x": None})],
            [(0.5, {"layer_idx": 1, "x": float("inf")})],
            [(0.5, {"layer_idx": 1, "s": "a},{b"}), (0.5, {"layer_idx": 2})] * 2,
            [(0.5, {"layer_idx": 1, "nested": [{"a": 1}, {"b": 2}]}), (0.5, {"layer_idx": 1})],
            [(0.5, {"layer_idx": 1, "t": (1, 2)}), (0.5, {"layer_idx": 1, "t": [1, 2]})] * 2,
            [(0.5, {1: "int key"}), (0.25, {"layer_idx": 1})],
            [(0.5, {})] * 3,
        ]
        events = self._flush_batches(logger, batches)
        lines = (tmp_path / "micro_metrics.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == [_asdict_line(e) for e in events]

    def test_pending_batches_go_out_in_one_write(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """Batches handed off while the writer was busy are appended by one write: each write
        costs system calls that give up the GIL to the training loop."""
        logger = _logger(fresh_logger, tmp_path, flush_every=100)
        pipeline = logger._pipeline_or_start()
        writes: list[int] = []
        write = pipeline.event_file.write

        def counting(text: str) -> None:
            writes.append(text.count("\n"))
            write(text)

        pipeline.event_file.write = counting  # type: ignore[method-assign]
        with pipeline._write_lock:  # the writer is busy: hand-offs pile up
            for i in range(1000):
                logger.log(DENSITY, 0.5, {"layer_idx": i % 8})
            assert len(pipeline._pending) == 10
        logger.flush()
        assert writes == [1000]
        assert len(read_jsonl(tmp_path / "micro_metrics.jsonl")) == 1000


class TestAppendOnlyFile:
    """Whole-line writes in chunks of about a megabyte."""

    def test_long_text_is_cut_only_between_lines(self, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """Chunks end at newlines; a line longer than a chunk goes out whole."""
        writes: list[bytes] = []
        real_write = os.write

        def recording(fd: int, data: Any) -> int:
            writes.append(bytes(data))
            return real_write(fd, data)

        monkeypatch.setattr(_files, "_CHUNK", 64)
        monkeypatch.setattr(_files.os, "write", recording)
        lines = [f"line {i} " + "x" * (i * 7) for i in range(40)]
        out = _files.AppendOnlyFile(str(tmp_path / "f.jsonl"))
        out.append_text(("\n".join(lines) + "\n").encode())
        assert (tmp_path / "f.jsonl").read_text().splitlines() == lines
        assert len(writes) > 10
        assert all(chunk.endswith(b"\n") for chunk in writes)
        assert all(len(chunk) <= 64 or chunk.count(b"\n") == 1 for chunk in writes)


class TestValuesTakenAtLog:
    """log() keeps the metadata as it was at the call (issue 11, item 4)."""

    def test_reused_and_mutated_metadata(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """One dict reused over layers (and a list and a dict inside it, mutated in place):
        every line and every series keeps the layer of its own call."""
        logger = _logger(fresh_logger, tmp_path, flush_every=10**6)
        meta: dict[str, Any] = {"layer_idx": 0, "heads": [], "extra": {"step": 0}}
        for layer in range(4):
            meta["layer_idx"] = layer
            meta["heads"].append(layer)
            meta["extra"]["step"] = layer
            logger.log(DENSITY, layer / 8, meta)
            queued = logger.log_queue[-1].metadata
            assert queued == {"layer_idx": layer, "heads": list(range(layer + 1)),
                              "extra": {"step": layer}}
        logger.flush()
        events = read_jsonl(tmp_path / "micro_metrics.jsonl")
        assert [e["metadata"]["layer_idx"] for e in events] == [0, 1, 2, 3]
        assert [e["metadata"]["heads"] for e in events] == [[0], [0, 1], [0, 1, 2],
                                                            [0, 1, 2, 3]]
        assert [e["metadata"]["extra"]["step"] for e in events] == [0, 1, 2, 3]
        points = latest_points(tmp_path / "metrics.jsonl", NAME)
        assert {layer: row["count"] for (layer, _), row in points.items()} == {
            0: 1, 1: 1, 2: 1, 3: 1}
