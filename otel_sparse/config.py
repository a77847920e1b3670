"""Configuration: each setting is the argument, else OTEL_SPARSE_*, else OTEL_*, else a default.

Every variable the library reads is a documented constant here; docs/configuration.md lists
them for users. A value that does not parse, or is out of range, logs one warning and the
default applies: a typo in an environment variable must never stop a training run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from otel_sparse._safety import file_name, printable

_logger = logging.getLogger("otel_sparse")

OTEL_SPARSE_NAMESPACE = "OTEL_SPARSE_NAMESPACE"
"""Prefix of every instrument name (``<namespace>.<identifier>``). Default ``sparse_attention``."""

OTEL_SPARSE_RUN_ID = "OTEL_SPARSE_RUN_ID"
"""Run id put on every point as the resource attribute ``run.id``.

Falls back to ``TORCHELASTIC_RUN_ID`` (set by torchrun on every rank), then to a generated id.
"""

TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
"""Set by torchrun: the same value on every rank of one job."""

OTEL_SPARSE_RUN_DIR = "OTEL_SPARSE_RUN_DIR"
"""Parent folder of run folders for the new API and the CLI. Default ``./otel_sparse_runs``."""

DEFAULT_RUNS_DIR = "otel_sparse_runs"

OTEL_SPARSE_EXPORTERS = "OTEL_SPARSE_EXPORTERS"
"""Comma-separated metric exporters: ``jsonl``, ``otlp``, ``otlp_file``, ``console``, ``none``.

Falls back to ``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``), then ``jsonl``. The
event file ``micro_metrics.jsonl`` of the old API is always written when a log path is set.
"""

OTEL_METRICS_EXPORTER = "OTEL_METRICS_EXPORTER"
"""Standard OTel variable, read when ``OTEL_SPARSE_EXPORTERS`` is unset."""

OTEL_SPARSE_EXPORT_INTERVAL = "OTEL_SPARSE_EXPORT_INTERVAL"
"""Milliseconds between metric exports. Falls back to ``OTEL_METRIC_EXPORT_INTERVAL``, then 10000.

The OTel default is 60000; researchers watch dashboards during a run, so ours is shorter.
"""

OTEL_METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
"""Standard OTel variable, read when ``OTEL_SPARSE_EXPORT_INTERVAL`` is unset."""

OTEL_SPARSE_EXPORT_TIMEOUT = "OTEL_SPARSE_EXPORT_TIMEOUT"
"""Milliseconds one export may take. Falls back to ``OTEL_METRIC_EXPORT_TIMEOUT``, then 10000."""

OTEL_METRIC_EXPORT_TIMEOUT = "OTEL_METRIC_EXPORT_TIMEOUT"
"""Standard OTel variable, read when ``OTEL_SPARSE_EXPORT_TIMEOUT`` is unset."""

OTEL_SPARSE_SHUTDOWN_TIMEOUT = "OTEL_SPARSE_SHUTDOWN_TIMEOUT"
"""Milliseconds the final export at exit may take before it is abandoned. Default 3000."""

OTEL_SPARSE_TEMPORALITY = "OTEL_SPARSE_TEMPORALITY"
"""``cumulative`` (default) or ``delta``.

Falls back to ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``. Cumulative survives a
collector restart without losing totals; delta needs ``deltatocumulative`` in the collector.
"""

OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE = (
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
)
"""Standard OTel variable, read when ``OTEL_SPARSE_TEMPORALITY`` is unset."""

OTEL_SPARSE_MAX_SERIES = "OTEL_SPARSE_MAX_SERIES"
"""Attribute sets kept per metric before points go to the overflow series. Default 20000.

The default leaves room for 128 layers x 128 heads (16384) plus a few extra attributes.
"""

OTEL_SPARSE_WRITE_DELAY = "OTEL_SPARSE_WRITE_DELAY"
"""Seconds an event may wait in memory before the background writer persists it. Default 1.0.

Bounds what a ``kill -9`` can lose. ``flush_every`` still hands full batches over at once.
"""

OTEL_SPARSE_MAX_PENDING_EVENTS = "OTEL_SPARSE_MAX_PENDING_EVENTS"
"""Events handed to the writer but not yet written, before new batches are dropped (counted).

Default 1000000: bounds memory if the disk stalls.
"""

OTEL_SPARSE_OTLP_FILE = "OTEL_SPARSE_OTLP_FILE"
"""Path of the OTLP-JSON lines file (exporter ``otlp_file``).

Default ``<run dir>/otlp/metrics.jsonl``. Ranks other than 0 and forked workers insert
``.rank<r>.pid<pid>`` before the extension, as for every file, so processes never share one.
"""

OTEL_SPARSE_SIGTERM_HANDLER = "OTEL_SPARSE_SIGTERM_HANDLER"
"""``true`` (default): on SIGTERM, close every logger, then run the previous handler.

