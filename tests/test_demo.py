"""Tests of the demo loop (otel_sparse.demo) and ``otel-sparse demo``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from otel_sparse import MicroMetricLogger
from otel_sparse.cli import app
from otel_sparse.demo import (
    DENSITY,
    HEATMAP_NAME,
    OUTPUT_ERROR,
    DemoConfig,
    histogram_counts,
    run_demo,
    summary_rows,
)
from tests._helpers import cli_runner

STEPS, LAYERS, HEADS = 6, 3, 4
SMALL = ["--steps", str(STEPS), "--layers", str(LAYERS), "--heads", str(HEADS), "--seq", "32",
         "--head-dim", "8", "--top-k", "4", "--sink", "2", "--window", "4"]


@pytest.fixture
def clean(fresh_logger: type[MicroMetricLogger], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh singleton (conftest's reset, closed afterwards), jsonl files, no COLUMNS."""
    monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl")
    monkeypatch.delenv("COLUMNS", raising=False)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSONL file (each must parse)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_run_files(run_dir: Path) -> None:
    """The event file and metrics.jsonl hold what a STEPS x LAYERS x HEADS demo logs."""
    events = read_jsonl(run_dir / "micro_metrics.jsonl")
    per_metric = Counter(e["metric"] for e in events)
    assert per_metric == {DENSITY: STEPS * LAYERS, OUTPUT_ERROR: STEPS * LAYERS}
    layers = Counter((e["metric"], e["metadata"]["layer_idx"]) for e in events)
    assert set(layers.values()) == {STEPS}
    for event in events:
        assert set(event["metadata"]) == {"layer_idx"}
        assert isinstance(event["value"], list) and len(event["value"]) == HEADS
        assert event["location"] == "otel_sparse.demo.run_demo"
        if event["metric"] == DENSITY:
            assert all(0.0 < v <= 1.0 for v in event["value"])
        else:
            assert all(v >= 0.0 for v in event["value"])
    latest: dict[tuple[str, int, int], dict[str, Any]] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        if row["type"] == "histogram":
            latest[(row["metric"], row["layer"], row["head"])] = row
    for metric in (DENSITY, OUTPUT_ERROR):
        cells = {(layer, head): row for (m, layer, head), row in latest.items()
                 if m == f"sparse_attention.{metric}"}
        assert set(cells) == {(layer, head) for layer in range(LAYERS) for head in range(HEADS)}
        assert {row["count"] for row in cells.values()} == {STEPS}
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["params"]["steps"] == STEPS
    assert "end" in manifest


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_run_demo_writes_steps_x_layers_events(backend: str, tmp_path: Path, clean: None) -> None:
    """Each step logs a [heads] value per layer and metric; histograms count every step."""
    if backend == "torch":
        pytest.importorskip("torch")
    cfg = DemoConfig(steps=STEPS, layers=LAYERS, heads=HEADS, seq=32, head_dim=8, top_k=4,
                     sink=2, window=4, backend=backend, device="cpu")
    result = run_demo(cfg, run_dir=str(tmp_path / "run"))
    assert result.backend == backend
    check_run_files(tmp_path / "run")
    assert result.values[DENSITY].shape == (STEPS, LAYERS, HEADS)
    rows = {row["metric"]: row for row in summary_rows(result)}
    assert rows[DENSITY]["events"] == STEPS * LAYERS
    assert rows[DENSITY]["values"] == STEPS * LAYERS * HEADS
    assert 0.0 < rows[DENSITY]["min"] <= rows[DENSITY]["mean"] <= rows[DENSITY]["max"] <= 1.0
    counts = histogram_counts(str(tmp_path / "run"))
    assert counts[f"sparse_attention.{DENSITY}"] == STEPS * LAYERS * HEADS
    assert result.heatmap is not None and Path(result.heatmap).name == HEATMAP_NAME


def test_density_differs_by_head(tmp_path: Path, clean: None) -> None:
    """Heads differ in locality, so their mean densities differ (the heatmap is not flat)."""
    cfg = DemoConfig(steps=4, layers=2, heads=6, seq=64, top_k=8, backend="numpy")
    result = run_demo(cfg, run_dir=str(tmp_path / "run"), heatmap=False)
    means = result.values[DENSITY].mean(axis=0)
    assert means.max() - means.min() > 0.01
    assert result.heatmap is None


