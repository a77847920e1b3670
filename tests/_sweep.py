"""A small sweep of runs with known values: k in run.json, step and stage in the context."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import otel_sparse
from otel_sparse import MicroMetricLogger

DENSITY = "research_attention_density"
ERROR = "research_attention_output_error"
STEPS, LAYERS, HEADS = 4, 3, 4
STAGES = ("prefill", "decode")


def density(k: int, step: int, stage: str, layer: int, head: int) -> float:
    """A known density: an exact binary fraction, growing with k, larger in decode."""
    return k / 64 * (((step + layer + head) % 4) + 1) / 8 + (0.5 if stage == "decode" else 0.0)


def error(k: int, step: int, stage: str, layer: int, head: int) -> float:
    """A known output error: decode twice prefill (the trial's blend), smaller for larger k."""
    base = (((step * head + layer) % 4) + 1) / 16 * (64 / k)
    return base * (2 if stage == "decode" else 1)


def write_run(run_dir: Path, k: int, masker: str = "topk", seed: int = 0) -> Path:
    """One run of the sweep, logged through start_run with step and stage contexts."""
    for metric in (DENSITY, ERROR):
        if metric not in MicroMetricLogger.get_registered_metrics():
            MicroMetricLogger.register_metric(metric, float)
    logger = otel_sparse.start_run(str(run_dir), params={"k": k, "masker": masker,
                                                         "seed": seed})
    for step in range(STEPS):
        with logger.step(step):
            for stage in STAGES:
                with logger.context(stage=stage):
                    for layer in range(LAYERS):
                        heads = range(HEADS)
                        logger.log(DENSITY, np.array([density(k, step, stage, layer, h)
                                                      for h in heads]),
                                   metadata={"layer_idx": layer})
                        logger.log(ERROR, np.array([error(k, step, stage, layer, h)
                                                    for h in heads]),
                                   metadata={"layer_idx": layer})
    otel_sparse.end_run(logger)
    return run_dir


def write_sweep(base: Path, ks: tuple[int, ...] = (8, 16, 32)) -> list[Path]:
    """One run per k under ``base`` (folders k8, k16, ...), in that order."""
    return [write_run(base / f"k{k}", k) for k in ks]


def values(fn: object, k: int, stages: tuple[str, ...] = STAGES, layer: int | None = None,
           head: int | None = None, step: int | None = None) -> np.ndarray:
    """Every known value of ``fn`` for one run, narrowed as asked."""
    assert callable(fn)
    return np.array([
        fn(k, s, stage, layer_, h)
        for s in range(STEPS) if step is None or s == step
        for stage in STAGES if stage in stages
        for layer_ in range(LAYERS) if layer is None or layer_ == layer
        for h in range(HEADS) if head is None or h == head
    ])
