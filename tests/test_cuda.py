"""CUDA devices, streams and GPU timers (otel_sparse/_cuda.py).

On the CPU, a recording fake of the ``torch.cuda`` functions that otel_sparse calls stands in
for the GPU: it knows which device is current, which stream is current on each device, and
which devices a call touched (a call with no device runs on the current one, and on real
CUDA creates a context there). It checks which device and stream each call uses, and the
order of records, waits and queries. The classes marked ``cuda`` run the same mechanisms on
a real GPU (skipped here); scripts/gpu-checks.sh runs them on a lent device.
"""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otel_sparse import MicroMetricLogger, _cuda, _values
from otel_sparse._values import IN_GRAPH_CAPTURE, HostValues
from tests._helpers import jsonl_logger, read_events

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

TIMER = "block_time"
DENSITY = "research_attention_density"


# -- the fake ---------------------------------------------------------------------------------


class FakeStream:
    def __init__(self, fake: FakeCuda, device: int, stream_id: int) -> None:
        self.fake, self.device, self.stream_id = fake, device, stream_id

    def wait_event(self, event: FakeEvent) -> None:
        self.fake.note("wait", self.device, self.stream_id, event)


class FakeEvent:
    def __init__(self, fake: FakeCuda, enable_timing: bool = False) -> None:
        self.fake = fake
        self.enable_timing = enable_timing
        self.device: int | None = None
        self.stream_id: int | None = None
        self.not_done_polls = 0  # query() answers False this many times first
        self.fails = False

    def record(self, stream: FakeStream | None = None) -> None:
        if stream is None:  # torch records on the current device's current stream
            stream = self.fake.current_stream()
        self.device, self.stream_id = stream.device, stream.stream_id
        self.fake.note("record", stream.device, stream.stream_id, self)

    def query(self) -> bool:
        if self.fails:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        done = self.not_done_polls <= 0
        self.not_done_polls -= 1
        self.fake.note("query", self.device, self.stream_id, self, done)
        return done

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.enable_timing and end.enable_timing, "elapsed_time needs timing events"
        self.fake.note("elapsed_time", self.device, self.stream_id, self, end)
        return self.fake.elapsed_ms

    def synchronize(self) -> None:
        self.fake.note("synchronize", self.device, self.stream_id, self)


class FakeCuda:
    """Records every call as (what, device, stream id, *details); ``touched`` the devices."""

    def __init__(self, devices: int = 2) -> None:
        self.devices = devices
        self.current = 0
        self.streams = dict.fromkeys(range(devices), 0)  # device -> current stream id
        self.capturing_streams: set[tuple[int, int]] = set()
        self.calls: list[tuple[Any, ...]] = []
        self.touched: set[int] = set()
        self.elapsed_ms = 12.5
        self.available = True

    def note(self, what: str, device: int | None, stream_id: int | None, *rest: Any) -> None:
        self.calls.append((what, device, stream_id, *rest))
        if device is not None:
            self.touched.add(device)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return self.devices

    def current_device(self) -> int:
        return self.current

    @contextmanager
    def device(self, index: int) -> Iterator[None]:
        # like torch.cuda.device: switches the current device, restores it on exit, and
        # creates no context on the device it restores
        previous, self.current = self.current, index
        try:
            yield
        finally:
            self.current = previous

    def current_stream(self, index: int | None = None) -> FakeStream:
        device = self.current if index is None else index
        if index is None:
            self.touched.add(device)
        return FakeStream(self, device, self.streams[device])

    def default_stream(self, index: int) -> FakeStream:
        return FakeStream(self, index, 0)

    def is_current_stream_capturing(self) -> bool:
        device = self.current
        self.note("is_capturing", device, self.streams[device])
        return (device, self.streams[device]) in self.capturing_streams

    def Event(self, enable_timing: bool = False) -> FakeEvent:
        return FakeEvent(self, enable_timing)

    def synchronize(self, device: int | None = None) -> None:
        self.note("synchronize", self.current if device is None else device, None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCuda]:
    """The fake installed as otel_sparse's torch.cuda; the real one is put back afterwards."""
    fake = FakeCuda()
    saved = (_cuda.api, _cuda._stream_key, dict(_cuda._default_ids))
    _cuda.install(fake)
    monkeypatch.setattr(_values, "pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(_cuda, "_parsed", {})
    monkeypatch.setattr(_cuda, "_note_given", set())
    yield fake
    _cuda.api, _cuda._stream_key = saved[0], saved[1]
    _cuda._default_ids.clear()
    _cuda._default_ids.update(saved[2])


@pytest.fixture
def logger(tmp_path: Path) -> Iterator[MicroMetricLogger]:
    with jsonl_logger(tmp_path, DENSITY, timers=(TIMER,)) as log:
        yield log


def _histogram(path: Path, metric: str) -> dict[str, Any]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["metric"].endswith(metric)][-1]


