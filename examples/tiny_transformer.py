"""A tiny top-k sparse transformer, instrumented with ``instrument_attention``: no model edits.

Builds a 4-layer causal transformer in code (no downloads) whose attention keeps, for every
query, the ``k`` highest-scoring earlier keys, with a different ``k`` per head and per layer.
``instrument_attention`` hooks each ``TopKAttention`` module and logs the density of its
attention weights as a ``[heads]`` tensor per layer; nothing is read back to the host inside
the loop. The summary compares what reached ``metrics.jsonl`` with the density the top-k rule
implies: ``sum_i min(k, i + 1) / seq**2``.

Run: ``.venv/bin/python examples/tiny_transformer.py [--steps 20] [--run-dir DIR] [--compile]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any

import torch
from torch import nn

import otel_sparse
from otel_sparse.torch_hooks import DENSITY, instrument_attention


class TopKAttention(nn.Module):
    """Causal multi-head attention keeping the top ``k[h]`` keys per query for head ``h``.

    Returns ``(output, weights)`` with weights ``[batch, heads, seq, seq]``: zero where a key
    was dropped, which is what the default extractor of ``instrument_attention`` measures.
    """

    top_k: torch.Tensor

    def __init__(self, dim: int, top_k: list[int]) -> None:
        super().__init__()
        self.heads = len(top_k)
        self.head_dim = dim // self.heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("top_k", torch.tensor(top_k), persistent=False)
        self.k_max = max(top_k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, seq, dim = x.shape
        q, k, v = (self.qkv(x).view(batch, seq, 3, self.heads, self.head_dim)
                   .permute(2, 0, 3, 1, 4))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        # The k[h]-th largest score of each query row is that head's threshold.
        top = scores.topk(min(self.k_max, seq), dim=-1).values
        kth = (self.top_k.clamp(max=seq) - 1).view(1, self.heads, 1, 1)
        threshold = top.gather(-1, kth.expand(batch, self.heads, seq, 1))
        keep = (scores >= threshold) & causal
        weights = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        mixed = (weights @ v).transpose(1, 2).reshape(batch, seq, dim)
        return self.out(mixed), weights


class Block(nn.Module):
    """Pre-norm transformer block: top-k attention, then an MLP."""

    def __init__(self, dim: int, top_k: list[int]) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TopKAttention(dim, top_k)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))[0]
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class TinyTransformer(nn.Module):
    """Embedding, ``len(top_k)`` blocks, LM head."""

    def __init__(self, vocab: int, dim: int, top_k: list[list[int]]) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, k) for k in top_k)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(x)
        return logits


def expected_density(k: int, seq: int) -> float:
    """Share of the seq x seq map a causal top-k head keeps (ties aside)."""
    return sum(min(k, i + 1) for i in range(seq)) / seq**2


def per_layer_head(metrics_file: str) -> dict[tuple[int, int], tuple[int, float]]:
    """(layer, head) -> (values counted, mean) of the density histogram, from metrics.jsonl."""
    latest: dict[tuple[int, int], tuple[int, float]] = {}
    deltas: dict[tuple[int, int], tuple[int, float]] = {}
    with open(metrics_file, encoding="utf-8") as f:
        for line in f:
            row: dict[str, Any] = json.loads(line)
            if not row["metric"].endswith(DENSITY) or row.get("layer") is None:
                continue
            key = (int(row["layer"]), int(row["head"]))
            if row.get("temporality") == "delta":
                count, total = deltas.get(key, (0, 0.0))
                deltas[key] = (count + row["count"], total + row["sum"])
            else:
                latest[key] = (row["count"], row["sum"])
    totals = deltas or latest
    return {key: (count, total / count) for key, (count, total) in sorted(totals.items())
            if count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--every", type=int, default=1, help="log every N forward calls")
    parser.add_argument("--run-dir", default=None, help="default: ./otel_sparse_runs/<run id>")
    parser.add_argument("--compile", nargs="?", const="inductor", default=None,
                        metavar="BACKEND", help="torch.compile the model (default inductor)")
    args = parser.parse_args()

    torch.manual_seed(0)
    seq, batch, vocab, dim = 64, 4, 256, 64
    top_k = [[4, 8, 16, 32], [8, 16, 32, 64], [2, 4, 8, 16], [16, 16, 32, 32]]
    model = TinyTransformer(vocab, dim, top_k).eval()

    handle = instrument_attention(model, every_n_steps=args.every)
    logger = otel_sparse.start_run(args.run_dir, params={
        "example": "tiny_transformer", "layers": len(top_k), "heads": len(top_k[0]),
        "seq": seq, "batch": batch, "top_k": top_k, "every_n_steps": args.every,
        "compile": args.compile,
    })
    run_dir = logger.log_path
    assert run_dir is not None
    step_fn = torch.compile(model, backend=args.compile) if args.compile else model

    start = time.perf_counter()
    try:
        with torch.no_grad():
            for _ in range(args.steps):
                tokens = torch.randint(0, vocab, (batch, seq))
                step_fn(tokens)
    finally:
        handle.remove()
        otel_sparse.end_run(logger)
    seconds = time.perf_counter() - start

    print(f"{args.steps} steps in {seconds:.2f} s; instrumented layers: {handle.layers}")
    print(f"run folder:  {os.path.abspath(run_dir)}")
    for name in ("micro_metrics.jsonl", "metrics.jsonl", "run.json"):
        print(f"  {name:<20} {os.path.join(os.path.abspath(run_dir), name)}")
    print(f"\n{DENSITY} per layer and head (mean over logged steps; expected from top-k):")
    print(f"{'layer':>5} {'head':>4} {'k':>3} {'count':>5} {'mean':>8} {'expected':>8}")
    for (layer, head), (count, mean) in per_layer_head(
            os.path.join(run_dir, "metrics.jsonl")).items():
        k = top_k[layer][head]
        print(f"{layer:>5} {head:>4} {k:>3} {count:>5} {mean:>8.4f} "
              f"{expected_density(k, seq):>8.4f}")


if __name__ == "__main__":
    main()
