"""``otel-sparse doctor``: the resolved configuration and whether the collector answers."""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from otel_sparse import config
from otel_sparse._version import __version__
from otel_sparse.cli._common import (
    EXIT_FAILED,
    app,
    console,
)
from otel_sparse.otlp_send import resolve_endpoint

_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY", "APIKEY")


def mask_env_value(name: str, value: str) -> str:
    """An environment value safe to print: header values and secrets become ``***``."""
    upper = name.upper()
    if "HEADERS" in upper:
        pairs = []
        for pair in value.split(","):
            if "=" in pair:
                pairs.append(f"{pair.split('=', 1)[0].strip()}=***")
            elif pair.strip():
                pairs.append("***")
        return ",".join(pairs)
    if any(word in upper for word in _SECRET_WORDS):
        return "***"
    return value


def tcp_reachable(url: str, timeout_s: float) -> tuple[bool, str]:
    """Whether a TCP connection to the URL's host and port opens within ``timeout_s``."""
    parsed = urllib.parse.urlparse(url if "://" in url else "http://" + url)
    host = parsed.hostname
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
    except ValueError as exc:
        return False, str(exc)
    if not host:
        return False, f"no host in {url!r}"
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@app.command()
def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the OTLP endpoint.")]
    = 1.0,
) -> None:
    """Show the resolved configuration, installed extras and whether the collector answers."""
    from otel_sparse.exporters.otlp import (
        OtlpConfigError,
        resolve_protocol,
        validate_otlp_environment,
    )
    from otel_sparse.resource import ProcessIdentity
    from otel_sparse.run import default_runs_dir

    out = console()
    problems: list[str] = []
    captured = _Captured()
    lib_logger = logging.getLogger("otel_sparse")
    lib_logger.addHandler(captured)
    try:
        settings = config.Settings.from_env()
        identity = ProcessIdentity.current()
    finally:
        lib_logger.removeHandler(captured)
    problems.extend(captured.messages)

    table = Table(title="otel_sparse configuration", title_justify="left", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    table.add_row("version", f"otel_sparse {__version__}, Python {sys.version.split()[0]} "
                             f"({escape(sys.executable)})")
    source = next((n for n in (config.OTEL_SPARSE_EXPORTERS, config.OTEL_METRICS_EXPORTER)
                   if os.environ.get(n, "").strip()), "default")
    table.add_row("exporters", f"{', '.join(settings.exporters) or 'none'}  (from {source}); "
                               "micro_metrics.jsonl is always written")
    table.add_row("namespace", settings.namespace)
    table.add_row("export interval", f"{settings.export_interval_s:g} s "
                                     f"(timeout {settings.export_timeout_s:g} s, shutdown "
                                     f"{settings.shutdown_timeout_s:g} s)")
    table.add_row("temporality", settings.temporality)
    table.add_row("write delay", f"{settings.write_delay_s:g} s")
    table.add_row("max series", f"{settings.max_series} per metric")
    table.add_row("max pending", f"{settings.max_pending_events} events")
    if settings.otlp_file:
        table.add_row("otlp file", escape(settings.otlp_file))
    runs_dir = os.path.abspath(default_runs_dir())
    if os.path.isdir(runs_dir):
        n_runs = sum(1 for e in os.scandir(runs_dir) if e.is_dir())
        writable = os.access(runs_dir, os.W_OK)
        state = f"{n_runs} run(s)" + ("" if writable else ", NOT writable")
        if not writable:
            problems.append(f"run dir {runs_dir} is not writable")
    else:
        state = "does not exist yet (created by the first run)"
    table.add_row("run dir", f"{escape(runs_dir)}  ({state})")
    table.add_row("identity", f"run id {escape(identity.run_id)} (generated unless "
                              f"OTEL_SPARSE_RUN_ID/TORCHELASTIC_RUN_ID), rank {identity.rank}/"
                              f"{identity.world_size}, local rank {identity.local_rank}, host "
                              f"{escape(identity.host_name)}")
    packages = []
    for dist in ("torch", "numpy", "pandas", "matplotlib", "opentelemetry-sdk", "grpcio"):
        version = _package_version(dist)
        packages.append(f"{dist} {version}" if version else f"{dist} [yellow]not installed[/]")
    table.add_row("packages", ", ".join(packages))
    if _package_version("torch") is None:
        table.add_row("", "without torch: numpy arrays and numbers log fine; "
                          "`otel-sparse demo` uses numpy")

    # OTLP
    otlp_enabled = "otlp" in settings.exporters
    try:
        protocol = resolve_protocol()
    except OtlpConfigError as exc:
        problems.append(str(exc))
        protocol = "http/protobuf"
    try:
        validate_otlp_environment()
    except OtlpConfigError as exc:
        problems.append(str(exc))
    url = resolve_endpoint(None, protocol)
    reachable, detail = tcp_reachable(url, timeout)
    if reachable:
        verdict = f"[green]reachable[/] ({escape(detail)})"
    else:
        verdict = f"[red]unreachable[/] ({escape(detail)})"
        if otlp_enabled:
            problems.append(f"the otlp exporter is enabled but {url} is unreachable: {detail}")
    table.add_row("otlp endpoint", f"{escape(url)} ({protocol}): {verdict}"
                  + ("" if otlp_enabled else "  [dim](otlp exporter not enabled)[/]"))
    out.print(table)

    names = sorted(n for n in os.environ
                   if n.startswith("OTEL_") or n in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                     "TORCHELASTIC_RUN_ID"))
    env_table = Table(title="environment", title_justify="left")
    env_table.add_column("variable")
    env_table.add_column("value")
    for name in names:
        env_table.add_row(name, escape(mask_env_value(name, os.environ[name])))
    if names:
        out.print(env_table)
    else:
        out.print("environment: no OTEL_* variables set (defaults apply)")
    if problems:
        out.print("[bold red]problems:[/]")
        for problem in problems:
            out.print(f"  - {escape(problem)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    out.print("[green]no problems found[/]")
