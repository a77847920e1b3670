"""Plots: layer x head heatmaps (one run, several runs on one colour scale, a difference) and a
metric over steps. Each function returns its matplotlib ``Figure`` (saved too when given a
path), so tests and notebooks can read the drawn data back.

matplotlib is imported when drawing; figures are plain ``Figure`` objects (no pyplot state).

Example:
    >>> from otel_sparse.analysis import read_run, metric_over_steps, plot_over_steps
    >>> run = read_run(["runs/k8", "runs/k16"])                        # doctest: +SKIP
    >>> table = metric_over_steps(run, "research_attention_density")   # doctest: +SKIP
    >>> plot_over_steps(table, "research_attention_density", path="d.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from otel_sparse.analysis.errors import AnalysisError
from otel_sparse.analysis.select import check_by, filter_events
from otel_sparse.analysis.stats import HEATMAP_STATS, resolve_metric
from otel_sparse.layout import HEAD, LAYER

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from otel_sparse.analysis.frames import RunData

_TITLE_POINTS = 11.0
"""Font size of figure titles, in points."""


def _wrapped(title: str, width_in: float, points: float = _TITLE_POINTS) -> str:
    """``title`` folded to lines that fit a figure ``width_in`` inches wide (never clipped)."""
    chars = max(16, int(width_in * 72 / (points * 0.62)))
    return "\n".join(textwrap.wrap(title, chars, break_long_words=True, break_on_hyphens=False))


def _heatmap_size(n_layers: int, n_heads: int, panels: int = 1) -> tuple[float, float]:
    width = min(24.0, max(5.5, panels * (0.55 * n_heads + 1.5) + 1.5))
    height = min(14.0, max(3.8, 0.4 * n_layers + 2.2))
    return width, height


def _draw_cells(
    ax: Any, frame: pd.DataFrame, image: Any, annotate: bool, diverging: bool = False
) -> None:
    """Axis labels, ticks and (for small grids) the value of each cell."""
    import numpy as np

    matrix = frame.to_numpy(dtype=float)
    n_layers, n_heads = matrix.shape
    ax.set_xlabel(HEAD)
    ax.set_ylabel(LAYER)
    if n_heads <= 32:
        ax.set_xticks(range(n_heads), [str(h) for h in frame.columns])
    if n_layers <= 48:
        ax.set_yticks(range(n_layers), [str(layer) for layer in frame.index])
    if not annotate or not np.isfinite(matrix).any():
        return
    norm = image.norm
    for i in range(n_layers):
        for j in range(n_heads):
            value = matrix[i, j]
            if np.isfinite(value):
                shade = float(norm(value))
                # dark text on light cells: the top of viridis, the middle of a diverging map
                light = abs(shade - 0.5) < 0.3 if diverging else shade > 0.5
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                        color="black" if light else "white")


def plot_heatmaps(
    panels: Mapping[str, pd.DataFrame],
    title: str,
    colorbar_label: str,
    path: str | os.PathLike[str] | None = None,
    diverging: bool = False,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    annotate: bool | None = None,
) -> Figure:
    """One layer x head panel per entry, side by side, on one shared colour scale.

    The scale's range is stated in the colour bar's label (``shared scale 0.1 to 0.9``).

    Args:
        panels: label -> [layers, heads] DataFrame (index: layer ids, columns: head ids);
            NaN cells are drawn grey.
        title: the figure title (folded to the figure's width, never clipped).
        colorbar_label: what the colour means (the range is appended).
        path: save the figure there too (format from the suffix).
        diverging: a scale symmetric around 0 with a diverging colour map (differences).
        size: (width, height) in inches; default grows with the grid and the panels.
        dpi: pixels per inch.
        annotate: write each cell's value; default for grids of at most 16 x 16.
    """
    import matplotlib
    import numpy as np
    from matplotlib.figure import Figure

    if not panels:
        raise AnalysisError("nothing to draw: no panel")
    frames = list(panels.values())
    n_layers = max(len(f.index) for f in frames)
    n_heads = max(len(f.columns) for f in frames)
    values = np.concatenate([f.to_numpy(dtype=float).ravel() for f in frames])
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if diverging:
        bound = max(abs(lo), abs(hi)) or 1.0
        lo, hi = -bound, bound
    elif lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    if size is None:
        size = _heatmap_size(n_layers, n_heads, len(frames))
    if annotate is None:
        annotate = n_layers <= 16 and n_heads <= 16
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(frames), squeeze=False)[0]
    cmap = matplotlib.colormaps["RdBu_r" if diverging else "viridis"].with_extremes(
        bad="lightgrey")
    image = None
    for ax, (label, frame) in zip(axes, panels.items()):
        image = ax.imshow(np.ma.masked_invalid(frame.to_numpy(dtype=float)), aspect="auto",
                          cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        panel_width = size[0] / len(frames)
        ax.set_title(_wrapped(label, panel_width, 9.0), fontsize=9)
        _draw_cells(ax, frame, image, annotate, diverging)
    scale = f"{'symmetric ' if diverging else ''}scale {lo:.4g} to {hi:.4g}"
    if len(frames) > 1:
        scale = "shared " + scale
    assert image is not None
    fig.colorbar(image, ax=list(axes), label=f"{colorbar_label}\n({scale})")
    fig.suptitle(_wrapped(title, size[0]), fontsize=_TITLE_POINTS)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def plot_heatmap(
    matrix: np.ndarray,
    layers: Sequence[int],
    heads: Sequence[int],
    path: str | os.PathLike[str] | None,
    title: str,
    colorbar_label: str,
    size: tuple[float, float] | None = None,
    dpi: int = 100,
    annotate: bool | None = None,
) -> Figure:
    """A layer x head heatmap of one matrix (rows: layers, columns: heads); see ``plot_heatmaps``.

    Args:
        matrix: [layers, heads] values; NaN cells are drawn grey.
        layers: the layer id of each row.
        heads: the head id of each column.
        path: where to save (the format follows the suffix, ``.png`` usually); None: don't.
        title: the figure title (folded to the figure's width, never clipped).
        colorbar_label: the colour bar's label (the scale's range is appended).
        size: (width, height) in inches; default grows with the grid.
        dpi: pixels per inch; the image is ``size * dpi`` pixels.
        annotate: write each cell's value; default for grids of at most 16 x 16.
    """
    import pandas as pd

    frame = pd.DataFrame(matrix, index=pd.Index(list(layers), name=LAYER), columns=list(heads))
    return plot_heatmaps({"": frame}, title, colorbar_label, path=path, size=size, dpi=dpi,
                         annotate=annotate)


def layer_head_frame(events: pd.DataFrame, metric: str, stat: str = "mean") -> pd.DataFrame:
    """A [layers, heads] DataFrame of one statistic of ``metric`` (index: layer, columns: head).

    Raises:
        UnknownMetricError: ``metric`` was never logged.
        AnalysisError: an unknown statistic, or no layer/head breakdown.
    """
    import pandas as pd

    from otel_sparse.analysis.stats import layer_head_matrix

    matrix, layers, heads = layer_head_matrix(events, metric, stat)
    return pd.DataFrame(matrix, index=pd.Index(layers, name=LAYER),
                        columns=pd.Index(heads, name=HEAD))


def layer_head_panels(
    data: RunData, metric: str, stat: str = "mean",
    where: Mapping[str, Sequence[str]] | None = None, by: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Run label -> its [layers, heads] DataFrame of ``stat``, all on the same layers and heads.

    Labels come from run.json parameters (``run_labels``); with ``by`` (a context, metadata or
    parameter key) each run has one panel per value (``k=8 stage=decode``, or ``stage=decode``
    for one run). A panel without the metric's layer/head breakdown is left out
    (AnalysisError when none has it).
    """
    from otel_sparse.analysis.stats import run_labels

    if stat not in HEATMAP_STATS:
        raise AnalysisError(f"unknown statistic {stat!r}; choose from {', '.join(HEATMAP_STATS)}")
    events = filter_events(data.events, where or {})
    name = resolve_metric(metric, data.events["metric"].tolist())
    labels = run_labels(data)
    key = None if by is None else check_by(events, [by])[0]
    panels: dict[str, pd.DataFrame] = {}
    errors: list[str] = []
    for run in data.run_ids:
        rows: pd.DataFrame = events.loc[events["run"] == run]
        groups: list[tuple[str, pd.DataFrame]] = [(labels[run], rows)]
        if key is not None:
            prefix = f"{labels[run]} " if len(data.run_ids) > 1 else ""
            groups = [(f"{prefix}{by}={value}", part)
                      for value, part in rows.groupby(key, sort=True)]
        for label, part in groups:
            try:
                panels[label] = layer_head_frame(part, name, stat)
            except AnalysisError as exc:
                errors.append(str(exc))
    if not panels:
        raise AnalysisError(errors[0] if errors else f"no events of {name!r}")
    layers = sorted({int(x) for f in panels.values() for x in f.index})
    heads = sorted({int(x) for f in panels.values() for x in f.columns})
    return {label: f.reindex(index=layers, columns=heads) for label, f in panels.items()}


def metric_over_steps(
    data: RunData, metric: str, by: str = LAYER,
    where: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """The mean of ``metric`` per step (else per event time) and line, as a long DataFrame.

    Columns: ``x`` (the step, or the event's timestamp when no event of the metric has a step),
    ``line`` (the line's label), ``mean``, ``count``; ``attrs["x"]`` names the x axis. With
    several runs and ``by`` other than ``run`` or a run.json parameter, each run has its own
    lines (``k=8 layer 0``): runs are never averaged together unlabelled.

    Args:
        data: ``read_run`` of one or more runs.
        metric: the metric (identifier or OTel name).
        by: ``layer``, ``head``, ``run``, or any context/metadata key or run.json parameter.
        where: only events matching (``parse_where``).
    """
    from otel_sparse.analysis.stats import run_labels

    name = resolve_metric(metric, data.events["metric"].tolist())
    events = filter_events(data.events, where or {})
    events = events[events["metric"] == name]
    if events.empty:
        raise AnalysisError(f"no events of {name!r} match the selection")
    labels = run_labels(data)
    events = events.assign(_run=events["run"].map(labels))
    key = "_run" if by == "run" else check_by(events, [by])[0]
    params = {k for p in data.params.values() for k in p}
    per_run = len(set(events["_run"])) > 1 and key != "_run" and key not in params
    x = "step" if "step" in events.columns and events["step"].notna().any() else "timestamp"
    events = events[events[x].notna()]
    if key in (LAYER, HEAD):
        events = events[events[key].notna()]
    prefix = "" if key == "_run" else f"{by}=" if key in params else f"{by} "
    line = events[key].map(lambda v: f"{prefix}{v}")
    if per_run:
        line = events["_run"] + " " + line
    grouped = events.assign(line=line).groupby(["line", x], sort=True)["value"]
    out = grouped.agg(["mean", "count"]).reset_index().rename(columns={x: "x"})
    out["count"] = out["count"].astype("int64")
    out = out[["x", "line", "mean", "count"]]
    out.attrs["x"] = x
    out.attrs["metric"] = name
    return out


def plot_over_steps(
    table: pd.DataFrame, metric: str | None = None, by: str = LAYER,
    path: str | os.PathLike[str] | None = None,
    size: tuple[float, float] = (8.0, 4.8), dpi: int = 100,
) -> Figure:
    """One line per ``table["line"]`` of its mean over ``x`` (``metric_over_steps``' table).

    Axes are labelled (x: ``step`` or ``time``, y: ``mean <metric>``), with a legend titled
    ``by``; saved to ``path`` when given.
    """
    from matplotlib.figure import Figure

    name = metric or str(table.attrs.get("metric", "value"))
    x_name = str(table.attrs.get("x", "step"))
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    ax = fig.add_subplot()
    lines = list(dict.fromkeys(table["line"].tolist()))
    for label in _natural(lines):
        rows = table[table["line"] == label]
        ax.plot(rows["x"].to_numpy(), rows["mean"].to_numpy(dtype=float),
                marker="o" if len(rows) <= 30 else None, markersize=3, label=label)
    ax.set_xlabel("step" if x_name == "step" else "event time")
    ax.set_ylabel(f"mean {name}")
    ax.set_title(_wrapped(f"{name} over {'steps' if x_name == 'step' else 'time'}, "
                          f"one line per {by}", size[0] * 0.75))
    ax.grid(True, alpha=0.3)
    if lines:
        columns = 1 if len(lines) <= 12 else 2 if len(lines) <= 24 else 3
        ax.legend(title=by, fontsize=8, ncols=columns, loc="center left",
                  bbox_to_anchor=(1.01, 0.5))
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi)
    return fig


def _natural(labels: Sequence[str]) -> list[str]:
    """Labels sorted with numbers as numbers (layer 2 before layer 10)."""
    def key(label: str) -> tuple[tuple[int, float, str], ...]:
        parts = re.split(r"(-?\d+(?:\.\d+)?)", label)
        return tuple((0, float(p), "") if _NUMBER.fullmatch(p) else (1, 0.0, p)
                     for p in parts if p)

    return sorted(labels, key=key)


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
