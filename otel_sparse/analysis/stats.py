"""The numbers of the CLI's tables: statistics per metric x layer (x head)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from otel_sparse.analysis.errors import AnalysisError, UnknownMetricError
from otel_sparse.analysis.select import check_by, filter_events

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from otel_sparse.analysis.frames import RunData



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
    by_run: bool = False, by: Sequence[str] = (),
    where: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Exact count, mean, min, max, p50, p95 per metric x layer (x head) of the event values.

    Percentiles interpolate linearly between values (numpy's default). NaN values are left
    out of every statistic, count included.

    Args:
        events: ``RunData.events``.
        by_head: one row per head too.
        metric: only this metric (identifier or OTel name).
        by_run: one row per run too.
        by: one row per value of these keys too (context, metadata or parameter columns:
            ``("stage",)``), placed before ``metric``.
        where: only events matching (``parse_where``): values of one key OR-ed, keys AND-ed.

    Raises:
        UnknownMetricError: ``metric`` was never logged.
        AnalysisError: a ``by``/``where`` key is not a column of ``events``.
    """
    import pandas as pd

    events = filter_events(events, where or {})
    by_keys = [k for k in check_by(events, by) if not (k == "run" and by_run)]
    if metric is not None:
        metric = resolve_metric(metric, events["metric"].tolist())
        events = events[events["metric"] == metric]
    keys = ((["run"] if by_run else []) + by_keys + ["metric", "layer"]
            + (["head"] if by_head else []))
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


COMPARE_STATS = ("count", "mean", "p50", "p95")
"""Statistics ``compare`` computes per run (or group of runs), in column order."""


def run_labels(data: RunData, by: str | None = None) -> dict[str, str]:
    """Run name -> the label ``compare`` shows for it, from the run.json parameters.

    With ``by``: ``"<by>=<value>"`` (runs sharing the value share the label, so their events
    are pooled), in the order of the values (numbers numerically). Without: the parameters
    whose values differ between the runs (``"k=8 masker=topk"``), else the run name; a label
    two runs would share gets the run name appended.

    Raises:
        AnalysisError: ``by`` is a parameter no run has.
    """
    params = data.params
    if by is not None:
        if not any(by in p for p in params.values()):
            known = sorted({k for p in params.values() for k in p})
            raise AnalysisError(f"--by {by!r}: no run.json parameter of that name; parameters: "
                                f"{', '.join(known) or 'none (start_run(params=...))'}")
        ordered = sorted(params.items(), key=lambda item: _value_key(item[1].get(by)))
        return {name: f"{by}={p.get(by, '-')}" for name, p in ordered}
    keys = sorted({k for p in params.values() for k in p})
    varying = [k for k in keys if len({repr(p.get(k)) for p in params.values()}) > 1]
    labels = {name: " ".join(f"{k}={p.get(k, '-')}" for k in varying) or name
              for name, p in params.items()}
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {name: label if counts[label] == 1 or label == name else f"{label} ({name})"
            for name, label in labels.items()}


def _value_key(value: Any) -> tuple[int, float, str]:
    """Numbers first, in numeric order, then everything else by its text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def compare(
    data: RunData, by: str | None = None, by_head: bool = False, metric: str | None = None,
    where: Mapping[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Runs side by side: per metric x layer (x head) and run label, count, mean, p50, p95.

    One row per (metric, layer[, head], label); labels in the order of their first run
    (``run_labels``). ``diff_mean``, ``diff_p50`` and ``diff_p95`` are the differences to the
    first label's value for the same metric, layer (and head); NaN where it has none.

    Args:
        data: ``read_run`` of the runs to compare.
        by: a run.json parameter: label runs by its value and pool runs sharing one.
        by_head: one row per head too.
        metric: only this metric.
        where: only events matching (``parse_where``).
    """
    import pandas as pd

    labels = run_labels(data, by)
    order = list(dict.fromkeys(labels.values()))
    events = filter_events(data.events, where or {})
    if metric is not None:
        metric = resolve_metric(metric, events["metric"].tolist())
        events = events[events["metric"] == metric]
    keys = ["metric", "layer"] + (["head"] if by_head else [])
    columns = [*keys, "label", *COMPARE_STATS, "diff_mean", "diff_p50", "diff_p95"]
    if events.empty:
        return pd.DataFrame(columns=columns)
    events = events.assign(label=events["run"].map(labels))
    grouped = events.groupby([*keys, "label"], dropna=False, sort=False)["value"]
    out = grouped.agg(["count", "mean"])
    out["p50"] = grouped.quantile(0.5)
    out["p95"] = grouped.quantile(0.95)
    out = out.reset_index()
    out["count"] = out["count"].astype("int64")
    out["_order"] = out["label"].map({label: i for i, label in enumerate(order)})
    out = out.sort_values([*keys, "_order"], kind="stable", ignore_index=True)
    first = out.loc[out["_order"] == 0, [*keys, "mean", "p50", "p95"]]
    joined = out.merge(first, on=keys, how="left", suffixes=("", "_first"))
    for stat in ("mean", "p50", "p95"):
        out[f"diff_{stat}"] = (joined[stat] - joined[f"{stat}_first"]).to_numpy()
    return out.drop(columns=["_order"])[columns]
