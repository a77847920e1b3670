"""Issue 14's end-to-end GPU checks: real models logging [heads] tensors on a CUDA device.

All marked ``cuda`` (skipped without a GPU; scripts/gpu-checks.sh runs them on a lent one).
``set_sync_debug_mode("error")`` is on around the code under test and the writer; the tests'
own reference computations and assertions run outside it. Each test counts the events
logged (so logging nothing cannot pass), wants zero drops, and compares every logged value
with a reference computed after the run.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otel_sparse.facade import MicroMetricLogger
from tests._helpers import jsonl_logger, read_events

torch = pytest.importorskip("torch")

from otel_sparse.torch_hooks import density, instrument_attention  # noqa: E402

pytestmark = [
    pytest.mark.torch, pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ROOT = Path(__file__).resolve().parents[1]
DENSITY = "research_attention_density"
ERROR = "research_attention_output_error"
STEPS = 300


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny() -> Any:
    return _load(ROOT / "examples" / "tiny_transformer.py", "tiny_transformer_example")


@pytest.fixture
def logger(tmp_path: Path) -> Iterator[MicroMetricLogger]:
    with jsonl_logger(tmp_path, DENSITY, ERROR) as log:
        yield log


@contextmanager
def no_sync() -> Iterator[None]:
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


def extract(module: Any, inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
    """Density of the kept weights and the L1 error of each attention row against dense
    causal softmax, per head: tensor operations only."""
    x, weights = inputs[0], output[1]
    batch, seq, _ = x.shape
    q, k, _ = (module.qkv(x).view(batch, seq, 3, module.heads, module.head_dim)
               .permute(2, 0, 3, 1, 4))
    scores = q @ k.transpose(-1, -2) / math.sqrt(module.head_dim)
    causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
    dense = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
    error = (weights - dense).abs().sum(dim=-1).mean(dim=(0, 2))
    return {DENSITY: density(weights), ERROR: error}


def reference(tiny_model: Any, tokens: list[Any]) -> list[tuple[int, str, list[float]]]:
    """(layer, metric, values) per step, layer and metric, computed without the logger."""
    out: list[tuple[int, str, list[float]]] = []
    attn = [block.attn for block in tiny_model.blocks]
    found: list[dict[str, Any]] = []
    hooks = [module.register_forward_hook(lambda m, i, o: found.append(extract(m, i, o)))
             for module in attn]
    try:
        with torch.no_grad():
            for t in tokens:
                found.clear()
                tiny_model(t)
                for layer, metrics in enumerate(found):
                    out += [(layer, m, metrics[m].cpu().tolist()) for m in (DENSITY, ERROR)]
    finally:
        for h in hooks:
            h.remove()
    return out


def logged(path: Path) -> list[tuple[int, str, list[float]]]:
    return [(e["metadata"]["layer_idx"], e["metric"], e["value"]) for e in read_events(path)]


def assert_same(got: list[tuple[int, str, list[float]]],
                want: list[tuple[int, str, list[float]]], tol: float) -> None:
    assert len(got) == len(want)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose(np.array([g[2] for g in got]), np.array([w[2] for w in want]),
                               rtol=tol, atol=tol)


def model_and_tokens(tiny: Any, steps: int) -> tuple[Any, list[Any]]:
    torch.manual_seed(0)
    top_k = [[4, 8, 16, 32], [8, 16, 32, 64], [2, 4, 8, 16], [16, 16, 32, 32]]
    model = tiny.TinyTransformer(256, 64, top_k).cuda().eval()
    gen = torch.Generator(device="cuda").manual_seed(1)
    tokens = [torch.randint(0, 256, (1, 64), device="cuda", generator=gen) for _ in range(steps)]
    return model, tokens


class TestTinyTransformer:
    """examples/tiny_transformer.py's model, instrumented, batch 1, a few hundred steps."""

    def test_eager_no_sync_values_exact(
        self, tiny: Any, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        model, tokens = model_and_tokens(tiny, STEPS)
        handle = instrument_attention(model, logger, extractor=extract, metrics=(DENSITY, ERROR))
        with no_sync(), torch.no_grad():
            for t in tokens:
                model(t)
            logger.flush()
        handle.remove()
        got = logged(tmp_path)
        assert len(got) == STEPS * 4 * 2
        assert_same(got, reference(model, tokens), 1e-6)
        assert logger._drops.snapshot() == {}

    def test_compiled_no_breaks_no_recompiles(
        self, tiny: Any, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """torch.compile (inductor): no graph break at all, no recompile after warm-up."""
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        model, tokens = model_and_tokens(tiny, 100)
        handle = instrument_attention(model, logger, extractor=extract, metrics=(DENSITY, ERROR))
        compiled = torch.compile(model)
        with torch.no_grad():
            for t in tokens[:3]:  # warm-up: compiles
                compiled(t)
        graphs = counters["stats"]["unique_graphs"]
        with no_sync(), torch.no_grad():
            for t in tokens[3:]:
                compiled(t)
            logger.flush()
        handle.remove()
        assert dict(counters["graph_break"]) == {}
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile after warm-up
        got = logged(tmp_path)
        assert len(got) == 100 * 4 * 2
        assert_same(got, reference(model, tokens), 1e-3)
        assert logger._drops.snapshot() == {}

    def test_reduce_overhead_events_per_step(
        self, tiny: Any, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """CUDA graphs (mode="reduce-overhead"): every step logs 4 layers x 2 metrics, after
        the replay (the documented rule), and capture never breaks."""
        torch._dynamo.reset()
        model, tokens = model_and_tokens(tiny, 60)
        handle = instrument_attention(model, logger, extractor=extract, metrics=(DENSITY, ERROR))
        compiled = torch.compile(model, mode="reduce-overhead")
        per_step = []
        with torch.no_grad():
            for i, t in enumerate(tokens):
                before = logger.get_total_records_logged()
                if i == 5:  # warm-up and recording done: replays from here on
                    torch.cuda.synchronize()
                    torch.cuda.set_sync_debug_mode("error")
                compiled(t)
                per_step.append(logger.get_total_records_logged() - before)
            logger.flush()
            torch.cuda.set_sync_debug_mode(0)
        handle.remove()
        assert per_step == [8] * 60
        assert_same(logged(tmp_path), reference(model, tokens), 1e-3)
        assert logger._drops.snapshot() == {}


def test_demo_torch_backend_on_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's torch backend on the GPU: [heads] density and error per layer, 300 steps,
    no sync from step 2 to the end of the run (the writer included); values as computed."""
    from otel_sparse import demo

    def strict(done: int) -> None:
        if done == 1:  # step 1 copies the demo's constant masks to the device (a sync)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")

    to_numpy = demo._TorchLoop.to_numpy

    def lenient_to_numpy(self: Any, values: Any) -> Any:
        torch.cuda.set_sync_debug_mode(0)  # the demo's own summary reads back: not under test
        return to_numpy(self, values)

    monkeypatch.setattr(demo._TorchLoop, "to_numpy", lenient_to_numpy)
    MicroMetricLogger._instance = None
    MicroMetricLogger._initialized = False
    try:
        result = demo.run_demo(demo.DemoConfig(steps=STEPS, backend="torch", device="cuda"),
                               run_dir=str(tmp_path), exporters=["jsonl"], on_step=strict,
                               heatmap=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert result.device == "cuda"
    rows = read_events(tmp_path)
    layers = result.config.layers
    assert len(rows) == STEPS * layers * 2
    for metric, values in result.values.items():
        got = np.array([e["value"] for e in rows if e["metric"] == metric])
        np.testing.assert_allclose(got, values.reshape(STEPS * layers, -1), rtol=1e-6)


def test_thread_local_capture_while_writer_copies(logger: MicroMetricLogger,
                                                  tmp_path: Path) -> None:
    """The writer's copies and polls on its own thread do not break a capture made with
    capture_error_mode="thread_local" (what reduce-overhead uses); bounded repetition."""
    x = torch.randn(256, 256, device="cuda")
    for rep in range(5):
        for layer in range(64):
            logger.log(DENSITY, torch.full((8,), float(rep), device="cuda"), {"layer_idx": layer})
        logger._hand_off(logger.log_queue)  # the writer starts copying now
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            y = x @ x
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            y = x @ x
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(y, x @ x)
    logger.flush()
    values = [e["value"] for e in read_events(tmp_path)]
    assert values == [[float(rep)] * 8 for rep in range(5) for _ in range(64)]