def _drops(logger: MicroMetricLogger) -> dict[tuple[str, str], int]:
    return logger._drops.snapshot()


# -- tensors: which device and stream ---------------------------------------------------------


class TestCaptureDevice:
    """log() clones a tensor on cuda:N and asks only device N about streams and capture."""

    def test_default_stream_of_cuda1_records_nothing(self, fake: FakeCuda) -> None:
        """On cuda:1's default stream: a plain clone, no event, no call on any device."""
        t = torch.arange(4.0)
        out = _values._cuda_clone(t, 1)
        assert out.tolist() == [0.0, 1.0, 2.0, 3.0] and out is not t
        assert getattr(out, _cuda.READY, None) is None
        assert fake.calls == [] and fake.touched == set()

    def test_side_stream_of_cuda1_records_on_that_stream(self, fake: FakeCuda) -> None:
        """On a side stream of cuda:1: capture asked with cuda:1 current, event on that stream."""
        fake.streams[1] = 7
        out = _values._cuda_clone(torch.ones(3), 1)
        ready = getattr(out, _cuda.READY)
        assert fake.calls == [("is_capturing", 1, 7), ("record", 1, 7, ready)]
        assert fake.touched == {1}
        assert fake.current == 0  # the current device is given back

    def test_side_stream_capture_refused(self, fake: FakeCuda) -> None:
        """While cuda:1's side stream captures a graph, the value is refused, nothing recorded."""
        fake.streams[1] = 7
        fake.capturing_streams.add((1, 7))
        assert _values._cuda_clone(torch.ones(3), 1) is IN_GRAPH_CAPTURE
        assert fake.names() == ["is_capturing"] and fake.touched == {1}

    def test_requires_grad_detached(self, fake: FakeCuda) -> None:
        """The clone keeps no autograd graph, on either kind of stream."""
        t = torch.ones(2, requires_grad=True)
        assert not _values._cuda_clone(t, 0).requires_grad
        fake.streams[0] = 3
        assert not _values._cuda_clone(t, 0).requires_grad


class TestWriterDevice:
    """HostValues copies on the tensors' own device, after the logging stream's event."""

    @pytest.fixture
    def on_cuda1(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_values, "cuda_index", lambda t: 1)

    def test_side_stream_clone_waited_for_then_copied(
        self, fake: FakeCuda, on_cuda1: None
    ) -> None:
        """Order: ready event (logging stream) -> writer waits -> copy -> done event -> query."""
        fake.streams[1] = 7
        clones = [_values._cuda_clone(torch.tensor([1.0, 2.0]) * k, 1) for k in (1, 2)]
        ready = [getattr(c, _cuda.READY) for c in clones]
        fake.streams[1] = 0  # the writer's thread: the default stream of cuda:1
        fake.calls.clear()
        refs = [weakref.ref(c) for c in clones]
        hv = HostValues(clones)
        del clones
        gc.collect()
        assert all(r() is not None for r in refs), "clones freed before their copy finished"
        done = fake.calls[-1][3]
        assert fake.calls == [("wait", 1, 0, ready[0]), ("wait", 1, 0, ready[1]),
                              ("record", 1, 0, done)]
        done.not_done_polls = 2
        assert not hv.ready() and not hv.ready() and hv.ready()
        assert [a.tolist() for a in hv.arrays()] == [[1.0, 2.0], [2.0, 4.0]]
        gc.collect()
        assert all(r() is None for r in refs), "clones kept after the copy finished"
        assert fake.touched == {1}

    def test_default_stream_clone_needs_no_wait(self, fake: FakeCuda, on_cuda1: None) -> None:
        """Clones made on the default stream: no wait; the done event on cuda:1's default stream."""
        hv = HostValues([_values._cuda_clone(torch.tensor([3.0]), 1)])
        assert fake.names() == ["record"] and fake.calls[0][1:3] == (1, 0)
        assert hv.ready() and hv.arrays()[0].tolist() == [3.0]
        assert fake.touched == {1}

    def test_mixed_streams_in_one_group(self, fake: FakeCuda, on_cuda1: None) -> None:
        """One group with side- and default-stream clones waits for the side one only."""
        plain = _values._cuda_clone(torch.tensor([1.0]), 1)
        fake.streams[1] = 5
        side = _values._cuda_clone(torch.tensor([2.0]), 1)
        fake.streams[1] = 0
        fake.calls.clear()
        hv = HostValues([plain, side])
        assert [c[0] for c in fake.calls] == ["wait", "record"]
        assert fake.calls[0][3] is getattr(side, _cuda.READY)
        assert hv.ready() and [a.tolist() for a in hv.arrays()] == [[1.0], [2.0]]


