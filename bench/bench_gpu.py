"""Decode-step time of a small transformer with per-head metrics: off, otel_sparse, .item().

Run on a GPU:  python3 bench/bench_gpu.py [--steps 300] [--rounds 5] [--out bench.json]
On the CPU:    .venv/bin/python bench/bench_gpu.py --dry-run   (tiny sizes, no CUDA graphs)
scripts/gpu-checks.sh runs it on a lent device; docs/torch.md shows the table.

A batch-1 decode loop with a KV cache: every step runs one token through ``--layers`` layers,
and every layer computes two ``[heads]`` metrics on the device, the density of its top-k
attention and the relative error of its output against dense attention. The modes differ
only in what happens to those tensors:

- ``off``: computed and discarded (the baseline: the comparison isolates logging);
- ``otel``: ``logger.log(metric, tensor, {"layer_idx": layer})`` per layer and metric;
- ``item``: ``logger.log(metric, float(tensor.mean().item()), ...)`` per layer and metric,
  the pattern of sparse-attention-hub's ResearchAttention (one host sync each).

Each runs eager and, on a GPU, as one CUDA graph per step (``graph_off``, ``graph_otel``):
the graph computes the step and its metric tensors into static outputs, and ``graph_otel``
logs those outputs after each replay, outside the captured region (the rule in
docs/torch.md). ``.item()`` has no CUDA-graph variant (it cannot run inside a capture).

Timing: a device synchronise before and after every step (so a step's time is its own), the
median over every step of ``--rounds`` runs per mode, the modes alternated within each round
(their order rotates) so drifts of clock and load spread over all of them. The ratios compare
modes of this one process. The run also checks that each logging mode logged
``steps x layers x 2`` events (``logs nothing`` cannot pass) and that none was dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from otel_sparse.facade import MicroMetricLogger

DENSITY = "research_attention_density"
ERROR = "research_attention_output_error"
METRICS = (DENSITY, ERROR)


class DecodeLayer(nn.Module):
    """Pre-norm layer: top-k attention over the KV cache (dense attention beside it, for the
    error metric), then an MLP."""

    def __init__(self, dim: int, heads: int, top_k: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.top_k = heads, dim // heads, top_k
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, d = self.heads, self.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(3, h, 1, d).unbind(0)
        k_cache.index_copy_(1, pos, k)  # [heads, max_len, head_dim]
        v_cache.index_copy_(1, pos, v)
        valid = positions <= pos  # [max_len]: the keys written so far
        scores = (q @ k_cache.transpose(-1, -2)) / math.sqrt(d)  # [heads, 1, max_len]
        scores = scores.masked_fill(~valid, float("-inf"))
        kth = scores.topk(self.top_k, dim=-1).values[..., -1:]
        keep = (scores >= kth) & valid
        sparse = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1) @ v_cache
        dense = scores.softmax(dim=-1) @ v_cache
        density = keep.sum(dim=(-2, -1)).float() / valid.sum().float()  # [heads]
        error = ((sparse - dense).norm(dim=(-2, -1))
                 / dense.norm(dim=(-2, -1)).clamp_min(1e-12))  # [heads]
        x = x + self.out(sparse.reshape(1, h * d))
        x = x + self.mlp(self.norm2(x))
        return x, density, error


class DecodeModel(nn.Module):
    """Embedding, layers, LM head, and a KV cache; ``step`` decodes one token greedily."""

    def __init__(self, vocab: int, dim: int, heads: int, layers: int, max_len: int,
                 top_k: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(DecodeLayer(dim, heads, top_k) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)
        shape = (layers, heads, max_len, dim // heads)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("positions", torch.arange(max_len), persistent=False)
        self.register_buffer("token", torch.zeros(1, dtype=torch.long), persistent=False)
        self.register_buffer("pos", torch.zeros(1, dtype=torch.long), persistent=False)

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()
        self.token.zero_()
        self.pos.zero_()

    def step(self, sink: Callable[[int, torch.Tensor, torch.Tensor], None]
             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One token; ``sink(layer, density, error)`` per layer; all state stays on device."""
        metrics = []
        x = self.embed(self.token)  # [1, dim]
        for i, layer in enumerate(self.layers):
            x, density, error = layer(x, self.pos, self.k_cache[i], self.v_cache[i],
                                      self.positions)
            sink(i, density, error)
            metrics.append((density, error))
        self.token.copy_(self.head(x).argmax(dim=-1))
        self.pos.add_(1)
        return metrics


def discard(layer: int, density: torch.Tensor, error: torch.Tensor) -> None:
    """The baseline: the metric tensors were computed; nothing is done with them."""


def otel_sink(logger: MicroMetricLogger) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
    log = logger.log

    def sink(layer: int, density: torch.Tensor, error: torch.Tensor) -> None:
        meta = {"layer_idx": layer}
        log(DENSITY, density, meta)
        log(ERROR, error, meta)
    return sink


def item_sink(logger: MicroMetricLogger) -> Callable[[int, torch.Tensor, torch.Tensor], None]:
    log = logger.log

    def sink(layer: int, density: torch.Tensor, error: torch.Tensor) -> None:
        meta = {"layer_idx": layer}
        log(DENSITY, float(density.mean().item()), meta)  # one host sync each
        log(ERROR, float(error.mean().item()), meta)
    return sink