def test_same_seed_same_values(tmp_path: Path, clean: None) -> None:
    """The seed fixes every value."""
    cfg = DemoConfig(steps=2, layers=2, heads=2, seq=16, top_k=4, backend="numpy", seed=3)
    first = run_demo(cfg, run_dir=str(tmp_path / "a"), heatmap=False)
    second = run_demo(cfg, run_dir=str(tmp_path / "b"), heatmap=False)
    assert (first.values[OUTPUT_ERROR] == second.values[OUTPUT_ERROR]).all()


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_cli_demo_prints_files_and_summary(
    backend: str, tmp_path: Path, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``otel-sparse demo`` writes under ./otel_sparse_runs and summarises both metrics."""
    if backend == "torch":
        pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OTEL_SPARSE_RUN_ID", f"demo-{backend}")
    result = cli_runner().invoke(app, ["demo", *SMALL, "--backend", backend, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "otel_sparse_runs" / f"demo-{backend}"
    check_run_files(run_dir)
    assert (run_dir / HEATMAP_NAME).is_file()
    out = result.stdout
    assert DENSITY in out and OUTPUT_ERROR in out
    assert f"otel_sparse_runs/demo-{backend}" in out
    assert "micro_metrics.jsonl" in out and "metrics.jsonl" in out
    lines = out.splitlines()
    # one table per metric: its name, the header, a rule, one row (events ... OTel count)
    counts = {lines[i - 2].strip(): lines[i + 1].split()[-1] for i, line in enumerate(lines)
              if line.startswith("─") and lines[i - 1].split()[0] == "events"}
    assert counts == {DENSITY: str(STEPS * LAYERS * HEADS), OUTPUT_ERROR: str(STEPS * LAYERS * HEADS)}


def test_cli_demo_run_dir_and_otlp_file(tmp_path: Path, clean: None) -> None:
    """--run-dir is the run folder; --exporters adds the OTLP/JSON file."""
    run_dir = tmp_path / "my-run"
    result = cli_runner().invoke(app, ["demo", *SMALL, "--backend", "numpy", "--run-dir",
                                      str(run_dir), "--exporters", "jsonl,otlp_file",
                                      "--no-heatmap"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "otlp" / "metrics.jsonl").stat().st_size > 0
    assert not (run_dir / HEATMAP_NAME).exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "64", "--seq", "32"], "top_k (64) cannot exceed seq (32)"),
        (["--steps", "0"], "steps must be at least 1"),
        (["--exporters", "jsonl,bogus"], "unknown exporter"),
    ],
)
def test_cli_demo_bad_options(args: list[str], message: str, clean: None) -> None:
    """Bad sizes or exporters exit 2 with one line, before anything is written."""
    result = cli_runner().invoke(app, ["demo", "--backend", "numpy", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_auto_backend_without_torch(
    tmp_path: Path, clean: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without torch, auto picks numpy and --backend torch is a clear error."""
    from otel_sparse import demo

    monkeypatch.setattr(demo, "torch_available", lambda: False)
    result = cli_runner().invoke(app, ["demo", *SMALL, "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "backend numpy" in result.stdout
    assert json.loads((tmp_path / "run" / "run.json").read_text())["params"]["backend"] == "numpy"
    result = cli_runner().invoke(app, ["demo", "--backend", "torch"])
    assert result.exit_code == 2
    assert "torch is not installed" in result.stderr


def test_next_hints_run_as_printed(tmp_path: Path, clean: None) -> None:
    """Each "Next:" command works pasted into a shell whose PATH lacks the venv."""
    import shutil
    import subprocess
    import sys

    script = Path(sys.executable).parent / "otel-sparse"
    if not script.is_file():
        pytest.skip("otel-sparse is not installed beside this interpreter")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PATH"] = "/usr/bin:/bin"
    env.pop("COLUMNS", None)
    assert shutil.which("otel-sparse", path=env["PATH"]) is None
    run_dir = tmp_path / "hinted"
    done = subprocess.run([str(script), "demo", *SMALL, "--backend", "numpy", "--run-dir",
                           str(run_dir), "--no-heatmap"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    hints = [line.strip() for line in lines[lines.index("Next:") + 1:] if line.strip()]
    assert len(hints) == 3 and all(h.startswith(str(script)) for h in hints)
    for hint in hints:
        ran = subprocess.run(hint, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300, check=False)
        assert ran.returncode == 0, (hint, ran.stderr)
    assert (tmp_path / "error.png").stat().st_size > 0
    assert (tmp_path / "density.png").stat().st_size > 0


def test_cli_command_is_bare_when_path_finds_this_script(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bare name only when PATH resolves to this very script."""
    import sys

    from otel_sparse.cli.demo import cli_command

    bindir = Path(sys.executable).parent
    if not (bindir / "otel-sparse").is_file():
        pytest.skip("otel-sparse is not installed beside this interpreter")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    assert cli_command() == "otel-sparse"
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert cli_command() == str(bindir / "otel-sparse")


def test_device_cuda_without_cuda_is_a_usage_error(clean: None) -> None:
    """--device cuda where CUDA cannot run exits 2 with a one-line reason, before any run."""
    result = cli_runner().invoke(app, ["demo", "--backend", "numpy", "--device", "cuda"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "numpy backend runs on the CPU only" in line
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        result = cli_runner().invoke(app, ["demo", "--backend", "torch", "--device", "cuda:99"])
        assert result.exit_code == 2 and "CUDA device(s)" in result.stderr
        return
    result = cli_runner().invoke(app, ["demo", "--backend", "torch", "--device", "cuda"])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --device cuda: CUDA is not available here")
    assert "Traceback" not in result.output


def test_cli_demo_tables_readable_at_80_columns(tmp_path: Path, clean: None) -> None:
    """In an 80-column terminal the demo's tables show whole metric names and numbers."""
    result = cli_runner().invoke(app, ["demo", *SMALL, "--backend", "numpy", "--run-dir",
                                      str(tmp_path / "run"), "--no-heatmap"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    tables = lines[:lines.index("Next:")]
    assert all(len(line) <= 80 and "…" not in line for line in tables), "\n".join(tables)
    assert any(line.strip() == OUTPUT_ERROR for line in tables)


def test_demo_events_carry_their_step(tmp_path: Path, clean: None) -> None:
    """Each demo event has its step in the context, so plot and tail can show it."""
    from otel_sparse.analysis import read_run

    result = run_demo(DemoConfig(steps=STEPS, layers=LAYERS, heads=HEADS, seq=32, head_dim=8,
                                 top_k=4, sink=2, window=4, backend="numpy"),
                      run_dir=str(tmp_path / "run"), heatmap=False)
    events = read_run(result.run_dir).events
    per_step = events.groupby("step").size().to_dict()
    assert per_step == {s: 2 * LAYERS * HEADS for s in range(STEPS)}