# -- GPU timers --------------------------------------------------------------------------------


class TestGpuTimerFallback:
    """Without a CUDA device, timer(device="cuda") times host time, with one note."""

    @pytest.fixture(autouse=True)
    def fresh_notes(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_cuda, "_parsed", {})
        monkeypatch.setattr(_cuda, "_note_given", set())

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_host_time_and_one_note(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Values are host seconds; the note is logged once for any number of timers."""
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            for _ in range(3):
                with logger.timer(TIMER, device="cuda", layer=0) as t:
                    sum(range(1000))
                assert isinstance(t.elapsed, float) and t.elapsed > 0
        logger.flush()
        notes = [r for r in caplog.records if "found no CUDA device" in r.getMessage()]
        assert len(notes) == 1
        assert "torch.cuda.is_available() is False" in notes[0].getMessage()
        values = [e["value"] for e in read_events(tmp_path)]
        assert len(values) == 3 and all(isinstance(v, float) and v > 0 for v in values)
        assert _histogram(tmp_path, TIMER)["count"] == 3

    def test_without_torch(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """No torch installed: host time, and the note says why."""
        monkeypatch.setattr(_cuda, "api", None)
        monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            with logger.timer(TIMER, device="cuda:0"):
                pass
            with logger.timer(TIMER, device="cuda:0"):
                pass
        notes = [r.getMessage() for r in caplog.records if "found no CUDA" in r.getMessage()]
        assert len(notes) == 1 and "torch is not installed" in notes[0]
        logger.flush()
        assert len(read_events(tmp_path)) == 2

    def test_device_naming_no_gpu(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """device="gpu0" is no device name: host time and a note naming it; "cpu" no note."""
        with caplog.at_level(logging.WARNING, logger="otel_sparse"):
            with logger.timer(TIMER, device="cpu"):
                pass
            assert caplog.records == []
            for _ in range(2):
                with logger.timer(TIMER, device="gpu0"):
                    pass
        assert [r.getMessage().count("'gpu0'") for r in caplog.records] == [1]
        logger.flush()
        assert all(isinstance(e["value"], float) for e in read_events(tmp_path))

    def test_device_is_no_metadata(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """device= is the timer's argument; the other keywords are the metadata."""
        with logger.timer(TIMER, device="cpu", layer=2):
            pass
        logger.flush()
        assert read_events(tmp_path)[0]["metadata"] == {"layer": 2}


class TestGpuTimerMechanism:
    """With the fake CUDA API: events around the block, resolved by the writer later."""

    def test_caller_only_records(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Inside and at the end of the block: two timing events recorded, nothing waited on."""
        fake.streams[1] = 4
        with logger.timer(TIMER, device="cuda:1", layer=3) as t:
            fake.streams[1] = 9  # a stream switch inside the block does not split the pair
        assert t.elapsed is None
        assert [c[:3] for c in fake.calls] == [("is_capturing", 1, 4), ("record", 1, 4),
                                               ("record", 1, 4)]
        assert all(c[3].enable_timing for c in fake.calls[1:])
        assert fake.touched == {1}
        logger.flush()
        assert read_events(tmp_path)[0]["value"] == 0.0125

    @pytest.mark.parametrize("spec", ["cuda:1", 1, "torch.device('cuda', 1)", "cuda"])
    def test_device_spellings(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path, spec: Any
    ) -> None:
        """"cuda:1", 1 and torch.device("cuda", 1) time on cuda:1; "cuda" on the current one."""
        if spec == "torch.device('cuda', 1)":
            spec = torch.device("cuda", 1)
        fake.current = 1 if spec == "cuda" else 0
        with logger.timer(TIMER, device=spec):
            pass
        assert [c[:3] for c in fake.calls] == [("record", 1, 0), ("record", 1, 0)]
        logger.flush()
        assert [e["value"] for e in read_events(tmp_path)] == [0.0125]

    def test_resolved_only_after_query_true(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """The writer polls query() until True, only then calls elapsed_time; ms -> s."""
        fake.elapsed_ms = 3.0
        with logger.timer(TIMER, device="cuda", layer=0):
            pass
        end = fake.calls[-1][3]
        end.not_done_polls = 3
        start_calls = len(fake.calls)
        logger.flush()
        writer = fake.calls[start_calls:]
        assert [(c[0], c[-1] if c[0] == "query" else None) for c in writer] == [
            ("query", False), ("query", False), ("query", False), ("query", True),
            ("elapsed_time", None)]
        assert "synchronize" not in fake.names()
        assert [e["value"] for e in read_events(tmp_path)] == [0.003]
        row = _histogram(tmp_path, TIMER)
        assert row["count"] == 1 and row["sum"] == 0.003 and row["unit"] == "s"

    def test_flush_waits_for_the_gpu(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A flush returns once the end event completes, with every value (bounded repeats)."""
        for _ in range(5):
            with logger.timer(TIMER, device="cuda"):
                pass
            end = fake.calls[-1][3]
            end.not_done_polls = 10**9
            flushed = threading.Event()

            def flush(flushed: threading.Event = flushed) -> None:
                logger.flush()
                flushed.set()

            thread = threading.Thread(target=flush)
            thread.start()
            assert not flushed.wait(0.05)
            end.not_done_polls = 0
            thread.join(10)
            assert flushed.is_set()
        assert [e["value"] for e in read_events(tmp_path)] == [0.0125] * 5

    def test_capture_refused(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A timer entered while its stream captures a graph records nothing and is counted."""
        fake.streams[0] = 2
        fake.capturing_streams.add((0, 2))
        with logger.timer(TIMER, device="cuda:0"):
            pass
        assert fake.names() == ["is_capturing"]
        logger.flush()
        assert not (tmp_path / "micro_metrics.jsonl").exists() or read_events(tmp_path) == []
        assert _drops(logger)[("cuda_graph_capture", TIMER)] == 1

    def test_cuda_error_counted(
        self, fake: FakeCuda, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """A failing query loses that timing alone: line written with null, drop counted."""
        with logger.timer(TIMER, device="cuda"):
            pass
        fake.calls[-1][3].fails = True
        with logger.timer(TIMER, device="cuda"):
            pass
        logger.flush()
        assert [e["value"] for e in read_events(tmp_path)] == [None, 0.0125]
        assert _drops(logger)[("unreadable_tensor", TIMER)] == 1

    def test_device_beyond_count(
        self, fake: FakeCuda, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """cuda:5 on a 2-GPU process: host time, one note."""
        with caplog.at_level(logging.WARNING, logger="otel_sparse"), \
                logger.timer(TIMER, device="cuda:5") as t:
            pass
        assert isinstance(t.elapsed, float) and fake.calls == []
        assert "sees 2 CUDA device(s)" in caplog.records[0].getMessage()


# -- on a real GPU (scripts/gpu-checks.sh) ----------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _busy(x: Any, rounds: int = 40) -> Any:
    """Queue a few ms of GPU work on the current stream (so a race would show)."""
    for _ in range(rounds):
        x = x @ x
        x = x / x.norm()
    return x


@contextmanager
def _no_sync() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@cuda
@pytest.mark.cuda
class TestCudaStreams:
    """A tensor logged on a side stream is read after it was written, never before."""

    def test_stream_key_matches_public_api(self) -> None:
        """The fast stream id equals torch.cuda.current_stream().stream_id on both kinds."""
        _cuda.ensure()  # installed by the first tensor log(); none may have run yet
        fast = torch._C._cuda_getCurrentStream
        assert fast(0)[0] == torch.cuda.current_stream(0).stream_id
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            assert fast(0)[0] == torch.cuda.current_stream(0).stream_id
            assert not _cuda.on_default_stream(0)
        assert _cuda.on_default_stream(0)

    def test_side_stream_values_read_in_order(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Write on a side stream behind long work, log, overwrite the source: logged values."""
        side = torch.cuda.Stream()
        m = torch.randn(512, 512, device="cuda")
        source = torch.zeros(8, device="cuda")
        expected = []
        torch.cuda.synchronize()
        with _no_sync():
            for k in range(20):
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    _busy(m)
                    source.fill_(float(k))  # written after the long work, on the side stream
                    logger.log(DENSITY, source, {"layer_idx": k})
                    source.fill_(-1.0)  # overwritten right after log()
                expected.append([float(k)] * 8)
                logger.flush()  # the writer reads on its own (default) stream
        torch.cuda.synchronize()
        assert [e["value"] for e in read_events(tmp_path)] == expected
        assert _drops(logger) == {}


@cuda
@pytest.mark.cuda
class TestCudaTimer:
    """GPU timers against CUDA events the test records itself around the same work."""

    def test_matches_own_events(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        m = torch.randn(1024, 1024, device="cuda")
        own = []
        torch.cuda.synchronize()
        with _no_sync():
            for _ in range(5):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                with logger.timer(TIMER, device="cuda"):
                    a.record()
                    _busy(m, 60)
                    b.record()
                own.append((a, b))
            logger.flush()
        torch.cuda.synchronize()
        timed = [e["value"] for e in read_events(tmp_path)]
        reference = [a.elapsed_time(b) / 1000 for a, b in own]
        assert len(timed) == len(reference)
        for got, ref in zip(timed, reference):
            assert ref <= got <= ref * 1.2 + 1e-4, (timed, reference)
        assert _histogram(tmp_path, TIMER)["count"] == 5


_ONLY_CUDA1 = """
import sys, torch
from otel_sparse import MicroMetricLogger
MicroMetricLogger.register_metric("d", float)
MicroMetricLogger.register_timer("t")
log = MicroMetricLogger(log_path=sys.argv[1], enabled_metrics="all", exporters=["jsonl"])
x = torch.arange(4.0, device="cuda:1")  # the current device stays 0
for i in range(3):
    with log.timer("t", device="cuda:1"):
        log.log("d", x * i, {"layer_idx": i})
        log.log("d", x + i, {"layer_idx": i})
log.flush()
log.close()
print(torch._C._cuda_hasPrimaryContext(0), torch._C._cuda_hasPrimaryContext(1))
"""


@cuda
@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_only_cuda1_leaves_cuda0_alone(tmp_path: Path) -> None:
    """A process that only uses cuda:1 logs tensors and GPU timers without a cuda:0 context.

    No side stream here: torch's own stream context sets the device back to 0 on exit (a
    context of torch's making). The side-stream path names its device like the rest
    (TestCaptureDevice, with the fake)."""
    out = subprocess.run([sys.executable, "-c", _ONLY_CUDA1, str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split() == ["False", "True"], out.stderr
    values = [e["value"] for e in read_events(tmp_path) if e["metric"] == "d"]
    assert values[:2] == [[0.0] * 4, [0.0, 1.0, 2.0, 3.0]]


def test_numpy_unaffected() -> None:
    """The CPU path of HostValues (no CUDA index) is unchanged."""
    hv = HostValues([torch.tensor([1.0, 2.0]), np.array([3.0])])
    assert hv.ready() and [a.tolist() for a in hv.arrays()] == [[1.0, 2.0], [3.0]]
