"""Selecting events: ``--where KEY=VALUE`` filters and ``--by KEY`` groupings.

A key is any column of ``RunData.events``: a context key (``stage``, ``step``), a metadata key,
a run.json parameter (``k``, ``masker.name``) or an event column (``rank``, ``run``).

Example:
    >>> where = parse_where(["stage=decode", "k=8", "k=16"])
    >>> where
    {'stage': ['decode'], 'k': ['8', '16']}
    >>> decode = filter_events(run.events, where)                  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from otel_sparse.analysis.errors import AnalysisError

if TYPE_CHECKING:
    import pandas as pd

_INTERNAL = ("value", "metadata", "file", "location", "timestamp")
"""Event columns that make no sense as a filter or a grouping key."""


def parse_where(items: Iterable[str]) -> dict[str, list[str]]:
    """``["stage=decode", "k=8"]`` as ``{key: [values]}``: a key repeated collects its values.

    Raises:
        AnalysisError: an item is not ``KEY=VALUE``.
    """
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AnalysisError(f"--where takes KEY=VALUE (stage=decode), got {item!r}")
        out.setdefault(key, []).append(value.strip())
    return out


def selectable_keys(events: pd.DataFrame) -> list[str]:
    """The columns ``--where`` and ``--by`` accept, sorted."""
    return sorted(str(c) for c in events.columns if c not in _INTERNAL)


def check_key(events: pd.DataFrame, key: str, option: str) -> str:
    """``key`` if it is a column of ``events``; else AnalysisError listing the keys there are."""
    if key in events.columns and key not in _INTERNAL:
        return key
    raise AnalysisError(f"{option} {key!r}: no such key in the run(s); keys: "
                        f"{', '.join(selectable_keys(events))}")


def _matches(column: pd.Series, values: Sequence[str]) -> pd.Series:
    """Rows whose value equals one of ``values`` (numbers compared as numbers)."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column):
        wanted = {v.lower() in ("true", "1", "yes") for v in values}
        return column.isin(list(wanted)).fillna(False).astype(bool)
    if pd.api.types.is_numeric_dtype(column):
        numbers: list[float] = []
        for value in values:
            try:
                numbers.append(float(value))
            except ValueError:
                continue
        as_float = column.astype("float64")
        hit = as_float.isin([n for n in numbers if not math.isnan(n)])
        if any(v.lower() in ("", "none", "nan", "na") for v in values):
            hit |= as_float.isna()
        return hit.fillna(False).astype(bool)
    text = column.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                      else str(v))
    return text.isin(list(values)).astype(bool)


def filter_events(events: pd.DataFrame, where: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Rows of ``events`` matching ``where``: values of one key OR-ed, different keys AND-ed.

    Raises:
        AnalysisError: a key is not a column of ``events``.
    """
    if not where:
        return events
    mask = None
    for key, values in where.items():
        hit = _matches(events[check_key(events, key, "--where")], values)
        mask = hit if mask is None else mask & hit
    assert mask is not None
    return events[mask.to_numpy()].reset_index(drop=True)


def check_by(events: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The grouping keys of ``--by``, checked (AnalysisError for an unknown one)."""
    return [check_key(events, key, "--by") for key in by]
