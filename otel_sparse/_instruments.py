"""Identifier -> OpenTelemetry instrument description, and metadata -> attribute sets.

Everything here runs at registration or in the background writer, never inside ``log()``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from otel_sparse.layout import ATTRIBUTE_ALIASES

# Fine-grained over [0, 1], where densities and most relative errors live, with a few bounds
# beyond 1 because an attention-output error can exceed it. 26 bounds -> 27 buckets.
DEFAULT_FLOAT_BOUNDARIES: tuple[float, ...] = (
    0.0, 0.01,
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
    0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
    0.99, 1.0,
    1.5, 2.0, 5.0,
)
"""Default histogram bounds for ``float`` metrics."""

# Counts (tokens kept, blocks selected) spread over orders of magnitude.
DEFAULT_INT_BOUNDARIES: tuple[float, ...] = (
    0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
)
"""Default histogram bounds for ``int`` metrics."""

DEFAULT_TIMER_BOUNDARIES: tuple[float, ...] = (
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
"""Default bounds, in seconds, for timers."""


OVERFLOW_ATTRIBUTES: Mapping[str, str | bool | int | float] = {"otel.metric.overflow": "true"}
"""Where points go once a metric has ``max_series`` attribute sets (the OTel convention)."""

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_./-]{0,254}$")
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_./-]")


HISTOGRAM_KINDS = ("explicit", "exponential")
"""How a histogram buckets its values: fixed bounds, or OTel base-2 exponential buckets."""


class InstrumentKind(str, enum.Enum):
    """What an identifier becomes on the OpenTelemetry side."""

    HISTOGRAM = "histogram"
    COUNTER = "counter"
    UP_DOWN_COUNTER = "up_down_counter"
    GAUGE = "gauge"
    EVENTS_ONLY = "events_only"
    """Kept in the event file only (strings and other non-numeric values)."""


@dataclass(frozen=True)
class MetricSpec:
    """How one registered identifier is exported."""

    identifier: str
    dtype: type
    kind: InstrumentKind
    unit: str = "1"
    description: str = ""
    boundaries: tuple[float, ...] = ()
    attribute_keys: tuple[str, ...] = ()
    """Metadata keys, beyond layer/head, that become attributes (declared, so bounded)."""
    histogram: str | None = None
    """``explicit`` (``boundaries``), ``exponential``, or None: the logger's setting
    (``OTEL_SPARSE_HISTOGRAM``) decides. Explicit ``boundaries=`` and int dtypes fix it to
    ``explicit``."""
    aliases: Mapping[str, str] = field(default_factory=lambda: ATTRIBUTE_ALIASES)


def instrument_name(namespace: str, identifier: str) -> str:
    """Join namespace and identifier into a valid OTel instrument name."""
    raw = f"{namespace}.{identifier}" if namespace else identifier
    if _NAME_RE.match(raw):
        return raw
    cleaned = _INVALID_NAME_CHARS.sub("_", raw)
    if not cleaned[:1].isalpha():
        cleaned = "m_" + cleaned
    return cleaned[:255]


# OpenMetrics reserves these name suffixes for the parts of a histogram (and summary). The
# aggregation tier (collector-config/aggregation.yaml) matches histogram parts by name alone
# (vmagent does not see the metric type), so a gauge or up-down counter whose Prometheus name
# ends in one would be summed over ranks as a histogram part, a decrease read as a reset.
HISTOGRAM_PART_SUFFIXES = ("_bucket", "_count", "_sum")
_WORD = re.compile(r"[A-Za-z0-9]+")
_UNIT_ANNOTATION = re.compile(r"\{[^}]*\}")


def histogram_part_suffix(spec: MetricSpec) -> tuple[str, str] | None:
    """(suffix, ``"identifier"`` or ``"unit"``: what gives it) when a non-histogram's
    Prometheus name ends in a histogram part's suffix, else None.

    The collector's translation (docs/collector.md, "Names in Prometheus"): the name's words
    joined by ``_``, then a word for the unit (none for ``{...}`` annotations or an empty
    unit; for ``1``, ``ratio`` on a gauge and none on a sum; other units by name, ``s`` ->
    ``seconds``, and units it does not know as spelled), then ``_total`` on counters. Only
    the last word matters here: the unit's word where there is one (a known unit's word is
    never a reserved one), else the identifier's last word.
    """
    if spec.kind not in (InstrumentKind.GAUGE, InstrumentKind.UP_DOWN_COUNTER):
        return None  # histograms own these suffixes; counters end in _total
    unit_words = _WORD.findall(_UNIT_ANNOTATION.sub("", spec.unit))
    if unit_words == ["1"]:
        unit_words = ["ratio"] if spec.kind is InstrumentKind.GAUGE else []
    words = unit_words or _WORD.findall(str(spec.identifier))
    suffix = f"_{words[-1]}" if words else ""
    if suffix not in HISTOGRAM_PART_SUFFIXES:
        return None
    return suffix, "unit" if unit_words else "identifier"


def default_kind(dtype: type) -> InstrumentKind:
    """Numeric dtypes become histograms; everything else stays in the event file."""
    if dtype is bool:
        return InstrumentKind.EVENTS_ONLY
    if isinstance(dtype, type) and issubclass(dtype, (int, float)):
        return InstrumentKind.HISTOGRAM
    if getattr(dtype, "__module__", "").startswith(("torch", "numpy")):
        # torch.Tensor / numpy.ndarray / numpy.floating registered as the dtype
        return InstrumentKind.HISTOGRAM
    return InstrumentKind.EVENTS_ONLY


def make_spec(
    identifier: str,
    dtype: type,
    *,
    kind: InstrumentKind | str | None = None,
    unit: str = "1",
    description: str = "",
    boundaries: Sequence[float] | None = None,
    attributes: Sequence[str] = (),
    histogram: str | None = None,
) -> MetricSpec:
    """Validate registration options into a spec; raises ValueError/TypeError on bad options."""
    resolved = default_kind(dtype) if kind is None else InstrumentKind(kind)
    if not isinstance(unit, str) or not unit.isascii() or len(unit) > 63:
        raise ValueError(f"unit must be a UCUM string of at most 63 ASCII characters, got {unit!r}")
    if resolved is InstrumentKind.HISTOGRAM:
        if boundaries is None:
            is_int = isinstance(dtype, type) and issubclass(dtype, int)
            bounds = DEFAULT_INT_BOUNDARIES if is_int else DEFAULT_FLOAT_BOUNDARIES
        else:
            bounds = tuple(float(b) for b in boundaries)
            if any(b != b for b in bounds) or list(bounds) != sorted(set(bounds)):
                raise ValueError(
                    f"histogram boundaries must be strictly increasing numbers, got {boundaries!r}"
                )
    elif boundaries is not None:
        raise ValueError(f"boundaries apply to histograms only, not to {resolved.value}")
    else:
        bounds = ()
    if histogram is not None:
        if histogram not in HISTOGRAM_KINDS:
            raise ValueError(f"histogram must be one of {HISTOGRAM_KINDS}, got {histogram!r}")
        if resolved is not InstrumentKind.HISTOGRAM:
            raise ValueError(f"histogram= applies to histograms only, not to {resolved.value}")
        if histogram == "exponential" and boundaries is not None:
            raise ValueError("an exponential histogram takes no boundaries")
    elif resolved is InstrumentKind.HISTOGRAM and (
        boundaries is not None or (isinstance(dtype, type) and issubclass(dtype, int))
    ):
        histogram = "explicit"  # chosen bounds, and counts on their power-of-two bounds
    keys = tuple(dict.fromkeys(str(a) for a in attributes))
    return MetricSpec(
        identifier=identifier,
        dtype=dtype,
        kind=resolved,
        unit=unit,
        description=description,
        boundaries=tuple(float(b) for b in bounds),
        attribute_keys=keys,
        histogram=histogram,
    )


AttributeKey = tuple[tuple[str, Any], ...]


def attribute_value(value: Any) -> str | bool | int | float | None:
    """An OTel attribute value for a metadata value, or None if it cannot be one.

    Numpy integers become ints; anything else that is not str/bool/int/float is refused, since
    converting a tensor here would read it back to the host.
    """
    if isinstance(value, (str, bool, int, float)):
        return value
    tp = type(value)
    if tp.__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        item = value.item()
        if isinstance(item, (str, bool, int, float)):
            return item
    return None


def attribute_key(spec: MetricSpec, metadata: Mapping[str, Any]) -> tuple[AttributeKey, list[str]]:
    """The sorted (name, value) attribute tuple of one event, and the keys refused on the way."""
    if not metadata:
        return (), []
    out: dict[str, Any] = {}
    refused: list[str] = []
    aliases = spec.aliases
    for key, raw in metadata.items():
        name = aliases.get(key) if isinstance(key, str) else None
        if name is None:
            if key in spec.attribute_keys:
                name = key
            else:
                continue
        value = attribute_value(raw)
        if value is None:
            refused.append(str(key))
            continue
        out[name] = value
    return tuple(sorted(out.items())), refused
