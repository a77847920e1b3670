"""A small sparse-attention loop that logs what researchers log, to try otel_sparse in a minute.

Every step draws random Q/K/V for every layer and head, computes dense causal attention and
sparse attention whose mask keeps the union of sink tokens, a local window and the top-k
scores of each query (the usual sink + local + top-k masker), and logs per head:

- ``research_attention_density``: the share of causal attention entries the mask keeps;
- ``research_attention_output_error``: ``||O_sparse - O_dense|| / ||O_dense||``.

Each is logged as one ``[heads]`` tensor (or array) per layer with ``metadata={"layer_idx":
layer}``, exactly as sparse-attention-hub code calls ``MicroMetricLogger.log``; no value is
read back to the host inside the loop. Every head has its own locality (how strongly scores
favour nearby keys), so density and error differ by layer and head.

Example:
    >>> from otel_sparse.demo import DemoConfig, run_demo        # doctest: +SKIP
    >>> result = run_demo(DemoConfig(steps=50), run_dir="/tmp/demo-run")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

DENSITY = "research_attention_density"
OUTPUT_ERROR = "research_attention_output_error"
METRICS = (DENSITY, OUTPUT_ERROR)
BACKENDS = ("auto", "torch", "numpy")
HEATMAP_NAME = "density_heatmap.png"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo loop; the defaults finish in a few seconds on two CPU cores."""

    steps: int = 300
    layers: int = 4
    heads: int = 8
    seq: int = 128
    head_dim: int = 32
    top_k: int = 16
    sink: int = 4
    window: int = 8
    seed: int = 0
    backend: str = "auto"
    device: str = "auto"

    def check(self) -> None:
        """Raise ValueError for sizes the loop cannot run with."""
        for name in ("steps", "layers", "heads", "seq", "head_dim", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sink < 0 or self.window < 0:
            raise ValueError("sink and window must not be negative")
        if self.top_k > self.seq:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed seq ({self.seq})")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


@dataclass
class DemoResult:
    """What one demo run produced."""

    run_dir: str
    run_id: str
    backend: str
    device: str
    seconds: float
    config: DemoConfig
    values: dict[str, np.ndarray] = field(default_factory=dict)
    """Metric -> every logged value, shape [steps, layers, heads] (kept for the summary)."""
    heatmap: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    """Name -> path of each file the run wrote."""


def torch_available() -> bool:
    """Whether torch can be imported (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def resolve_backend(backend: str) -> str:
    """``torch`` or ``numpy``; ``auto`` picks torch when it is installed."""
    if backend == "auto":
        return "torch" if torch_available() else "numpy"
    if backend == "torch" and not torch_available():
        raise ValueError("backend 'torch' asked for, but torch is not installed "
                         "(pip install 'otel-sparse[torch]', or use --backend numpy)")
    if backend not in ("torch", "numpy"):
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_device(backend: str, device: str) -> None:
    """Raise ValueError, with a one-line reason, when ``device`` cannot run ``backend`` here.

    ``auto`` and ``cpu`` always can; the numpy backend runs on the CPU only; a torch device
    must parse and exist (``cuda`` needs a CUDA device that torch can use).
    """
    if device in ("auto", "cpu"):
        return
    if backend == "numpy":
        raise ValueError(f"--device {device}: the numpy backend runs on the CPU only "
                         "(use --backend torch, or --device cpu)")
    import warnings

    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1 ...)"
                         ) from None
    with warnings.catch_warnings():  # an old driver warns here: the one line below says it
        warnings.simplefilter("ignore")
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                built = "built without CUDA" if torch.version.cuda is None else \
                    f"built for CUDA {torch.version.cuda}, but no usable CUDA device or driver"
                raise ValueError(f"--device {device}: CUDA is not available here (torch "
                                 f"{torch.__version__}, {built}); use --device cpu or auto")
            count = torch.cuda.device_count()
            if parsed.index is not None and parsed.index >= count:
                raise ValueError(f"--device {device}: this machine has {count} CUDA "
                                 f"device(s) (cuda:0 to cuda:{count - 1})")
        elif parsed.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")


def _head_profile(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-(layer, head) locality and per-layer score scale, fixed by the seed.

    Locality 0 leaves top-k spread over every causal key (high density, high error); about 1
    pulls it into the local window (low density, low error). Deeper layers lean local.
    """
    rng = np.random.default_rng(cfg.seed + 7919)
    depth = np.arange(cfg.layers) / max(1, cfg.layers - 1)
    locality = rng.uniform(0.0, 1.0, size=(cfg.layers, cfg.heads)) * (0.3 + 0.9 * depth)[:, None]
    scale = 1.0 + 0.5 * depth
    return locality, scale


def _structure(cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal mask, sink+local mask ([seq, seq] bool) and the locality bias [L, H, S, S]."""
    i = np.arange(cfg.seq)[:, None]
    j = np.arange(cfg.seq)[None, :]
    causal = j <= i
    fixed = causal & ((j < cfg.sink) | (i - j < cfg.window))
    locality, scale = _head_profile(cfg)
    distance = (i - j).clip(min=0) / np.sqrt(cfg.seq)
    bias = -locality[:, :, None, None] * distance[None, None]
    bias = bias * scale[:, None, None, None]
    return causal, fixed, bias.astype(np.float32)


class _NumpyLoop:
    """One step of the demo with numpy: density and error as [layers, heads] arrays."""

    device = "cpu"

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.causal, self.fixed, self.bias = _structure(cfg)
        self.n_causal = float(self.causal.sum())
        _, scale = _head_profile(cfg)
        self.scale = (scale / math.sqrt(cfg.head_dim)).astype(np.float32)[:, None, None, None]

    def step(self) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        shape = (cfg.layers, cfg.heads, cfg.seq, cfg.head_dim)
        q = self.rng.standard_normal(shape, dtype=np.float32)
        k = self.rng.standard_normal(shape, dtype=np.float32)
        v = self.rng.standard_normal(shape, dtype=np.float32)
        scores = q @ k.swapaxes(-1, -2) * self.scale + self.bias
        scores = np.where(self.causal, scores, -np.inf)
        top = np.argpartition(-scores, cfg.top_k - 1, axis=-1)[..., : cfg.top_k]
        keep = np.zeros(scores.shape, dtype=bool)
        np.put_along_axis(keep, top, True, axis=-1)
        keep = (keep | self.fixed) & self.causal
        density = keep.sum(axis=(-2, -1)) / self.n_causal
        dense = _softmax(scores) @ v
        sparse = _softmax(np.where(keep, scores, -np.inf)) @ v
        error = (np.linalg.norm((sparse - dense).reshape(cfg.layers, cfg.heads, -1), axis=-1)
                 / np.linalg.norm(dense.reshape(cfg.layers, cfg.heads, -1), axis=-1))
        return density, error

    def to_numpy(self, values: Any) -> np.ndarray:
        return np.asarray(values)

    def stack(self, values: Sequence[Any]) -> Any:
        return np.stack(values)


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=-1, keepdims=True)
    return out


class _TorchLoop:
    """One step of the demo with torch: density and error as [layers, heads] tensors."""

    def __init__(self, cfg: DemoConfig) -> None:
        import torch

        self.torch = torch
        self.cfg = cfg
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed)
        causal, fixed, bias = _structure(cfg)
        self.causal = torch.from_numpy(causal).to(device)
        self.fixed = torch.from_numpy(fixed).to(device)
        self.bias = torch.from_numpy(bias).to(device)
        self.n_causal = float(causal.sum())
        _, scale = _head_profile(cfg)
        self.scale = torch.from_numpy(
            (scale / math.sqrt(cfg.head_dim)).astype(np.float32)
        ).to(device)[:, None, None, None]

    def step(self) -> tuple[Any, Any]:
        torch = self.torch
        cfg = self.cfg
        shape = (cfg.layers, cfg.heads, cfg.seq, cfg.head_dim)
        with torch.no_grad():
            q, k, v = (torch.randn(shape, generator=self.gen, device=self.device)
                       for _ in range(3))
            scores = q @ k.transpose(-1, -2) * self.scale + self.bias
            scores = scores.masked_fill(~self.causal, float("-inf"))
            top = scores.topk(cfg.top_k, dim=-1).indices
            keep = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True)
            keep = (keep | self.fixed) & self.causal
            density = keep.sum(dim=(-2, -1)).float() / self.n_causal
            dense = scores.softmax(dim=-1) @ v
            sparse = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1) @ v
            error = ((sparse - dense).flatten(2).norm(dim=-1)
                     / dense.flatten(2).norm(dim=-1))
        return density, error

    def to_numpy(self, values: Any) -> np.ndarray:
        return np.asarray(values.cpu().numpy())

    def stack(self, values: Sequence[Any]) -> Any:
        return self.torch.stack(list(values))


def register_metrics() -> None:
    """Register the demo's two metrics (once: a second registration would print a warning)."""
    from otel_sparse.facade import MicroMetricLogger

    registered = MicroMetricLogger.get_registered_metrics()
    for metric in METRICS:
        if registered.get(metric) is not float:
            MicroMetricLogger.register_metric(metric, float)


def run_demo(
    config: DemoConfig | None = None,
    run_dir: str | None = None,
    exporters: Sequence[str] | None = None,
    on_step: Callable[[int], None] | None = None,
    heatmap: bool = True,
) -> DemoResult:
    """Run the loop, logging through ``otel_sparse.start_run``; ``end_run`` closes the run.

    Args:
        config: sizes, seed and backend.
        run_dir: the run folder; default ``<OTEL_SPARSE_RUN_DIR or ./otel_sparse_runs>/<run id>``.
        exporters: metric exporters (default: ``OTEL_SPARSE_EXPORTERS``, else ``jsonl``).
        on_step: called after each step with the number of steps done.
        heatmap: also save a layer x head heatmap of mean density (needs matplotlib).

    Raises:
        ValueError: bad sizes, or a backend that is not installed.
    """
    from otel_sparse.run import end_run, start_run

    cfg = config or DemoConfig()
    cfg.check()
    backend = resolve_backend(cfg.backend)
    loop: _NumpyLoop | _TorchLoop = _TorchLoop(cfg) if backend == "torch" else _NumpyLoop(cfg)
    register_metrics()
    params: dict[str, Any] = {**asdict(cfg), "backend": backend, "device": loop.device,
                              "masker": "sink+local+top-k", "demo": True}
    logger = start_run(run_dir, params=params, exporters=exporters)
    path = logger.log_path
    assert path is not None
    history: dict[str, list[Any]] = {DENSITY: [], OUTPUT_ERROR: []}
    start = time.perf_counter()
    try:
        for step in range(cfg.steps):
            density, error = loop.step()
            with logger.step(step):  # every event carries its step: `otel-sparse plot` x axis
                for layer in range(cfg.layers):
                    # a [heads] tensor per layer, as attention code logs it: no .item() here
                    logger.log(DENSITY, density[layer], metadata={"layer_idx": layer})
                    logger.log(OUTPUT_ERROR, error[layer], metadata={"layer_idx": layer})
            history[DENSITY].append(density)
            history[OUTPUT_ERROR].append(error)
            if on_step is not None:
                on_step(step + 1)
    finally:
        end_run(logger)
    seconds = time.perf_counter() - start
    values = {m: loop.to_numpy(loop.stack(v)) for m, v in history.items()}
    result = DemoResult(
        run_dir=path,
        run_id=_run_id(path),
        backend=backend,
        device=loop.device,
        seconds=seconds,
        config=cfg,
        values=values,
    )
    if heatmap:
        result.heatmap = save_density_heatmap(result)
    result.files = run_files(path)
    return result


def _run_id(path: str) -> str:
    from otel_sparse.analysis import read_manifest

    return str(read_manifest(path).get("run_id") or os.path.basename(os.path.abspath(path)))


def save_density_heatmap(result: DemoResult) -> str | None:
    """Save the mean density per layer and head in the run folder; None without matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        return None
    from otel_sparse.analysis import plot_heatmap

    matrix = result.values[DENSITY].mean(axis=0)
    path = os.path.join(result.run_dir, HEATMAP_NAME)
    plot_heatmap(
        matrix,
        list(range(result.config.layers)),
        list(range(result.config.heads)),
        path,
        title=f"{DENSITY} (mean) - run {result.run_id}",
        colorbar_label=f"mean {DENSITY}",
    )
    return path


def run_files(path: str) -> dict[str, str]:
    """Name -> path of the files present in a run folder (ranks and OTLP file included)."""
    out: dict[str, str] = {}
    for root, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(root, name)
            out[os.path.relpath(full, path)] = full
    return dict(sorted(out.items()))


def summary_rows(result: DemoResult) -> list[dict[str, Any]]:
    """Per metric: events, values and exact statistics of what the demo logged."""
    rows: list[dict[str, Any]] = []
    for metric, values in result.values.items():
        flat = values.astype(np.float64).ravel()
        rows.append({
            "metric": metric,
            "events": values.shape[0] * values.shape[1],
            "values": flat.size,
            "mean": float(flat.mean()),
            "min": float(flat.min()),
            "p50": float(np.percentile(flat, 50)),
            "p95": float(np.percentile(flat, 95)),
            "max": float(flat.max()),
        })
    return rows


def histogram_counts(run_dir: str) -> dict[str, int]:
    """Metric -> values counted by the OTel histograms of ``metrics*.jsonl`` (every rank)."""
    from otel_sparse.analysis import BadLines, iter_json_lines
    from otel_sparse.layout import POINT_FILE_RE

    last: dict[tuple[Any, ...], int] = {}
    bad = BadLines()
    for name in sorted(os.listdir(run_dir)):
        if not POINT_FILE_RE.match(name):
            continue
        for row in iter_json_lines(os.path.join(run_dir, name), bad):
            if row.get("type") != "histogram" or row.get("count") is None:
                continue
            key = (row.get("metric"), row.get("layer"), row.get("head"),
                   str(row.get("attributes")), row.get("service_instance_id"))
            if row.get("temporality") == "delta":
                last[key] = last.get(key, 0) + int(row["count"])
            else:
                last[key] = int(row["count"])
    bad.report()
    out: dict[str, int] = {}
    for (metric, *_), count in last.items():
        out[str(metric)] = out.get(str(metric), 0) + count
    return out
