"""``otel-sparse plot``: one metric over steps, one line per layer (or head, run, parameter)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from otel_sparse.cli._common import (
    WhereOption,
    analysis_errors,
    app,
    console,
    fail,
    load_runs,
    parse_where_option,
)


@app.command()
def plot(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folders, or a folder of runs.", show_default=False)],
    metric: Annotated[str, typer.Option("--metric", "-m", help="The metric to draw.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Image file (.png, .svg, .pdf).", show_default=False)],
    by: Annotated[str, typer.Option(
        "--by", help="One line per: layer, head, run, or a context/metadata key or run.json "
                     "parameter (k).")] = "layer",
    where: WhereOption = None,
    csv: Annotated[Optional[Path], typer.Option(
        help="Also write the drawn means as CSV (x, line, mean, count).")] = None,
    dpi: Annotated[int, typer.Option(help="Pixels per inch.")] = 100,
) -> None:
    """Draw a metric's mean over steps (x: step, else event time), one line per layer."""
    from otel_sparse.analysis import metric_over_steps, plot_over_steps

    if dpi < 1:
        fail(f"--dpi must be at least 1, got {dpi}")
    selection = parse_where_option(where)
    data = load_runs(runs)
    with analysis_errors():
        table = metric_over_steps(data, metric, by=by, where=selection)
    output.parent.mkdir(parents=True, exist_ok=True)
    with analysis_errors():
        try:
            plot_over_steps(table, by=by, path=output, dpi=dpi)
        except (OSError, ValueError) as exc:
            fail(f"cannot write {output}: {exc}")
    if csv is not None:
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(csv, index=False)
        except OSError as exc:
            fail(f"cannot write {csv}: {exc}")
    lines = table["line"].nunique()
    console().print(f"wrote {escape(str(output))} ({lines} line(s) of "
                    f"{escape(str(table.attrs['metric']))} over {table.attrs['x']})"
                    + (f" and {escape(str(csv))}" if csv else ""))
