"""Read the PromQL out of a Grafana dashboard, with template variables filled in.

An integration test can run every panel's query against a real Prometheus::

    dashboard = json.loads(Path("docker/grafana/dashboards/otel-sparse-attention.json").read_text())
    for title, expr in panel_queries(dashboard, {"run_id": run_id}):
        assert prom.query(expr)["status"] == "success", title

Variables resolve in this order: the ``variables`` argument, then Grafana's built-ins
(``$__rate_interval``, ``$__interval``, ``$__range``, ...; see ``BUILTIN_DEFAULTS``), then
the dashboard's own template variables (their ``current`` value; "All" becomes their
``allValue``, or ``.*``). A variable found nowhere raises ``KeyError``: a typo in a
dashboard fails the test instead of sending Grafana's literal ``$typo`` to Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["AGGREGATED", "BUILTIN_DEFAULTS", "iter_panels", "panel_queries", "prefer_aggregated",
           "substitute", "unguarded_cluster_wide"]

# What Grafana would put in for a 1 h range, a 15 s step and a 15 s scrape interval.
# $__rate_interval is max($__interval + scrape interval, 4 * scrape interval).
BUILTIN_DEFAULTS: dict[str, str] = {
    "__rate_interval": "1m",
    "__rate_interval_ms": "60000",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "3600s",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# Grafana's variable syntaxes: $name, ${name}, ${name:format}, [[name]], [[name:format]].
# \w+ is greedy, as in Grafana: "$__range_s" is the variable "__range_s", not "$__range"+"_s".
_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<braced_fmt>[^}]+))?\}"
    r"|\[\[(?P<bracket>\w+)(?::(?P<bracket_fmt>[^\]]+))?\]\]"
    r"|\$(?P<plain>\w+)"
)

# The cluster-wide views over the classic histogram series (X_bucket, X_count, X_sum). With
# the aggregation tier (collector-config/aggregation.yaml: summed over ranks `without: [rank,
# ...]`) they are stored once, rank-less; with its raw per-rank opt-in every rank's series are
# stored beside them, and without the tier only those are. A cluster-wide total must count
# each observation once in all three layouts, so every sum over these series in the
# dashboards and recording rules is written ``prefer_aggregated(term)``:
#     sum by (layer, head) (X_count{..., rank=""}) or sum by (layer, head) (X_count{...})
# `or` keeps the right-hand (per-rank) sum only for the label sets the aggregated one lacks.
# The library always sets `rank` (otel_sparse/resource.py), so without the tier the left-hand
# side is empty. Per-rank views (`rank!=""`) read the raw series as they are.
AGGREGATED = 'rank=""'
PER_RANK = 'rank!=""'
_CLASSIC_SELECTOR = re.compile(r"((?:\w|\$\{\w+\})+_(?:bucket|count|sum))\{([^}]*)\}")
_SUM = re.compile(r"\bsum\s*(?:by\s*\([^)]*\)\s*)?\(")

_REGEX_SPECIAL = re.compile(r"([\\^$.|?*+()\[\]{}])")


def _format(name: str, value: str | Sequence[str], fmt: str | None) -> str:
    """Render a value as Grafana does: a list becomes (a|b), regex-escaped, for =~ matchers."""
    if fmt not in (None, "regex", "pipe", "csv", "raw"):
        raise ValueError(f"unsupported format :{fmt} for variable {name!r}")
    if isinstance(value, str):
        return _REGEX_SPECIAL.sub(r"\\\1", value) if fmt == "regex" else value
    values = [str(v) for v in value]
    if fmt == "csv":
        return ",".join(values)
    if fmt in ("pipe", "raw"):
        return "|".join(values)
    escaped = [_REGEX_SPECIAL.sub(r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _dashboard_defaults(dashboard: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Current values of the dashboard's template variables; All becomes allValue or '.*'."""
    defaults: dict[str, str | list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        current = var.get("current") or {}
        value = current.get("value")
        values = value if isinstance(value, list) else [value] if value is not None else []
        if "$__all" in values or (not values and var.get("includeAll")):
            defaults[name] = var.get("allValue") or ".*"
        elif len(values) == 1 and isinstance(values[0], str) and values[0]:
            defaults[name] = values[0]
        elif len(values) > 1:
            defaults[name] = [str(v) for v in values]
    return defaults


def substitute(
    text: str,
    variables: Mapping[str, str | Sequence[str]],
    dashboard: Mapping[str, Any] | None = None,
) -> str:
    """Replace every Grafana template variable in ``text``.

    Args:
        text: a query, a legend, any string with ``$var`` / ``${var}`` / ``[[var]]``.
        variables: values that win over everything else; a list renders as ``(a|b)``.
        dashboard: the dashboard whose template variables supply the remaining values.

    Raises:
        KeyError: a variable that none of the sources define. ``$1``-style regex
            back-references (label_replace) are left as they are, as Grafana does.
    """
    fallback = _dashboard_defaults(dashboard) if dashboard is not None else {}

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bracket") or match.group("plain")
        fmt = match.group("braced_fmt") or match.group("bracket_fmt")
        if name.isdigit():
            return match.group(0)
        for source in (variables, BUILTIN_DEFAULTS, fallback):
            if name in source:
                return _format(name, source[name], fmt)
        raise KeyError(f"template variable ${name} is not defined (in {text!r})")

    return _VARIABLE.sub(replace, text)


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every panel, including those nested in (collapsed) rows; row panels themselves too."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_queries(
    dashboard: Mapping[str, Any], variables: Mapping[str, str | Sequence[str]]
) -> list[tuple[str, str]]:
    """(panel title, PromQL with variables substituted) for every query target of the dashboard.

    Args:
        dashboard: a dashboard JSON model (classic schema), already parsed.
        variables: template variable values, e.g. ``{"run_id": "abc", "__range": "10m"}``;
            they override the built-in defaults and the dashboard's current values.

    Hidden targets (``"hide": true``) are left out; row panels carry no targets.
    """
    queries: list[tuple[str, str]] = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr or target.get("hide"):
                continue
            queries.append((panel.get("title", ""), substitute(expr, variables, dashboard)))
    return queries


