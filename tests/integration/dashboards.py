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

__all__ = ["BUILTIN_DEFAULTS", "iter_panels", "panel_queries", "substitute"]

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
