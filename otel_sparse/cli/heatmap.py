"""``otel-sparse heatmap``: a layer x head image of one metric."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from otel_sparse.cli._common import (
    analysis_errors,
    app,
    console,
    fail,
    load_runs,
)

if TYPE_CHECKING:

    pass


class Stat(str, enum.Enum):
    """The statistic a heatmap cell shows."""

    mean = "mean"
    p50 = "p50"
    p95 = "p95"
    min = "min"
    max = "max"
    n = "count"


def _parse_size(size: str | None) -> tuple[float, float] | None:
    if size is None:
        return None
    try:
        width, height = (float(x) for x in size.lower().split("x"))
    except ValueError:
        fail(f"--size must look like 8x5 (inches), got {size!r}")
    if not (width > 0 and height > 0):
        fail(f"--size must be positive, got {size!r}")
    return width, height


@app.command()
def heatmap(
    run: Annotated[Path, typer.Argument(help="A run folder (or a folder of runs, merged).",
                                        show_default=False)],
    metric: Annotated[str, typer.Option("--metric", "-m", help="The metric to show.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file (.png, .svg, .pdf).",
                                         show_default=False)],
    stat: Annotated[Stat, typer.Option(help="The statistic per cell.")] = Stat.mean,
    csv: Annotated[Optional[Path], typer.Option(
        help="Also write the layer x head values as CSV (rows: layers, columns: heads).")]
    = None,
    size: Annotated[Optional[str], typer.Option(help="Figure size in inches, WIDTHxHEIGHT.")]
    = None,
    dpi: Annotated[int, typer.Option(help="Pixels per inch.")] = 100,
) -> None:
    """Save a layer x head heatmap of one metric (mean or another statistic per cell)."""
    from otel_sparse.analysis import layer_head_matrix, plot_heatmap, resolve_metric

    figure_size = _parse_size(size)
    if dpi < 1:
        fail(f"--dpi must be at least 1, got {dpi}")
    data = load_runs([run])
    with analysis_errors():
        name = resolve_metric(metric, data.metrics)
        matrix, layers, heads = layer_head_matrix(data.events, name, stat.value)
    ids = data.run_ids
    label = f"run {ids[0]}" if len(ids) == 1 else f"{len(ids)} runs"
    output.parent.mkdir(parents=True, exist_ok=True)
    with analysis_errors():
        try:
            plot_heatmap(matrix, layers, heads, output, title=f"{name} ({stat.value}) - {label}",
                         colorbar_label=f"{stat.value} {name}", size=figure_size, dpi=dpi)
        except (OSError, ValueError) as exc:
            fail(f"cannot write {output}: {exc}")
    if csv is not None:
        import pandas as pd

        frame = pd.DataFrame(matrix, index=pd.Index(layers, name="layer"), columns=heads)
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv)
        except OSError as exc:
            fail(f"cannot write {csv}: {exc}")
    out = console()
    out.print(f"wrote {escape(str(output))} ({len(layers)} layers x {len(heads)} heads, "
              f"{stat.value} of {escape(name)})" + (f" and {escape(str(csv))}" if csv else ""))