def prefer_aggregated(term: str) -> str:
    """A sum over classic histogram series, over the aggregated series where they exist,
    else over the per-rank ones (see ``AGGREGATED``)."""
    aggregated = _CLASSIC_SELECTOR.sub(lambda m: f"{m[1]}{{{m[2]}, {AGGREGATED}}}", term)
    return f"{aggregated} or {term}"


def _sum_terms(expr: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every ``sum [by (...)] (...)`` in ``expr``, nested ones too."""
    for match in _SUM.finditer(expr):
        depth = 0
        for end in range(match.end() - 1, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            if depth == 0:
                yield match.start(), end + 1
                break


def unguarded_cluster_wide(expr: str) -> list[str]:
    """The parts of a query that read classic histogram series cluster-wide without
    ``prefer_aggregated``: [] when every such read counts each observation once.

    A selector with ``rank!=""`` is a per-rank view and needs nothing. Every other selector
    of X_bucket/X_count/X_sum must sit in a ``sum`` term written ``prefer_aggregated(T)``.
    """
    flat = re.sub(r"\s+", " ", expr)
    terms = [flat[a:b] for a, b in _sum_terms(flat)
             if _CLASSIC_SELECTOR.search(flat[a:b]) and PER_RANK not in flat[a:b]]
    bad = []
    for term in terms:
        plain = term.replace(f", {AGGREGATED}}}", "}")
        if prefer_aggregated(plain) not in flat:
            bad.append(term)
    covered = [(a, b) for a, b in _sum_terms(flat)]
    for match in _CLASSIC_SELECTOR.finditer(flat):
        if PER_RANK in match[2]:
            continue
        if not any(a <= match.start() and match.end() <= b for a, b in covered):
            bad.append(match[0])
    return bad
