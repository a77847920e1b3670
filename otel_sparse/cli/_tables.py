"""Tables that stay readable in an 80-column terminal.

Rules: one table per metric (its name in the title, never a clipped column); numbers with 6
significant digits when they fit, else 4; run labels longer than a column become letters with
a legend; runs that do not fit beside each other continue in further tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich import box
from rich.markup import escape
from rich.table import Table

from otel_sparse.cli._common import cell, num, short

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console

MAX_LABEL = 12
"""Run labels longer than this are shown as letters (A, B, ...) with a legend."""


def fits(console: Console, table: Table) -> bool:
    """Whether ``table`` renders within the console's width without folding a cell."""
    unbounded = console.options.update_width(100_000)
    return console.measure(table, options=unbounded).maximum <= console.width


def fitted(console: Console, build: Callable[[Callable[[Any], str]], Table]) -> Table:
    """``build(format)`` with 6 significant digits if that fits, else with 4."""
    table = build(num)
    return table if fits(console, table) else build(short)


def _new_table(title: str) -> Table:
    # min_width: a title (up to 60 characters) wider than the columns stays on one line
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                 collapse_padding=True, pad_edge=False, padding=(0, 1),
                 min_width=min(len(title), 60))


def stats_tables(
    console: Console, stats: pd.DataFrame, keys: Sequence[str], stat_names: Sequence[str],
    title_prefix: str = "",
) -> list[Table]:
    """One table per metric (and run, when ``stats`` has a ``run`` column) of ``summarize``.

    ``keys`` are the row keys other than ``metric`` and ``run`` (``stage``, ``layer``...).
    """
    tables: list[Table] = []
    groups = ["run", "metric"] if "run" in stats.columns else ["metric"]
    for group, rows in stats.groupby(groups, sort=False):
        names = group if isinstance(group, tuple) else (group,)
        title = title_prefix + ": ".join(str(n) for n in names)

        def build(fmt: Callable[[Any], str], rows: pd.DataFrame = rows,
                  title: str = title) -> Table:
            table = _new_table(escape(title))
            for key in keys:
                table.add_column(key, justify="right")
            for stat in stat_names:
                table.add_column(stat, justify="right")
            for record in rows.to_dict("records"):
                cells = [escape(cell(record[k])) for k in keys]
                cells += [fmt(record[s]) if isinstance(record[s], float) else str(record[s])
                          for s in stat_names]
                table.add_row(*cells)
            return table

        tables.append(fitted(console, build))
    return tables


def short_labels(labels: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Label -> what a column header shows, and the legend lines (empty when labels fit)."""
    if all(len(label) <= MAX_LABEL for label in labels):
        return {label: label for label in labels}, []
    letters = [_letter(i) for i in range(len(labels))]
    return (dict(zip(labels, letters)),
            [f"{letter} = {label}" for letter, label in zip(letters, labels)])


def _letter(i: int) -> str:
    out = ""
    i += 1
    while i:
        i, rest = divmod(i - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


def compare_tables(
    console: Console, table: pd.DataFrame, keys: Sequence[str], labels: Sequence[str],
) -> tuple[list[Table], list[str]]:
    """``compare``'s rows as tables: per metric, rows ``keys``, per run label mean/p50/p95 and
    the mean's difference to the first label; labels that do not fit continue in more tables.

    Returns the tables and the legend lines for abbreviated labels.
    """
    shown, legend = short_labels(labels)
    narrow: list[Table] = []
    wide_tables: list[Table] = []
    for metric, rows in table.groupby("metric", sort=False):
        wide = rows.set_index([*keys, "label"])
        index = list(dict.fromkeys(tuple(r) for r in rows[list(keys)].itertuples(index=False)))
        remaining = list(labels)
        part = 0
        while remaining:
            part += 1
            chunk: list[str] = []
            best: Table | None = None
            for label in remaining:
                candidate = _compare_table(str(metric), part, wide, keys, index,
                                           [*chunk, label], labels[0], shown, short)
                if chunk and not fits(console, candidate):
                    break
                chunk.append(label)
                best = candidate
            assert best is not None
            narrow.append(best)
            wide_tables.append(_compare_table(str(metric), part, wide, keys, index, chunk,
                                              labels[0], shown, num))
            remaining = remaining[len(chunk):]
    # one number format for every table: 6 digits only where all of them fit
    if all(fits(console, t) for t in wide_tables):
        return wide_tables, legend
    return narrow, legend


def _compare_table(
    metric: str, part: int, wide: pd.DataFrame, keys: Sequence[str], index: list[tuple[Any, ...]],
    labels: Sequence[str], first: str, shown: dict[str, str], fmt: Callable[[Any], str],
) -> Table:
    title = metric if part == 1 else f"{metric} (continued)"
    table = _new_table(escape(title))
    for key in keys:
        table.add_column(key, justify="right")
    for label in labels:
        name = escape(shown[label])
        table.add_column(f"{name}\nmean", justify="right")
        table.add_column(f"{name}\np50", justify="right")
        table.add_column(f"{name}\np95", justify="right")
        if label != first:
            table.add_column(f"{name}\nΔmean", justify="right")
    for row_key in index:
        cells = [escape(cell(k)) for k in row_key]
        for label in labels:
            try:
                where = (*row_key, label)
                row = wide.loc[where]
            except KeyError:
                row = None
            names = ["mean", "p50", "p95"] + (["diff_mean"] if label != first else [])
            for stat in names:
                value = None if row is None else row[stat]
                text = fmt(value)
                if stat == "diff_mean" and text not in ("-",) and not text.startswith("-"):
                    text = "+" + text
                cells.append(text)
        table.add_row(*cells)
    return table