class GraphStep:
    """One decode step captured as a CUDA graph; ``metrics`` are its static outputs."""

    def __init__(self, model: DecodeModel) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch's docs ask
            for _ in range(3):
                model.step(discard)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = model.step(discard)
        model.reset()

    def replay(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.graph.replay()
        return self.metrics


def run_mode(name: str, model: DecodeModel, steps: int, logger: MicroMetricLogger,
             graph: GraphStep | None, cuda: bool) -> list[float]:
    """Per-step seconds of ``steps`` decode steps from an empty cache, in mode ``name``."""
    model.reset()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    kind, _, what = name.partition("_")
    times = []
    with torch.no_grad(), logger.context(mode=name):
        if kind == "graph":
            assert graph is not None
            log = otel_sink(logger) if what == "otel" else discard
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                metrics = graph.replay()
                for layer, (density, error) in enumerate(metrics):
                    log(layer, density, error)  # after the replay, outside the capture
                sync()
                times.append(time.perf_counter() - start)
        else:
            sink = {"off": discard, "otel": otel_sink(logger), "item": item_sink(logger)}[what]
            for _ in range(steps):
                sync()
                start = time.perf_counter()
                model.step(sink)
                sync()
                times.append(time.perf_counter() - start)
    return times


def count_events(path: str) -> dict[str, int]:
    """Events in the event file per mode (from their context)."""
    counts: dict[str, int] = {}
    name = os.path.join(path, "micro_metrics.jsonl")
    with open(name, encoding="utf-8") as f:
        for line in f:
            mode = json.loads(line).get("context", {}).get("mode", "?")
            counts[mode] = counts.get(mode, 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top-k", type=int, default=16)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny sizes, no CUDA graphs: checks the harness, times nothing")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if args.dry_run:
        args.steps, args.rounds = min(args.steps, 12), min(args.rounds, 2)
        args.layers, args.heads, args.dim = 2, 4, 32
        torch.set_num_threads(1)
    if not cuda and not args.dry_run:
        print("no CUDA device: use --dry-run on the CPU", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    torch.manual_seed(0)
    model = DecodeModel(vocab=1024, dim=args.dim, heads=args.heads, layers=args.layers,
                        max_len=args.steps + 8, top_k=min(args.top_k, args.steps)).to(device)
    model.eval()
    modes = ["eager_off", "eager_otel", "eager_item"]
    graph = None
    if cuda:
        graph = GraphStep(model)
        modes += ["graph_off", "graph_otel"]

    run_dir = tempfile.mkdtemp(prefix="bench_gpu_")
    MicroMetricLogger._instance = None
    MicroMetricLogger._initialized = False
    for metric in METRICS:
        if metric not in MicroMetricLogger.get_registered_metrics():
            MicroMetricLogger.register_metric(metric, float)
    logger = MicroMetricLogger(log_path=run_dir, enabled_metrics="all", exporters=["jsonl"])

    for name in modes:  # warm-up: kernels, allocator, the writer's first batches
        run_mode(name, model, min(20, args.steps), logger, graph, cuda)
    logger.flush()
    warm = count_events(run_dir)
    times: dict[str, list[float]] = {name: [] for name in modes}
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for name in order:
            times[name] += run_mode(name, model, args.steps, logger, graph, cuda)
    logger.flush()
    counts = count_events(run_dir)
    drops = {f"{reason}/{metric}": n for (reason, metric), n in logger._drops.snapshot().items()}
    logger.close()

    expected = args.rounds * args.steps * args.layers * len(METRICS)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "torch": torch.__version__, "python": sys.version.split()[0],
        "steps": args.steps, "rounds": args.rounds, "layers": args.layers,
        "heads": args.heads, "dim": args.dim, "dry_run": args.dry_run,
        "modes": {}, "drops": drops, "ok": True, "problems": [],
    }
    for name in modes:
        med = statistics.median(times[name])
        base = statistics.median(times[name.split("_")[0] + "_off"])
        logged = counts.get(name, 0) - warm.get(name, 0)
        want = 0 if name.endswith("_off") else expected
        results["modes"][name] = {
            "median_us": med * 1e6, "p10_us": _quantile(times[name], 0.1) * 1e6,
            "p90_us": _quantile(times[name], 0.9) * 1e6, "vs_off": med / base,
            "events": logged, "events_expected": want,
        }
        if logged != want:
            results["ok"] = False
            results["problems"].append(f"{name}: {logged} events, expected {want}")
    if drops:
        results["ok"] = False
        results["problems"].append(f"drops: {drops}")

    print(f"{results['device']}, torch {results['torch']}: {args.layers} layers x "
          f"{args.heads} heads, dim {args.dim}, batch 1, {args.steps} steps x {args.rounds} "
          f"rounds per mode")
    print(f"{'mode':<12}{'median µs':>11}{'p10':>9}{'p90':>9}{'vs off':>9}{'events':>9}")
    for name, row in results["modes"].items():
        print(f"{name:<12}{row['median_us']:>11.1f}{row['p10_us']:>9.1f}{row['p90_us']:>9.1f}"
              f"{row['vs_off']:>9.3f}{row['events']:>9}")
    for problem in results["problems"]:
        print("PROBLEM:", problem)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0 if results["ok"] else 1


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


if __name__ == "__main__":
    sys.exit(main())
