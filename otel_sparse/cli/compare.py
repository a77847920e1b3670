"""``otel-sparse compare``: runs of a sweep side by side, labelled by their run.json parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from otel_sparse.cli._common import (
    ByHeadOption,
    FrameFormat,
    OnlyMetricOption,
    WhereOption,
    analysis_errors,
    app,
    console,
    load_runs,
    parse_where_option,
    write_frame,
)
from otel_sparse.cli._tables import compare_tables


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folders, or a folder of runs; the first is the baseline of the differences.",
        show_default=False)],
    by: Annotated[Optional[str], typer.Option(
        "--by", help="Label runs by this run.json parameter (k, masker...); runs sharing a "
                     "value are pooled.", show_default=False)] = None,
    by_head: ByHeadOption = False,
    metric: OnlyMetricOption = None,
    where: WhereOption = None,
    output_format: Annotated[FrameFormat, typer.Option(
        "--format", help="table, or csv/json (one row per metric, layer[, head] and run label).")]
    = FrameFormat.table,
) -> None:
    """Mean, p50 and p95 per metric x layer (x head) of each run, and differences to the first."""
    from otel_sparse.analysis import compare as compare_runs
    from otel_sparse.analysis import run_labels

    data = load_runs(runs)
    selection = parse_where_option(where)
    with analysis_errors():
        table = compare_runs(data, by=by, by_head=by_head, metric=metric, where=selection)
        labels = list(dict.fromkeys(run_labels(data, by).values()))
    if write_frame(table, output_format):
        return
    out = console()
    if table.empty:
        out.print("no events match the selection")
        return
    present = [label for label in labels if label in set(table["label"])]
    keys = ["layer"] + (["head"] if by_head else [])
    tables, legend = compare_tables(out, table, keys, present)
    names = {label: [n for n, lb in run_labels(data, by).items() if lb == label]
             for label in present}
    out.print(f"{len(data.runs)} run(s); differences (Δ) to {escape(present[0])}")
    for line in legend:
        out.print(escape(line), soft_wrap=True)
    if not legend:
        for label in present:
            if names[label] != [label]:
                out.print(f"{escape(label)}: {escape(', '.join(names[label]))}", soft_wrap=True)
    for rich_table in tables:
        out.print(rich_table)