Installed from the main thread when logging is configured, only over ``SIG_DFL`` (then the
process still dies of SIGTERM) or a Python handler (which then runs). ``false``: never.
"""

OTEL_SPARSE_LINE_CACHE = "OTEL_SPARSE_LINE_CACHE"
"""``true`` (default): the background writer reuses the text of earlier lines (the line cache,
5-10x faster than encoding each event). ``false``: every event is encoded on its own by the
plain reference encoder, with no cache at all; the same bytes, for checking or debugging.
"""

OTEL_SPARSE_HISTOGRAM = "OTEL_SPARSE_HISTOGRAM"
"""``explicit`` (default) or ``exponential``: how float histograms bucket their values.

``exponential`` exports OTel base-2 exponential histograms, which Prometheus (started with
``--enable-feature=native-histograms``) stores as one native-histogram series per
(metric, attributes) instead of 27 ``_bucket`` series plus ``_sum`` and ``_count``, with
quantiles within one bucket width (4.4 % at scale 4). Explicit stays the default because it
works with every backend: a Prometheus without that flag, the vmagent aggregation tier (which
turns exponential histograms into ``vmrange`` buckets no ``histogram_quantile`` reads) and
the classic ``_bucket`` queries of existing dashboards. ``register_metric(histogram=...)``
chooses per metric; ``boundaries=``, timers and int metrics are always explicit.
"""

OTEL_SPARSE_HISTOGRAM_MAX_BUCKETS = "OTEL_SPARSE_HISTOGRAM_MAX_BUCKETS"
"""Buckets per sign an exponential histogram series keeps before it halves its resolution.

Default 160 (the OTel SDK default). A series starts at scale 8 and lowers its scale just
enough to fit its range (docs/configuration.md has the table).
"""

# -- standard OTLP exporter variables (each per-signal ``_METRICS_`` form wins) -------------

OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
"""``grpc`` or ``http/protobuf`` (the default, as the OTel specification says)."""
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
"""``OTEL_EXPORTER_OTLP_PROTOCOL`` for metrics only; read first."""
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""Collector address, ``http(s)://host:port`` (default: the OTLP library's, localhost)."""
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
"""``OTEL_EXPORTER_OTLP_ENDPOINT`` for metrics only; read first."""
OTEL_EXPORTER_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
"""``key=value,...`` sent with every export (tokens: never logged)."""
OTEL_EXPORTER_OTLP_METRICS_HEADERS = "OTEL_EXPORTER_OTLP_METRICS_HEADERS"
"""``OTEL_EXPORTER_OTLP_HEADERS`` for metrics only; read first."""
OTEL_EXPORTER_OTLP_CERTIFICATE = "OTEL_EXPORTER_OTLP_CERTIFICATE"
"""PEM file of the CA that signed the collector's certificate."""
OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE = "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"
"""``OTEL_EXPORTER_OTLP_CERTIFICATE`` for metrics only; read first."""
OTEL_EXPORTER_OTLP_CLIENT_KEY = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
"""PEM file of the client's private key (mutual TLS)."""
OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY"
"""``OTEL_EXPORTER_OTLP_CLIENT_KEY`` for metrics only; read first."""
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
"""PEM file of the client's certificate (mutual TLS)."""
OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE = "OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE"
"""``OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`` for metrics only; read first."""

OTLP_PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_OTLP_PROTOCOL = "http/protobuf"
OTLP_SETTINGS: dict[str, tuple[str, str]] = {
    "protocol": (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL),
    "endpoint": (OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT),
    "headers": (OTEL_EXPORTER_OTLP_METRICS_HEADERS, OTEL_EXPORTER_OTLP_HEADERS),
    "certificate": (OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE),
    "client_key": (OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY),
    "client_certificate": (OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE,
                           OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE),
}
"""Each OTLP setting's variables, in the order they are read (metrics-only form first)."""

# -- the process, as launchers describe it ---------------------------------------------------

RANK = "RANK"
"""Set by torchrun (and most launchers): this process's rank. Default 0."""
WORLD_SIZE = "WORLD_SIZE"
"""Set by torchrun: the number of ranks. Default 1."""
LOCAL_RANK = "LOCAL_RANK"
"""Set by torchrun: the rank on this host. Default 0."""

EXPORTER_NAMES = frozenset({"jsonl", "otlp", "otlp_file", "console", "none"})
DEFAULT_EXPORTERS = ("jsonl",)

_T = TypeVar("_T")
_warned_env: set[tuple[str, str]] = set()


def _warn_once(name: str, raw: str, why: str) -> None:
    if (name, raw) not in _warned_env:
        _warned_env.add((name, raw))
        _logger.warning("otel_sparse: ignoring %s=%r (%s); using the default", name, raw, why)


