"""``otel-sparse demo``: a small sparse-attention loop that logs per-head metrics."""

from __future__ import annotations

import enum
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from otel_sparse import config
from otel_sparse.cli._common import (
    EXIT_FAILED,
    app,
    console,
    fail,
)
from otel_sparse.cli._tables import stats_tables


class Backend(str, enum.Enum):
    """Array library of the demo loop."""

    auto = "auto"
    torch = "torch"
    numpy = "numpy"


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Loop steps (each logs every layer).")] = 300,
    layers: Annotated[int, typer.Option(help="Layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Heads per layer.")] = 8,
    seq: Annotated[int, typer.Option(help="Sequence length (queries = keys).")] = 128,
    head_dim: Annotated[int, typer.Option(help="Head dimension.")] = 32,
    top_k: Annotated[int, typer.Option(help="Top-k keys kept per query.")] = 16,
    sink: Annotated[int, typer.Option(help="Sink tokens always kept.")] = 4,
    window: Annotated[int, typer.Option(help="Local window always kept.")] = 8,
    run_dir: Annotated[Optional[Path],
        typer.Option(help="The run folder. Default: $OTEL_SPARSE_RUN_DIR or "
                          "./otel_sparse_runs, then /<run id>."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    backend: Annotated[Backend, typer.Option(help="torch when installed (auto), or numpy.")]
    = Backend.auto,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda, cuda:1 ...")]
    = "auto",
    exporters: Annotated[Optional[str],
        typer.Option(help="Metric exporters, comma separated (jsonl, otlp_file, otlp, console). "
                          "Default: $OTEL_SPARSE_EXPORTERS, else jsonl."),
    ] = None,
    heatmap: Annotated[bool, typer.Option(help="Save density_heatmap.png in the run.")] = True,
) -> None:
    """Run a small sparse-attention loop that logs per-head density and output error."""
    from otel_sparse.demo import (
        DemoConfig,
        check_device,
        histogram_counts,
        resolve_backend,
        run_demo,
        summary_rows,
    )

    cfg = DemoConfig(steps=steps, layers=layers, heads=heads, seq=seq, head_dim=head_dim,
                     top_k=top_k, sink=sink, window=window, seed=seed, backend=backend.value,
                     device=device)
    exporter_list: list[str] | None = None
    try:
        cfg.check()
        resolved = resolve_backend(cfg.backend)
        check_device(resolved, cfg.device)
        if exporters is not None:
            exporter_list = list(config.parse_exporters(exporters))
    except ValueError as exc:
        fail(str(exc))
    out = console()
    out.print(
        f"otel_sparse demo: {steps} steps x {layers} layers x {heads} heads "
        f"(seq {seq}, top-k {top_k}, sink {sink}, window {window}), backend {resolved}"
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("steps", total=steps)
        try:
            result = run_demo(cfg, run_dir=None if run_dir is None else str(run_dir),
                              exporters=exporter_list, heatmap=heatmap,
                              on_step=lambda n: progress.update(task, completed=n))
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            fail(f"demo failed: {first}", EXIT_FAILED)
    events = steps * layers * 2
    out.print(
        f"Run [bold]{escape(result.run_id)}[/] ({result.backend} on {result.device}): "
        f"{events} events in {result.seconds:.1f} s; files in [bold]{escape(result.run_dir)}[/]"
    )
    files = Table(title="files", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("lines", justify="right")
    for name, path in result.files.items():
        size = os.path.getsize(path)
        lines = "-"
        if name.endswith(".jsonl"):
            with open(path, "rb") as f:
                lines = str(sum(1 for _ in f))
        files.add_row(escape(name), f"{size:,}", lines)
    out.print(files)
    import pandas as pd

    counts = histogram_counts(result.run_dir)
    namespace = config.Settings.from_env().namespace
    rows = pd.DataFrame([
        {**row, "OTel count": counts.get(f"{namespace}.{row['metric']}", "-")}
        for row in summary_rows(result)
    ])
    out.print("what was logged (per head values):")
    for table in stats_tables(out, rows, [], ("events", "values", "mean", "min", "p50", "p95",
                                              "max", "OTel count")):
        out.print(table)
    if result.heatmap is None and heatmap:
        out.print("(no heatmap: matplotlib is not installed)")
    out.print("Next:")
    for hint in next_commands(result.run_dir):
        out.print(f"  {escape(hint)}", soft_wrap=True, highlight=False)


def cli_command() -> str:
    """How a shell runs this ``otel-sparse``: the bare name when PATH finds this very script,
    else the script's path in this interpreter's environment (a venv not activated), else
    ``python -m otel_sparse.cli``; shell-quoted."""
    import shlex
    import shutil

    script = Path(sys.executable).parent / "otel-sparse"
    if script.is_file():
        found = shutil.which("otel-sparse")
        if found is not None and os.path.realpath(found) == os.path.realpath(script):
            return "otel-sparse"
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m otel_sparse.cli"


def next_commands(run_dir: str) -> list[str]:
    """The commands the demo suggests next, each runnable as printed."""
    import shlex

    from otel_sparse.demo import DENSITY, OUTPUT_ERROR

    cli = cli_command()
    run = shlex.quote(run_dir)
    return [
        f"{cli} summary {run} --by-head",
        f"{cli} heatmap {run} --metric {OUTPUT_ERROR} -o error.png",
        f"{cli} plot {run} --metric {DENSITY} -o density.png",
    ]
