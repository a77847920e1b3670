"""``otel-sparse tail``: follow a live run's events."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from otel_sparse.analysis import (
    AnalysisError,
    DataFile,
    EventFollower,
    RunNotFoundError,
    find_runs,
    latest_run,
)
from otel_sparse.analysis.follow import RunningMeans, record_matches
from otel_sparse.cli._common import (
    WhereOption,
    analysis_errors,
    app,
    console,
    fail,
    flag,
    num,
    parse_where_option,
)


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return num(value)
    if isinstance(value, list):
        if any(isinstance(v, list) for v in value):
            flat = [x for row in value if isinstance(row, list) for x in row
                    if isinstance(x, (int, float))]
            mean = sum(flat) / len(flat) if flat else math.nan
            width = max((len(r) for r in value if isinstance(r, list)), default=0)
            return f"[{len(value)}x{width}] mean={num(mean)}"
        shown = " ".join(_format_value(v) for v in value[:16])
        more = f" ...(+{len(value) - 16})" if len(value) > 16 else ""
        return f"[{shown}{more}]"
    return repr(value)


def _format_event(data_file: DataFile, record: dict[str, Any]) -> str:
    metadata = record.get("metadata")
    meta = metadata if isinstance(metadata, dict) else {}
    parts = [str(record.get("timestamp", "?"))]
    if data_file.rank is not None:
        parts.append(f"rank{data_file.rank}/pid{data_file.pid}")
    parts.append(str(record.get("metric", "?")))
    context = record.get("context")
    if isinstance(context, dict):  # step and stage first: what a reader looks for
        order = sorted(context, key=lambda k: (k not in ("step", "stage"), k != "step", k))
        parts.extend(f"{k}={context[k]}" for k in order)
    parts.extend(f"{k}={v}" for k, v in meta.items())
    parts.append(_format_value(record.get("value")))
    return "  ".join(parts)


@app.command()
def tail(
    run: Annotated[Optional[Path], typer.Argument(
        help="A run folder; a folder of runs follows its newest run. Default: the newest run "
             "under $OTEL_SPARSE_RUN_DIR or ./otel_sparse_runs.", show_default=False)] = None,
    once: Annotated[bool, flag("--once", "Print what is there and exit.")] = False,
    lines: Annotated[Optional[int], typer.Option(
        "--lines", "-n", help="Events already written to show first (default: 20; all with "
                              "--once).", show_default=False)] = None,
    metric: Annotated[Optional[str], typer.Option(
        "--metric", "-m", help="Only this metric (follow one metric).")] = None,
    where: WhereOption = None,
    by: Annotated[Optional[list[str]], typer.Option(
        "--by", help="Group by a context key, metadata key or record field (repeatable): "
                     "each line starts with its group and ends with that group's running "
                     "mean of the metric so far.", show_default=False)] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
    duration: Annotated[Optional[float], typer.Option(
        help="Stop following after this many seconds (default: until Ctrl-C).")] = None,
) -> None:
    """Follow a live run's event files (every rank), printing events as they are written."""
    from otel_sparse.run import default_runs_dir

    target = run if run is not None else Path(default_runs_dir())
    try:
        if not target.exists():
            raise RunNotFoundError(f"no such file or directory: {target}")
        runs = find_runs(target)
        chosen = latest_run(target) if len(runs) > 1 else runs[0]
    except AnalysisError as exc:
        fail(str(exc))
    if run is None or len(runs) > 1:
        console(stderr=True).print(f"following {escape(chosen.path)}", soft_wrap=True)
    selection = parse_where_option(where)
    wanted = metric

    def accept(record: dict[str, Any]) -> bool:
        name = record.get("metric")
        if wanted is not None and name != wanted and not wanted.endswith(f".{name}"):
            return False
        return record_matches(record, selection)

    means = RunningMeans(by) if by else None
    follower = EventFollower(chosen.path, last=lines if lines is not None else
                             (None if once else 20), accept=accept)

    def emit() -> int:
        shown = 0
        for data_file, record in follower.poll():
            line = _format_event(data_file, record)
            if means is not None:
                label, count, mean = means.add(record)
                line = f"[{label}]  {line}  mean({label})={num(mean)} of {count}"
            typer.echo(line)
            shown += 1
        return shown

    def check_by_keys(shown: int) -> None:
        # A live stream cannot list its keys up front: once events were shown, a key none
        # of them had is a typo more likely than a group still to come.
        if means is not None and shown:
            missing = [key for key in means.by if key not in means.keys_seen]
            if missing:
                console(stderr=True).print(
                    f"note: --by {', '.join(map(escape, missing))}: no event shown so far has "
                    "this key", soft_wrap=True)

    if once:
        from otel_sparse.analysis import resolve_metric

        seen = _known_metrics(chosen.path)
        if not seen:
            fail(f"no events in {chosen.path}: the run is empty (or has not written its "
                  "events yet)")
        if metric is not None:
            with analysis_errors():
                wanted = resolve_metric(metric, seen)
        check_by_keys(emit())
        return
    interval = max(interval, 0.05)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        check_by_keys(emit())
        while deadline is None or time.monotonic() < deadline:
            time.sleep(interval if deadline is None else
                       max(0.0, min(interval, deadline - time.monotonic())))
            emit()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _known_metrics(folder: str) -> set[str]:
    from otel_sparse.analysis import BadLines, data_files, iter_json_lines
    from otel_sparse.layout import EVENT_FILE_RE

    seen: set[str] = set()
    bad = BadLines()
    for data_file in data_files(folder, EVENT_FILE_RE):
        for record in iter_json_lines(data_file.path, bad):
            metric = record.get("metric")
            if isinstance(metric, str):
                seen.add(metric)
    return seen