def _first_set(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        raw = environ.get(name, "").strip()
        if raw:
            return name, raw
    return None


def first_set(
    names: tuple[str, ...], environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """``(name, value)`` of the first of ``names`` set to a non-blank value, stripped."""
    return _first_set(os.environ if environ is None else environ, *names)


def _resolve(
    names: tuple[str, ...],
    parse: Callable[[str], _T],
    default: _T,
    environ: Mapping[str, str] | None = None,
) -> _T:
    """The first set variable among ``names`` that parses, else ``default`` (warned once)."""
    env = os.environ if environ is None else environ
    found = _first_set(env, *names)
    if found is None:
        return default
    name, raw = found
    try:
        return parse(raw)
    except ValueError as exc:
        _warn_once(name, raw, str(exc))
        return default


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive number")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _temporality(raw: str) -> str:
    value = raw.lower()
    if value not in ("cumulative", "delta"):
        raise ValueError("must be 'cumulative' or 'delta'")
    return value


def _switch(raw: str) -> bool:
    value = raw.lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("must be true or false")
def _histogram(raw: str) -> str:
    value = raw.lower()
    if value not in ("explicit", "exponential"):
        raise ValueError("must be 'explicit' or 'exponential'")
    return value


def _max_buckets(raw: str) -> int:
    value = int(raw)
    if value < 2:
        raise ValueError("must be an integer >= 2")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be an integer >= 0")
    return value


def sigterm_handler_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``OTEL_SPARSE_SIGTERM_HANDLER`` allows the SIGTERM handler (default yes)."""
    return _resolve((OTEL_SPARSE_SIGTERM_HANDLER,), _switch, True, environ)


_warned_none_run_id = False


def named_run_id(environ: Mapping[str, str] | None = None, warn: bool = True) -> str | None:
    """``OTEL_SPARSE_RUN_ID``, else ``TORCHELASTIC_RUN_ID`` (the same on every torchrun rank),
    else None. torchrun's placeholder ``none`` (no --rdzv-id, shared by every such job) names
    nothing; it is warned about once."""
    global _warned_none_run_id
    found = first_set((OTEL_SPARSE_RUN_ID,), environ)
    if found:
        return _safe_run_id(*found)
    found = first_set((TORCHELASTIC_RUN_ID,), environ)
    if found is None:
        return None
    if found[1] != "none":
        return _safe_run_id(*found)
    if warn and not _warned_none_run_id:
        _warned_none_run_id = True
        _logger.warning(
            "otel_sparse: TORCHELASTIC_RUN_ID is 'none' (torchrun without --rdzv-id), "
            "which every such job shares; using a generated run id per process. Set "
            "OTEL_SPARSE_RUN_ID (same on every rank) to group this job's ranks."
        )
    return None


_warned_unsafe_run_ids: set[str] = set()


def _safe_run_id(name: str, value: str) -> str:
    """A run id names the run's folder: path separators and ``..`` never leave the runs folder.

    The same replacement on every rank (never a generated id), so ranks still share one run.
    """
    safe = file_name(value)
    if safe != value and value not in _warned_unsafe_run_ids:
        _warned_unsafe_run_ids.add(value)
        _logger.warning(
            "otel_sparse: %s=%r holds a path separator, '..' or a control character; a run id "
            "names a folder inside the runs folder, so using %r", name, printable(value), safe,
        )
    return safe


def process_rank(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)``; a value that is no integer >= 0 (>= 1 for the
    world size) is warned about once and its default applies."""
    return (
        _resolve((RANK,), _non_negative_int, 0, environ),
        _resolve((WORLD_SIZE,), _positive_int, 1, environ),
        _resolve((LOCAL_RANK,), _non_negative_int, 0, environ),
    )


def otlp_setting(
    setting: str, argument: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """One OTLP setting as ``(source, raw value)``: the argument (source ``"argument"``),
    else the first set of its variables (``OTLP_SETTINGS[setting]``), else None.

    Values are returned unchecked; ``exporters.otlp`` validates them (endpoint, PEM files,
    header grammar) and raises OtlpConfigError at configuration time.
    """
    if argument is not None and argument.strip():
        return "argument", argument.strip()
    return first_set(OTLP_SETTINGS[setting], environ)


def otlp_protocol(
    argument: str | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """``(source, protocol)``: argument, then the protocol variables, then ``http/protobuf``
    (source ``"default"``), lower-cased; not validated (see ``exporters.otlp``)."""
    found = otlp_setting("protocol", argument, environ)
    source, raw = found if found else ("default", DEFAULT_OTLP_PROTOCOL)
    return source, raw.lower()


def otlp_endpoint(argument: str | None = None, environ: Mapping[str, str] | None = None
                  ) -> str | None:
    """The collector endpoint: argument, then the endpoint variables; None: the library's."""
    found = otlp_setting("endpoint", argument, environ)
    return found[1] if found else None


def otlp_headers(argument: str | None = None, environ: Mapping[str, str] | None = None
                 ) -> str | None:
    """The raw ``key=value,...`` header list: argument, then the header variables, else None."""
    found = otlp_setting("headers", argument, environ)
    return found[1] if found else None


def sparse_exporters_source(environ: Mapping[str, str] | None = None) -> str:
    """Which variable chose the exporters (``OTEL_SPARSE_EXPORTERS``, ``OTEL_METRICS_EXPORTER``)
    or ``"default"``: for the CLI's doctor."""
    found = first_set((OTEL_SPARSE_EXPORTERS, OTEL_METRICS_EXPORTER), environ)
    return found[0] if found else "default"


def runs_dir(environ: Mapping[str, str] | None = None) -> str:
    """Parent folder of run folders: ``OTEL_SPARSE_RUN_DIR``, else ``otel_sparse_runs``."""
    env = os.environ if environ is None else environ
    return env.get(OTEL_SPARSE_RUN_DIR, "").strip() or DEFAULT_RUNS_DIR


def parse_exporters(raw: str) -> tuple[str, ...]:
    """Parse a comma-separated exporter list; raises ValueError naming unknown entries."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in raw.split(",") if part.strip()))
    unknown = [n for n in names if n not in EXPORTER_NAMES]
    if unknown:
        raise ValueError(f"unknown exporter(s) {unknown}; choose from {sorted(EXPORTER_NAMES)}")
    if "none" in names:
        return ()
    return names


@dataclass(frozen=True)
class Settings:
    """Every tunable of one logger, resolved once when logging is configured."""

    namespace: str = "sparse_attention"
    exporters: tuple[str, ...] = DEFAULT_EXPORTERS
    export_interval_s: float = 10.0
    export_timeout_s: float = 10.0
    shutdown_timeout_s: float = 3.0
    temporality: str = "cumulative"
    max_series: int = 20000
    write_delay_s: float = 1.0
    max_pending_events: int = 1_000_000
    otlp_file: str | None = None
    line_cache: bool = True
    histogram: str = "explicit"
    histogram_max_buckets: int = 160

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, exporters: tuple[str, ...] | None = None
    ) -> Settings:
        """Resolve every setting: ``exporters`` argument, then OTEL_SPARSE_*, OTEL_*, default."""
        env = os.environ if environ is None else environ
        if exporters is None:
            default_exporters: tuple[str, ...] = DEFAULT_EXPORTERS
            exporters = _resolve(
                (OTEL_SPARSE_EXPORTERS, OTEL_METRICS_EXPORTER), parse_exporters,
                default_exporters, env,
            )
        namespace = _resolve((OTEL_SPARSE_NAMESPACE,), str, cls.namespace, env)
        return cls(
            namespace=namespace.rstrip("."),
            exporters=exporters,
            export_interval_s=_resolve(
                (OTEL_SPARSE_EXPORT_INTERVAL, OTEL_METRIC_EXPORT_INTERVAL),
                _positive_float, 10000.0, env,
            ) / 1000.0,
            export_timeout_s=_resolve(
                (OTEL_SPARSE_EXPORT_TIMEOUT, OTEL_METRIC_EXPORT_TIMEOUT),
                _positive_float, 10000.0, env,
            ) / 1000.0,
            shutdown_timeout_s=_resolve(
                (OTEL_SPARSE_SHUTDOWN_TIMEOUT,), _positive_float, 3000.0, env
            ) / 1000.0,
            temporality=_resolve(
                (OTEL_SPARSE_TEMPORALITY, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE),
                _temporality, "cumulative", env,
            ),
            max_series=_resolve((OTEL_SPARSE_MAX_SERIES,), _positive_int, 20000, env),
            write_delay_s=_resolve((OTEL_SPARSE_WRITE_DELAY,), _positive_float, 1.0, env),
            max_pending_events=_resolve(
                (OTEL_SPARSE_MAX_PENDING_EVENTS,), _positive_int, 1_000_000, env
            ),
            otlp_file=env.get(OTEL_SPARSE_OTLP_FILE, "").strip() or None,
            line_cache=_resolve((OTEL_SPARSE_LINE_CACHE,), _switch, True, env),
            histogram=_resolve((OTEL_SPARSE_HISTOGRAM,), _histogram, "explicit", env),
            histogram_max_buckets=_resolve(
                (OTEL_SPARSE_HISTOGRAM_MAX_BUCKETS,), _max_buckets, 160, env
            ),
        )
