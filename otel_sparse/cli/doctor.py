"""``otel-sparse doctor``: the resolved configuration and whether the collector answers."""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from otel_sparse import config
from otel_sparse._safety import mask_env_value, mask_text, mask_url
from otel_sparse._version import __version__
from otel_sparse.cli._common import (
    EXIT_FAILED,
    app,
    console,
)
from otel_sparse.layout import EVENT_FILE_NAME
from otel_sparse.otlp_send import resolve_endpoint


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


@dataclass
class Diagnosis:
    """What ``doctor`` found: the settings a logger would use, the environment, the problems."""

    settings: list[tuple[str, str]] = field(default_factory=list)
    """(setting, plain-text value) rows, in display order."""
    environment: list[tuple[str, str]] = field(default_factory=list)
    """(variable, value) of every OTEL_* and launcher variable, secrets masked."""
    problems: list[str] = field(default_factory=list)
    otlp_reachable: bool = False
    otlp_enabled: bool = False


def diagnose(timeout: float = 1.0) -> Diagnosis:
    """Resolve the configuration as a logger started now would, and check the OTLP endpoint."""
    from otel_sparse.exporters.otlp import (
        OtlpConfigError,
        resolve_protocol,
        validate_otlp_environment,
    )
    from otel_sparse.resource import ProcessIdentity
    from otel_sparse.run import default_runs_dir

    found = Diagnosis()
    rows, problems = found.settings, found.problems
    captured = _Captured()
    lib_logger = logging.getLogger("otel_sparse")
    lib_logger.addHandler(captured)
    try:
        settings = config.Settings.from_env()
        identity = ProcessIdentity.current()
    finally:
        lib_logger.removeHandler(captured)
    problems.extend(mask_text(m) for m in captured.messages)
    rows.append(("version", f"otel_sparse {__version__}, Python {sys.version.split()[0]} "
                            f"({sys.executable})"))
    rows.append(("exporters", f"{', '.join(settings.exporters) or 'none'}  (from "
                              f"{config.sparse_exporters_source()}); "
                              f"{EVENT_FILE_NAME} is always written"))
    rows.append(("namespace", settings.namespace))
    rows.append(("export interval", f"{settings.export_interval_s:g} s (timeout "
                                    f"{settings.export_timeout_s:g} s, shutdown "
                                    f"{settings.shutdown_timeout_s:g} s)"))
    rows.append(("temporality", settings.temporality))
    rows.append(("write delay", f"{settings.write_delay_s:g} s"))
    rows.append(("max series", f"{settings.max_series} per metric"))
    rows.append(("max pending", f"{settings.max_pending_events} events"))
    if settings.otlp_file:
        rows.append(("otlp file", settings.otlp_file))
    runs_dir = os.path.abspath(default_runs_dir())
    if os.path.isdir(runs_dir):
        n_runs = sum(1 for e in os.scandir(runs_dir) if e.is_dir())
        writable = os.access(runs_dir, os.W_OK)
        state = f"{n_runs} run(s)" + ("" if writable else ", NOT writable")
        if not writable:
            problems.append(f"run dir {runs_dir} is not writable")
    else:
        state = "does not exist yet (created by the first run)"
    rows.append(("run dir", f"{runs_dir}  ({state})"))
    rows.append(("identity", f"run id {identity.run_id} (generated unless "
                             f"{config.OTEL_SPARSE_RUN_ID}/{config.TORCHELASTIC_RUN_ID}), rank "
                             f"{identity.rank}/{identity.world_size}, local rank "
                             f"{identity.local_rank}, host {identity.host_name}"))
    packages = []
    for dist in ("torch", "numpy", "pandas", "matplotlib", "opentelemetry-sdk", "grpcio"):
        version = _package_version(dist)
        packages.append(f"{dist} {version}" if version else f"{dist} not installed")
    rows.append(("packages", ", ".join(packages)))
    if _package_version("torch") is None:
        rows.append(("", "without torch: numpy arrays and numbers log fine; "
                         "`otel-sparse demo` uses numpy"))

    found.otlp_enabled = "otlp" in settings.exporters
    try:
        protocol = resolve_protocol()
    except OtlpConfigError as exc:
        problems.append(mask_text(str(exc)))
        protocol = config.DEFAULT_OTLP_PROTOCOL
    try:
        validate_otlp_environment()
    except OtlpConfigError as exc:
        problems.append(mask_text(str(exc)))
    url = resolve_endpoint(None, protocol)
    found.otlp_reachable, detail = tcp_reachable(url, timeout)
    url, detail = mask_url(url), mask_text(detail)  # printed: never the URL's credentials
    verdict = "reachable" if found.otlp_reachable else "unreachable"
    if not found.otlp_reachable and found.otlp_enabled:
        problems.append(f"the otlp exporter is enabled but {url} is unreachable: {detail}")
    rows.append(("otlp endpoint", f"{url} ({protocol}): {verdict} ({detail})"
                 + ("" if found.otlp_enabled else "  (otlp exporter not enabled)")))

    launcher = (config.RANK, config.WORLD_SIZE, config.LOCAL_RANK, config.TORCHELASTIC_RUN_ID)
    found.environment = [(name, mask_env_value(name, os.environ[name]))
                         for name in sorted(os.environ)
                         if name.startswith("OTEL_") or name in launcher]
    return found


@app.command()
def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the OTLP endpoint.")]
    = 1.0,
) -> None:
    """Show the resolved configuration, installed extras and whether the collector answers."""
    found = diagnose(timeout)
    out = console()
    table = Table(title="otel_sparse configuration", title_justify="left", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    for setting, value in found.settings:
        text = escape(value)
        if setting == "otlp endpoint":
            colour = "green" if found.otlp_reachable else "red"
            word = "reachable" if found.otlp_reachable else "unreachable"
            text = text.replace(f": {word} (", f": [{colour}]{word}[/] (", 1)
        table.add_row(setting, text)
    out.print(table)
    if found.environment:
        env_table = Table(title="environment", title_justify="left")
        env_table.add_column("variable")
        env_table.add_column("value")
        for name, value in found.environment:
            env_table.add_row(name, escape(value))
        out.print(env_table)
    else:
        out.print("environment: no OTEL_* variables set (defaults apply)")
    if found.problems:
        out.print("[bold red]problems:[/]")
        for problem in found.problems:
            out.print(f"  - {escape(problem)}", soft_wrap=True)
        raise typer.Exit(EXIT_FAILED)
    out.print("[green]no problems found[/]")
