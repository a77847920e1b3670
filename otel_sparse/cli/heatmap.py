"""``otel-sparse heatmap``: a layer x head image of one metric."""

from __future__ import annotations

import enum
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


def describe_where(selection: dict[str, list[str]]) -> str:
    """``stage=decode, k in (8, 16)``: a selection as a figure or table states it."""
    return ", ".join(f"{k} in ({', '.join(v)})" if len(v) > 1 else f"{k}={v[0]}"
                     for k, v in selection.items())


@app.command()
def heatmap(
    runs: Annotated[Optional[list[Path]], typer.Argument(
        help="Run folders, or a folder of runs: one panel per run, on one colour scale.",
        show_default=False)] = None,
    metric: Annotated[str, typer.Option("--metric", "-m", help="The metric to show.",
                                        show_default=False)] = "",
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Image file (.png, .svg, .pdf).", show_default=False)] = None,
    stat: Annotated[Stat, typer.Option(help="The statistic per cell.")] = Stat.mean,
    diff: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--diff", help="Draw run A minus run B (two run folders) on a scale symmetric around 0.",
        metavar="A B", show_default=False)] = None,
    where: WhereOption = None,
    by: Annotated[Optional[str], typer.Option(
        "--by", help="One panel per value of this key too (stage, a parameter...).",
        show_default=False)] = None,
    csv: Annotated[Optional[Path], typer.Option(
        help="Also write the layer x head values as CSV (rows: layers, columns: heads; with "
             "several runs a run column first).")]
    = None,
    size: Annotated[Optional[str], typer.Option(help="Figure size in inches, WIDTHxHEIGHT.")]
    = None,
    dpi: Annotated[int, typer.Option(help="Pixels per inch.")] = 100,
) -> None:
    """Save a layer x head heatmap of one metric: a panel per run on one shared colour scale."""
    from otel_sparse.analysis import layer_head_panels, plot_heatmaps, resolve_metric

    if not metric:
        fail("--metric is required (the metric to show)")
    if output is None:
        fail("--output is required (the image file to write)")
    if diff is not None and runs:
        fail("give either run folders or --diff A B, not both")
    paths = list(diff) if diff is not None else list(runs or [])
    if not paths:
        fail("name a run folder (or --diff A B)")
    figure_size = _parse_size(size)
    if dpi < 1:
        fail(f"--dpi must be at least 1, got {dpi}")
    selection = parse_where_option(where)
    data = load_runs(paths)
    if diff is not None and len(data.runs) != 2:
        fail(f"--diff needs two runs, {len(data.runs)} found in {', '.join(map(str, diff))}")
    with analysis_errors():
        name = resolve_metric(metric, data.metrics)
        panels = layer_head_panels(data, name, stat.value, where=selection, by=by)
    labels = list(panels)
    if diff is not None and by is not None:
        fail("--diff draws one difference: leave out --by")
    if diff is not None:
        if len(panels) != 2:
            fail(f"--diff: only one of the two runs has a layer/head breakdown of {name}")
        a, b = labels
        drawn = {"": panels[a] - panels[b]}
        title = f"{name} ({stat.value}): {a} minus {b}"
        bar = f"difference of {stat.value}"
    else:
        drawn = panels
        title = (f"{name} ({stat.value}) - run {data.run_ids[0]}" if len(data.run_ids) == 1
                 else f"{name} ({stat.value}), {len(data.run_ids)} runs")
        bar = f"{stat.value} {name}"
        if len(panels) == 1:
            drawn = {"": next(iter(panels.values()))}
    if selection:
        title += f", where {describe_where(selection)}"
    output.parent.mkdir(parents=True, exist_ok=True)
    with analysis_errors():
        try:
            plot_heatmaps(drawn, title=title, colorbar_label=bar, path=output,
                          diverging=diff is not None, size=figure_size, dpi=dpi)
        except (OSError, ValueError) as exc:
            fail(f"cannot write {output}: {exc}")
    if csv is not None:
        import pandas as pd

        frames = list(drawn.values())
        if len(frames) == 1:
            frame = frames[0]
            frame.columns = list(frame.columns)
        else:
            frame = pd.concat({label: f for label, f in drawn.items()}, names=["run", "layer"])
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv)
        except OSError as exc:
            fail(f"cannot write {csv}: {exc}")
    first = next(iter(drawn.values()))
    what = "panel" if len(drawn) == 1 else "panels"
    console().print(f"wrote {escape(str(output))} ({len(drawn)} {what}, {len(first.index)} "
                    f"layers x {len(first.columns)} heads, {stat.value} of {escape(name)})"
                    + (f" and {escape(str(csv))}" if csv else ""))
