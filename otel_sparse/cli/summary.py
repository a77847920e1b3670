"""``otel-sparse summary``: statistics per metric x layer (x head) of runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from otel_sparse.analysis import (
    STATS,
)
from otel_sparse.cli._common import (
    BY_HELP,
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
from otel_sparse.cli._tables import stats_tables

if TYPE_CHECKING:

    from otel_sparse.analysis import RunData


def _manifest_header(data: RunData) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for run, (name, manifest) in zip(data.runs, data.manifests.items()):
        grid.add_row("run", escape(name))
        grid.add_row("folder", escape(run.path))
        if not manifest:
            grid.add_row("manifest", "none (run.json missing: logged without start_run?)")
        else:
            grid.add_row("start", escape(str(manifest.get("start", "-"))))
            grid.add_row("end", escape(str(manifest.get("end", "- (still running, or killed)"))))
            grid.add_row("host", escape(str(manifest.get("host", "-"))))
            ranks = manifest.get("ranks") or {}
            shown = ", ".join(
                f"{rank} (pid {info.get('pid', '?')} on {info.get('host', '?')})"
                for rank, info in sorted(ranks.items(), key=lambda kv: int(kv[0]))
                if isinstance(info, dict)
            )
            grid.add_row("ranks", escape(f"{shown or '-'}; world size "
                                         f"{manifest.get('world_size', '-')}"))
            params = manifest.get("params") or {}
            grid.add_row("params", escape(", ".join(f"{k}={v}" for k, v in params.items())
                                          or "-"))
        events = data.events[data.events["run"] == name]
        files = sorted(set(events["file"].tolist()))
        grid.add_row("events", f"{len(events)} values from {len(files)} event file(s)")
        grid.add_row("", "")
    return grid


@app.command()
def summary(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folders, or a folder of runs (a table per run).", show_default=False)],
    by_head: ByHeadOption = False,
    metric: OnlyMetricOption = None,
    where: WhereOption = None,
    by: Annotated[Optional[list[str]], typer.Option(
        "--by", help=BY_HELP + " Repeatable.", show_default=False)] = None,
    output_format: Annotated[FrameFormat, typer.Option(
        "--format", help="table (with the run header), or csv/json of the statistics only.")]
    = FrameFormat.table,
) -> None:
    """Count, mean, min, max, p50, p95 per metric x layer (x head), exact from the event files."""
    from otel_sparse.analysis import summarize

    data = load_runs(runs)
    selection = parse_where_option(where)
    by_run = len(data.runs) > 1
    with analysis_errors():
        stats = summarize(data.events, by_head=by_head, metric=metric, by_run=by_run,
                          by=by or (), where=selection)
    if write_frame(stats, output_format):
        return
    out = console()
    out.print(_manifest_header(data))
    if selection:
        out.print("where " + escape(" and ".join(
            f"{k} in ({', '.join(v)})" if len(v) > 1 else f"{k}={v[0]}"
            for k, v in selection.items())))
    if stats.empty:
        out.print("no events match the selection")
        return
    keys = [k for k in stats.columns if k not in ("run", "metric", *STATS)]
    if by_run:  # each run's tables titled by its run.json parameters (k=8), not its id
        from otel_sparse.analysis import run_labels

        order = {run: i for i, run in enumerate(data.run_ids)}  # as named on the command line
        stats = stats.sort_values("run", key=lambda runs: runs.map(order), kind="stable")
        stats = stats.assign(run=stats["run"].map(run_labels(data)))
    for table in stats_tables(out, stats, keys, STATS):
        out.print(table)
