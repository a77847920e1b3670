"""The numbers of the CLI's tables: statistics per metric x layer (x head)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from otel_sparse.analysis.errors import AnalysisError, UnknownMetricError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd



STATS = ("count", "mean", "min", "max", "p50", "p95")
"""Statistics ``summarize`` computes, in column order."""

HEATMAP_STATS = ("mean", "p50", "p95", "min", "max", "count")
"""Statistics a layer x head heatmap can show."""


def resolve_metric(name: str, available: Iterable[str]) -> str:
    """``name`` as logged; the OTel name (``sparse_attention.<id>``) is accepted too.

    Raises:
        UnknownMetricError: the run has no such metric.
    """
    known = sorted(set(available))
    if name in known:
        return name
    for candidate in known:
        if name.endswith("." + candidate):
            return candidate
    listed = ", ".join(known) if known else "none"
    raise UnknownMetricError(f"unknown metric {name!r}; the run has: {listed}")


def summarize(
    events: pd.DataFrame, by_head: bool = False, metric: str | None = None,
    by_run: bool = False,
) -> pd.DataFrame:
    """Exact count, mean, min, max, p50, p95 per metric x layer (x head) of the event values.

    Percentiles interpolate linearly between values (numpy's default). NaN values are left
    out of every statistic, count included.

    Args:
        events: ``RunData.events``.
        by_head: one row per head too.
        metric: only this metric (identifier or OTel name).
        by_run: one row per run too.

    Raises:
        UnknownMetricError: ``metric`` was never logged.
    """
    import pandas as pd

    if metric is not None:
        metric = resolve_metric(metric, events["metric"].tolist())
        events = events[events["metric"] == metric]
    keys = (["run"] if by_run else []) + ["metric", "layer"] + (["head"] if by_head else [])
    if events.empty:
        return pd.DataFrame(columns=[*keys, *STATS])
    grouped = events.groupby(keys, dropna=False, sort=True)["value"]
    out = grouped.agg(["count", "mean", "min", "max"])
    out["p50"] = grouped.quantile(0.5)
    out["p95"] = grouped.quantile(0.95)
    out = out.reset_index()
    out["count"] = out["count"].astype("int64")
    return out[[*keys, *STATS]]


def layer_head_matrix(
    events: pd.DataFrame, metric: str, stat: str = "mean"
) -> tuple[np.ndarray, list[int], list[int]]:
    """A [layers, heads] array of one statistic of ``metric``, with the layer and head ids.

    Cells without data are NaN. Raises UnknownMetricError for an unknown metric and
    AnalysisError when the metric has no layer and head breakdown.
    """
    import numpy as np

    if stat not in HEATMAP_STATS:
        raise AnalysisError(f"unknown statistic {stat!r}; choose from {', '.join(HEATMAP_STATS)}")
    metric = resolve_metric(metric, events["metric"].tolist())
    rows = events[(events["metric"] == metric)]
    rows = rows[rows["layer"].notna() & rows["head"].notna()]
    if rows.empty:
        raise AnalysisError(
            f"metric {metric!r} has no layer/head breakdown (log a [heads] tensor with "
            "metadata layer_idx, or scalars with layer_idx and head_idx)"
        )
    grouped = rows.groupby(["layer", "head"])["value"]
    if stat == "p50":
        table = grouped.quantile(0.5)
    elif stat == "p95":
        table = grouped.quantile(0.95)
    else:
        table = grouped.agg(stat)
    layers = sorted(int(x) for x in rows["layer"].unique())
    heads = sorted(int(x) for x in rows["head"].unique())
    li = {layer: i for i, layer in enumerate(layers)}
    hi = {head: i for i, head in enumerate(heads)}
    matrix = np.full((len(layers), len(heads)), np.nan)
    for index, value in table.items():
        key: tuple[Any, Any] = index  # type: ignore[assignment]
        matrix[li[int(key[0])], hi[int(key[1])]] = float(value)
    return matrix, layers, heads
