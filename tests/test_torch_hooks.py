"""instrument_attention: exact per-head densities from hooks, no host sync, torch.compile, CUDA."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse._instruments import InstrumentKind
from otel_sparse.testing import forbid_host_reads
from tests._helpers import latest_points, read_jsonl

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from otel_sparse.torch_hooks import (  # noqa: E402
    DENSITY,
    Handle,
    default_extractor,
    density,
    instrument_attention,
    mask_extractor,
)

pytestmark = pytest.mark.torch

REPO = Path(__file__).resolve().parents[1]
POINT_METRIC = f"sparse_attention.{DENSITY}"

# -- a module whose per-head masks, hence densities, are known by hand ------------------------

SEQ, HEADS, DIM, BATCH = 4, 4, 8, 2
_EYE = torch.eye(SEQ, dtype=torch.bool)
_FIRST_COLUMN = torch.zeros(SEQ, SEQ, dtype=torch.bool)
_FIRST_COLUMN[:, 0] = True
MASKS = torch.stack([
    torch.ones(SEQ, SEQ, dtype=torch.bool),         # every entry: 16/16
    torch.ones(SEQ, SEQ, dtype=torch.bool).tril(),  # causal: 10/16
    _EYE,                                           # diagonal: 4/16
    _EYE | _FIRST_COLUMN,                           # diagonal + first column: 7/16
])
HEAD_DENSITY = [1.0, 0.625, 0.25, 0.4375]
"""Counted by hand from MASKS; layer ``l`` uses the masks rolled by ``l`` heads."""


def expected(layer: int) -> list[float]:
    """Per-head density of layer ``layer`` of ``Stack``."""
    return HEAD_DENSITY[-layer % HEADS:] + HEAD_DENSITY[:-layer % HEADS]


class MaskedAttention(nn.Module):
    """Attention with a fixed boolean mask per head; returns ``(output, weights)``."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.heads = mask.shape[0]
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, dim = x.shape
        q, k, v = (self.qkv(x).view(batch, seq, 3, self.heads, dim // self.heads)
                   .permute(2, 0, 3, 1, 4))
        scores = (q @ k.transpose(-1, -2)).masked_fill(~self.mask, float("-inf"))
        weights = scores.softmax(dim=-1)  # exactly 0 where masked: every row keeps its diagonal
        return (weights @ v).transpose(1, 2).reshape(batch, seq, dim), weights


class TopKAttention(nn.Module):
    """Data-dependent sparsity: keeps the top ``k`` keys of each query (``k`` per head)."""

    def __init__(self, top_k: list[int]) -> None:
        super().__init__()
        self.heads = len(top_k)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.register_buffer("top_k", torch.tensor(top_k))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, dim = x.shape
        q, k, v = (self.qkv(x).view(batch, seq, 3, self.heads, dim // self.heads)
                   .permute(2, 0, 3, 1, 4))
        scores = q @ k.transpose(-1, -2)
        kth = scores.sort(dim=-1, descending=True).values.gather(
            -1, (self.top_k - 1).view(1, -1, 1, 1).expand(batch, self.heads, seq, 1))
        weights = scores.masked_fill(scores < kth, float("-inf")).softmax(dim=-1)
        return (weights @ v).transpose(1, 2).reshape(batch, seq, dim), weights


class Block(nn.Module):
    """Residual block around one attention module (named ``attn``, as in most models)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.attn = attn
        self.proj = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.attn(x)[0])


class Stack(nn.Module):
    """``layers`` blocks; attention of layer ``l`` is built by ``make(l)``."""

    def __init__(self, layers: int, make: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        make = make or (lambda layer: MaskedAttention(MASKS.roll(layer, dims=0)))
        self.blocks = nn.ModuleList(Block(make(layer)) for layer in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def topk_stack(layers: int) -> Stack:
    return Stack(layers, lambda layer: TopKAttention([1 + (layer + h) % SEQ for h in range(HEADS)]))


def inputs(seed: int = 0, device: str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, SEQ, DIM, generator=gen).to(device)




# -- fixtures and readers ---------------------------------------------------------------------


@pytest.fixture
def logger(
    fresh_logger: type[MicroMetricLogger], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> MicroMetricLogger:
    """A configured logger with nothing registered: instrument_attention registers density.

    Events stay in ``log_queue`` until a flush (no write after 1 s), so tests that compile
    for seconds can still read them there.
    """
    monkeypatch.setenv("OTEL_SPARSE_WRITE_DELAY", "3600")
    return fresh_logger(log_path=str(tmp_path), enabled_metrics="all", exporters=["jsonl"],
                        flush_interval=3600)


@pytest.fixture
def dynamo() -> Iterator[Any]:
    """torch._dynamo, with compile caches cleared before and after the test."""
    import torch._dynamo

    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


def events(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path / "micro_metrics.jsonl")


def by_layer(path: Path) -> dict[int, list[list[float]]]:
    """Layer -> every per-head value logged for it, in order."""
    out: dict[int, list[list[float]]] = {}
    for event in events(path):
        assert event["metric"] == DENSITY
        out.setdefault(event["metadata"]["layer_idx"], []).append(event["value"])
    return out


def queued(logger: MicroMetricLogger) -> list[tuple[int, list[float]]]:
    """(layer, values) of the events still in the logger's queue."""
    return [(ev.metadata["layer_idx"], ev.value.tolist()) for ev in logger.log_queue]


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: Any, example_inputs: Any) -> Any:
        self.graphs += 1
        return gm.forward


# -- tests ------------------------------------------------------------------------------------


class TestSelection:
    """Which modules get hooks, and which layer index each gets."""

    def test_default_finds_attention_classes_in_order(self, logger: MicroMetricLogger) -> None:
        """Classes named *Attention and nn.MultiheadAttention are found, numbered in order."""

        class Mixed(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.first = Block(MaskedAttention(MASKS))
                self.mha = nn.MultiheadAttention(DIM, 2, batch_first=True)
                self.linear = nn.Linear(DIM, DIM)

        handle = instrument_attention(Mixed(), logger)
        assert handle.layers == {0: "first.attn", 1: "mha"}

    def test_modules_inside_a_chosen_one_are_skipped(self, logger: MicroMetricLogger) -> None:
        """An *Attention wrapper around nn.MultiheadAttention is one layer, not two."""

        class WrapperAttention(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = nn.MultiheadAttention(DIM, 2, batch_first=True)

        model = nn.Sequential(WrapperAttention(), WrapperAttention())
        assert instrument_attention(model, logger).layers == {0: "0", 1: "1"}

    def test_module_types_and_layer_index(self, logger: MicroMetricLogger) -> None:
        """Explicit types replace the default; layer_index numbers modules, None skips one."""
        model = Stack(3)

        def index(name: str, module: nn.Module) -> int | None:
            layer = int(name.split(".")[1])
            return None if layer == 1 else 10 + layer

        handle = instrument_attention(model, logger, module_types=[MaskedAttention],
                                      layer_index=index)
        assert handle.layers == {10: "blocks.0.attn", 12: "blocks.2.attn"}
        assert instrument_attention(model, logger, module_types=[nn.Linear]).layers[0] == (
            "blocks.0.attn.qkv")

    def test_one_layer_for_two_modules_is_an_error(self, logger: MicroMetricLogger) -> None:
        """Two modules given one layer would mix their series: refused at attach time."""
        model = Stack(2)
        with pytest.raises(ValueError, match="layer 0"):
            instrument_attention(model, logger, layer_index=lambda name, module: 0)
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

    @pytest.mark.parametrize("every", [0, -1, 1.5, True])
    def test_bad_every_n_steps(self, logger: MicroMetricLogger, every: Any) -> None:
        """every_n_steps must be a positive int."""
        with pytest.raises(ValueError, match="every_n_steps"):
            instrument_attention(Stack(1), logger, every_n_steps=every)


class TestRegistration:
    """Metrics are registered (and enabled) as OTel histograms with unit 1."""

    def test_registers_and_enables_density(self, logger: MicroMetricLogger) -> None:
        """A logger configured with "all" before registration still logs the new metric."""
        assert DENSITY not in MicroMetricLogger.get_registered_metrics()
        instrument_attention(Stack(1), logger)
        spec = MicroMetricLogger._metric_specs[DENSITY]
        assert (spec.dtype, spec.kind, spec.unit) == (float, InstrumentKind.HISTOGRAM, "1")
        assert spec.boundaries[0] == 0.0 and 1.0 in spec.boundaries
        assert "per layer and head" in spec.description
        assert logger.is_metric_enabled(DENSITY)

    def test_existing_registration_and_choice_are_kept(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """A metric registered beforehand keeps its options, and stays off if left out."""
        fresh_logger.register_metric(DENSITY, float, unit="%", description="mine")
        fresh_logger.register_metric("other", float)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics=["other"])
        model = Stack(1)
        instrument_attention(model, logger)
        assert MicroMetricLogger._metric_specs[DENSITY].unit == "%"
        assert not logger.is_metric_enabled(DENSITY)
        model(inputs())
        assert logger.get_total_records_logged() == 0


    def test_all_stays_all_after_instrumenting(self, logger: MicroMetricLogger) -> None:
        """Under enabled_metrics="all", a metric registered after instrument_attention is on."""
        instrument_attention(Stack(1), logger)
        MicroMetricLogger.register_metric("registered_later", float)
        assert logger.is_metric_enabled(DENSITY)
        assert logger.is_metric_enabled("registered_later")


class TestValues:
    """Exact per-head values, logged as [heads] tensors with only the layer in metadata."""

    def test_known_masks_give_hand_computed_densities(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """Each layer logs its masks' densities per head; metrics.jsonl has layer x head series."""
        model = Stack(3)
        instrument_attention(model, logger)
        for seed in range(2):
            model(inputs(seed))
        logger.flush()
        assert by_layer(tmp_path) == {layer: [expected(layer)] * 2 for layer in range(3)}
        event = events(tmp_path)[0]
        assert event["metadata"] == {"layer_idx": 0}
        assert event["location"].endswith("MaskedAttention.forward")
        points = latest_points(tmp_path / "metrics.jsonl", POINT_METRIC)
        assert sorted(points) == [(layer, head) for layer in range(3) for head in range(HEADS)]
        for (layer, head), row in points.items():
            assert (row["count"], row["sum"]) == (2, 2 * expected(layer)[head])

    def test_multihead_attention_weights_per_head(
        self, logger: MicroMetricLogger, tmp_path: Path
    ) -> None:
        """nn.MultiheadAttention with per-head weights and a causal mask: 10/16 per head."""

        class Causal(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.mha = nn.MultiheadAttention(DIM, 2, batch_first=True)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                causal = torch.ones(SEQ, SEQ, dtype=torch.bool).triu(1)  # True: not allowed
                out, _ = self.mha(x, x, x, attn_mask=causal, need_weights=True,
                                  average_attn_weights=False)
                return out

        model = Causal()
        instrument_attention(model, logger)
        model(inputs())
        assert queued(logger) == [(0, [0.625, 0.625])]

    def test_averaged_or_missing_weights_log_nothing(self, logger: MicroMetricLogger) -> None:
        """Weights without a head dimension (or none at all) give no value, and no error."""
        mha = nn.MultiheadAttention(DIM, 2, batch_first=True)
        instrument_attention(mha, logger)
        x = inputs()
        mha(x, x, x)                      # averaged [batch, q, k] weights
        mha(x, x, x, need_weights=False)  # None
        assert logger.get_total_records_logged() == 0

    def test_mask_extractor_reads_the_module_mask(self, logger: MicroMetricLogger) -> None:
        """mask_extractor(attr) turns a mask the module keeps into per-head densities."""

        class KeepsMaskAttention(MaskedAttention):
            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                self.last_mask = self.mask.expand(x.shape[0], -1, -1, -1)
                return super().forward(x)

        model = Stack(2, lambda layer: KeepsMaskAttention(MASKS.roll(layer, dims=0)))
        instrument_attention(model, logger, extractor=mask_extractor("last_mask"))
        model(inputs())
        assert queued(logger) == [(0, expected(0)), (1, expected(1))]

    def test_custom_extractor_and_metrics(self, logger: MicroMetricLogger) -> None:
        """A user extractor may log several metrics; keys not asked for are ignored."""

        def extract(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
            weights = output[1]
            return {"max_weight": weights.amax(dim=(0, 2, 3)),
                    DENSITY: density(weights), "ignored": weights.sum()}

        model = Stack(1)
        assert instrument_attention(Stack(1), logger, metrics=DENSITY).metrics == (DENSITY,)
        handle = instrument_attention(model, logger, extractor=extract,
                                      metrics=(DENSITY, "max_weight"))
        model(inputs())
        assert [ev.metric for ev in logger.log_queue] == [DENSITY, "max_weight"]
        assert logger.log_queue[0].value.tolist() == expected(0)
        assert "max_weight" in MicroMetricLogger.get_registered_metrics()
        assert handle.metrics == (DENSITY, "max_weight")

    def test_default_extractor(self) -> None:
        """Density of the first 4-D tensor of a tuple output; nothing for anything else."""
        weights = torch.zeros(2, 3, 4, 4)
        weights[:, 1] = 1.0
        out = default_extractor(nn.Identity(), (), (torch.ones(2, 4, 8), weights, weights * 0))
        assert list(out) == [DENSITY]
        assert out[DENSITY].tolist() == [0.0, 1.0, 0.0]
        for output in (weights, (torch.ones(2, 4, 4),), None, (None, None)):
            assert default_extractor(nn.Identity(), (), output) == {}

    def test_density_helper(self) -> None:
        """density() averages over every dimension but the head one."""
        mask = torch.zeros(3, 2, 4, dtype=torch.bool)  # heads in dim 1
        mask[:, 1, :2] = True
        mask[0, 0, 0] = True
        want = torch.tensor([1 / 12, 0.5])
        for got in (density(mask, head_dim=1), density(mask.transpose(0, 1), head_dim=0),
                    density(mask.float(), head_dim=-2)):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want)

    def test_failing_extractor_never_breaks_forward(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An extractor error is warned once per layer; the forward pass returns normally."""

        def broken(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
            raise RuntimeError("boom")

        model = Stack(2)
        instrument_attention(model, logger, extractor=broken)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for _ in range(3):
                model(inputs())
        assert len([r for r in caplog.records if "boom" in r.getMessage()]) == 2

    def test_default_logger_is_the_singleton_at_log_time(
        self, fresh_logger: type[MicroMetricLogger], tmp_path: Path
    ) -> None:
        """With logger=None the hooks log to whatever MicroMetricLogger() is when they run."""
        model = Stack(1)
        instrument_attention(model)
        logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all", flush_interval=3600)
        model(inputs())
        assert queued(logger) == [(0, expected(0))]


class TestNeverSilent:
    """A module the built-in extractors find nothing in gets one warning that says what to do."""

    @staticmethod
    def _hints(caplog: pytest.LogCaptureFixture) -> list[str]:
        return [r.getMessage() for r in caplog.records if "instrument_attention: layer" in
                r.getMessage()]

    def test_forward_that_returns_only_a_tensor(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The common case: one warning per module, naming it and the mask_extractor to pass."""

        class TensorOnlyAttention(MaskedAttention):
            def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
                self.last_mask = self.mask.expand(x.shape[0], -1, -1, -1)
                return super().forward(x)[0]

        class TensorBlock(Block):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + self.proj(self.attn(x))

        model = Stack(2, lambda layer: TensorOnlyAttention(MASKS.roll(layer, dims=0)))
        model.blocks = nn.ModuleList(TensorBlock(b.attn) for b in model.blocks)
        instrument_attention(model, logger)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            for seed in range(3):
                model(inputs(seed))
        hints = self._hints(caplog)
        assert len(hints) == 2  # one per module, not one per call
        assert "layer 0: blocks.0.attn (TensorOnlyAttention)" in hints[0]
        assert "blocks.1.attn (TensorOnlyAttention)" in hints[1]
        assert "it returned a 3-D tensor" in hints[0]
        assert "extractor=mask_extractor('last_mask')" in hints[0]
        assert logger.get_total_records_logged() == 0
        # and the extractor the warning names does log the module's densities
        instrument_attention(model, logger, extractor=mask_extractor("last_mask"))
        model(inputs())
        assert queued(logger) == [(0, expected(0)), (1, expected(1))]

    def test_multihead_attention_without_weights_says_how_to_call_it(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """nn.MultiheadAttention with averaged weights: the warning names the call arguments."""
        mha = nn.MultiheadAttention(DIM, 2, batch_first=True)
        instrument_attention(mha, logger)
        x = inputs()
        with caplog.at_level("WARNING", logger="otel_sparse"):
            mha(x, x, x)
            mha(x, x, x)
        hints = self._hints(caplog)
        assert len(hints) == 1
        assert "MultiheadAttention" in hints[0] and "a 3-D tensor" in hints[0]
        assert "need_weights=True, average_attn_weights=False" in hints[0]

    def test_mask_extractor_with_a_missing_attribute(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """mask_extractor naming an attribute the module never sets: warned, with the name."""
        model = Stack(1)
        instrument_attention(model, logger, extractor=mask_extractor("last_mask"))
        with caplog.at_level("WARNING", logger="otel_sparse"):
            model(inputs())
            model(inputs())
        hints = self._hints(caplog)
        assert len(hints) == 1
        assert "has no tensor attribute 'last_mask'" in hints[0]

    def test_modules_that_log_and_own_extractors_are_not_warned(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Weights found: no warning; a user extractor that returns {} is the user's choice."""
        model = Stack(2)
        with caplog.at_level("WARNING", logger="otel_sparse"):
            handle = instrument_attention(model, logger)
            model(inputs())
            handle.remove()
            instrument_attention(model, logger, extractor=lambda m, i, o: {})
            model(inputs())
        assert self._hints(caplog) == []
        assert logger.get_total_records_logged() == 2


class TestNoHostSync:
    """Forward passes with hooks read nothing back to the host."""

    def test_forward_reads_nothing_back(
        self, logger: MicroMetricLogger, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Hooks, reductions and log() run under forbid_host_reads(), hand-offs to the writer too."""
        logger.flush_every = 4
        model = topk_stack(3)
        instrument_attention(model, logger, every_n_steps=2)
        x = inputs()
        with caplog.at_level("WARNING", logger="otel_sparse"), forbid_host_reads():
            for _ in range(6):
                model(x)
        assert not caplog.records
        logger.flush()
        assert {layer: len(values) for layer, values in by_layer(tmp_path).items()} == {
            0: 3, 1: 3, 2: 3}

    def test_guard_reaches_into_hooks(
        self, logger: MicroMetricLogger, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An extractor calling .item() is caught by the mode (then warned, not logged)."""

        def reads(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
            return {DENSITY: torch.full((HEADS,), output[1].sum().item())}

        model = Stack(1)
        instrument_attention(model, logger, extractor=reads)
        model(inputs())
        assert logger.get_total_records_logged() == 1  # fine without the guard
        with caplog.at_level("WARNING", logger="otel_sparse"), forbid_host_reads():
            model(inputs())
        assert logger.get_total_records_logged() == 1
        assert "HostSyncError" in caplog.records[0].getMessage()


class TestLifecycle:
    """remove(), context manager, every_n_steps."""

    def test_remove_detaches_everything(self, logger: MicroMetricLogger) -> None:
        """After remove() no hook is left on any module and nothing more is logged."""
        model = Stack(2)
        before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
        handle = instrument_attention(model, logger)
        model(inputs())
        assert logger.get_total_records_logged() == 2
        handle.remove()
        handle.remove()  # twice is fine
        assert handle.removed
        assert [(len(m._forward_hooks), len(m._forward_pre_hooks))
                for m in model.modules()] == before
        model(inputs())
        assert logger.get_total_records_logged() == 2

    def test_context_manager(self, logger: MicroMetricLogger) -> None:
        """Leaving the with block detaches the hooks."""
        model = Stack(2)
        with instrument_attention(model, logger) as handle:
            assert isinstance(handle, Handle)
            model(inputs())
        model(inputs())
        assert logger.get_total_records_logged() == 2
        assert "removed" in repr(handle)

    def test_every_n_steps(self, logger: MicroMetricLogger) -> None:
        """every_n_steps=3 logs forward calls 0, 3 and 6 of seven."""
        model = Stack(2)
        handle = instrument_attention(model, logger, every_n_steps=3)
        logged = []
        for step in range(7):
            before = logger.get_total_records_logged()
            model(inputs(step))
            logged.append(logger.get_total_records_logged() - before)
        assert logged == [2, 0, 0, 2, 0, 0, 2]
        assert handle.steps == 7


class TestCompile:
    """torch.compile: no graph break from the hooks, same values as eager.

    The graph tests use the "eager" backend (and one "aot_eager"): the hooks' effect on
    graphs is decided by Dynamo, before any backend; inductor is exercised once.
    """

    @staticmethod
    def explain(dynamo: Any, fn: Callable[..., Any], x: torch.Tensor) -> tuple[int, int]:
        dynamo.reset()
        out = dynamo.explain(fn)(x)
        return out.graph_count, out.graph_break_count

    def test_no_graph_break_whatever_the_depth(
        self, logger: MicroMetricLogger, dynamo: Any
    ) -> None:
        """One graph and zero breaks for 1, 2 and 4 layers: as many as without hooks."""
        x = inputs()
        for layers in (1, 2, 4):
            model = Stack(layers)
            plain = self.explain(dynamo, model, x)
            instrument_attention(model, logger)
            assert self.explain(dynamo, model, x) == plain == (1, 0), layers

    def test_compiled_and_eager_log_the_same_values(
        self, logger: MicroMetricLogger, dynamo: Any
    ) -> None:
        """Data-dependent (top-k) densities: compiled (aot_eager) and eager logs are equal."""
        torch.manual_seed(0)
        model = topk_stack(3)
        handle = instrument_attention(model, logger)
        steps = [inputs(seed) for seed in range(3)]
        for x in steps:
            model(x)
        eager = queued(logger)
        logger.log_queue.clear()
        counter = GraphCounter()
        compiled = torch.compile(model, backend=counter)
        for x in steps:
            compiled(x)
        assert queued(logger) == eager
        assert len(eager) == 9
        assert counter.graphs == 1
        logger.log_queue.clear()
        for x in steps:
            torch.compile(model, backend="aot_eager")(x)
        assert queued(logger) == eager
        handle.remove()
        assert all(hook.latest is None for hook in handle._hooks)

    def test_every_n_steps_compiles_once(self, logger: MicroMetricLogger, dynamo: Any) -> None:
        """Skipped steps do not recompile: the counter is read outside the graph."""
        model = Stack(2)
        handle = instrument_attention(model, logger, every_n_steps=2)
        counter = GraphCounter()
        compiled = torch.compile(model, backend=counter)
        for step in range(5):
            compiled(inputs(step))
        assert counter.graphs == 1
        assert [layer for layer, _ in queued(logger)] == [0, 1] * 3
        assert handle.steps == 5

    def test_model_compile_and_per_block_compile(
        self, logger: MicroMetricLogger, dynamo: Any
    ) -> None:
        """Module.compile() and compiling each block log the same; blocks add no recompiles."""
        x = inputs()
        baseline = GraphCounter()
        plain = Stack(4)
        for block in plain.blocks:
            block.compile(backend=baseline)
        plain(x)
        plain(x)
        dynamo.reset()

        for per_block in (False, True):
            model = Stack(4)
            counter = GraphCounter()
            with instrument_attention(model, logger):
                if per_block:
                    for block in model.blocks:
                        block.compile(backend=counter)
                else:
                    model.compile(backend=counter)
                model(x)
                model(x)
            assert queued(logger) == [(layer, expected(layer)) for layer in range(4)] * 2
            assert counter.graphs == (baseline.graphs if per_block else 1)
            logger.log_queue.clear()
            dynamo.reset()

    def test_model_call_inside_a_compiled_step(
        self, logger: MicroMetricLogger, dynamo: Any
    ) -> None:
        """When the model call itself is traced, its own (disabled) hooks break the graph, as
        often for 4 layers as for 1 (once, with torch 2.15); the values still arrive."""

        def run(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            def step(x: torch.Tensor) -> torch.Tensor:
                return model(x).square().mean()
            return step

        x = inputs()
        counts = {}
        for layers in (1, 4):
            model = Stack(layers)
            instrument_attention(model, logger)
            counts[layers] = self.explain(dynamo, run(model), x)[1]
            logger.log_queue.clear()
            torch.compile(run(model), backend="eager")(x)
            assert queued(logger) == [(layer, expected(layer)) for layer in range(layers)]
            logger.log_queue.clear()
        assert counts[1] == counts[4] <= 2

    def test_inductor(self, logger: MicroMetricLogger, dynamo: Any) -> None:
        """The inductor backend (C++ on CPU) logs the eager values."""
        model = topk_stack(2)
        instrument_attention(model, logger)
        x = inputs()
        model(x)
        eager = queued(logger)
        logger.log_queue.clear()
        torch.compile(model)(x)
        assert queued(logger) == eager


def test_import_otel_sparse_does_not_import_torch() -> None:
    """torch is imported by otel_sparse.torch_hooks, never by the package itself."""
    code = "import sys, otel_sparse; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_example_writes_layer_head_series(tmp_path: Path) -> None:
    """examples/tiny_transformer.py runs and leaves both JSONL files with layer x head series."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OTEL_SPARSE_EXPORTERS", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "tiny_transformer.py"), "--steps", "6",
         "--every", "2", "--run-dir", str(run_dir)],
        check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(run_dir) in proc.stdout and "expected" in proc.stdout
    logged = read_jsonl(run_dir / "micro_metrics.jsonl")
    assert len(logged) == 3 * 4  # steps 0, 2, 4 of 6; four layers
    assert {e["metadata"]["layer_idx"] for e in logged} == {0, 1, 2, 3}
    assert all(len(e["value"]) == 4 for e in logged)
    points = latest_points(run_dir / "metrics.jsonl", POINT_METRIC)
    assert sorted(points) == [(layer, head) for layer in range(4) for head in range(4)]
    assert all(row["count"] == 3 for row in points.values())
    # layer 1, head 3 keeps every causal key (k = seq): density (seq + 1) / (2 seq) exactly
    assert math.isclose(points[(1, 3)]["sum"] / 3, 65 / 128)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.cuda
class TestCuda:
    """On a GPU: no synchronisation per step, nothing during CUDA graph capture."""

    def test_forward_without_sync(self, logger: MicroMetricLogger, tmp_path: Path) -> None:
        """Hooks and log() run under set_sync_debug_mode('error'); values arrive intact."""
        model = Stack(2).cuda()
        instrument_attention(model, logger)
        x = inputs(device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            with forbid_host_reads():
                for _ in range(3):
                    model(x)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        logger.flush()
        assert by_layer(tmp_path) == {layer: [expected(layer)] * 3 for layer in range(2)}

    def test_nothing_happens_during_graph_capture(self, logger: MicroMetricLogger) -> None:
        """Capturing the model (or one attention module) logs and counts nothing; replay neither."""
        model = Stack(2).cuda()
        handle = instrument_attention(model, logger)
        x = inputs(device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                model(x)  # warm-up, logged
        torch.cuda.current_stream().wait_stream(side)
        assert (logger.get_total_records_logged(), handle.steps) == (4, 2)
        assert handle.active
        part = torch.cuda.CUDAGraph()
        with torch.cuda.graph(part):  # the layer hook's own check
            model.blocks[0].attn(x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # the model's pre-hook turns every layer hook off
            model(x)
        graph.replay()
        part.replay()
        torch.cuda.synchronize()
        assert (logger.get_total_records_logged(), handle.steps) == (4, 2)
        model(x)
        assert (logger.get_total_records_logged(), handle.steps) == (6, 3)
        assert queued(logger)[-2:] == [(layer, expected(layer)) for layer in range(2)]

    def test_compiled_reduce_overhead(self, logger: MicroMetricLogger, dynamo: Any) -> None:
        """torch.compile(mode="reduce-overhead") (CUDA graphs) logs the eager values."""
        model = topk_stack(2).cuda()
        instrument_attention(model, logger)
        steps = [inputs(seed, device="cuda") for seed in range(4)]
        for x in steps:
            model(x)
        eager = queued(logger)
        logger.log_queue.clear()
        compiled = torch.compile(model, mode="reduce-overhead")
        for x in steps:
            compiled(x)
        assert queued(logger) == eager
