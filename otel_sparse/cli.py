"""``otel-sparse``: the researcher's command line (demo, summary, heatmap, tail, replay, doctor).

Every command reads run folders as otel_sparse writes them; see docs/cli.md. Errors a user
can fix (a wrong path, an empty run, an unknown metric, a bad option) print one line and
exit with code 2; a collector that refuses data exits with code 1.

pandas and matplotlib are imported only by the commands that need them.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from otel_sparse import config
from otel_sparse._safety import mask_env_value, mask_text, mask_url
from otel_sparse._version import __version__
from otel_sparse.analysis import (
    STATS,
    AnalysisError,
    DataFile,
    EventFollower,
    RunNotFoundError,
    find_runs,
    latest_run,
)

if TYPE_CHECKING:
    import pandas as pd
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )

    from otel_sparse.analysis import RunData

EXIT_USAGE = 2
"""Exit code for a mistake the user can fix: wrong path, empty run, unknown metric."""
EXIT_FAILED = 1
"""Exit code for a refused export, or problems found by ``doctor``."""

app = typer.Typer(
    name="otel-sparse",
    help="Run, inspect and replay otel_sparse runs (micro_metrics.jsonl, metrics.jsonl, run.json).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def main() -> None:
    """Entry point of the ``otel-sparse`` console script."""
    app()


# -- output helpers -----------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when the output is not a terminal."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one error line to stderr and exit (no traceback)."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    _console(stderr=True).print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code)


def _num(value: Any) -> str:
    """A statistic as shown in tables: 6 significant digits, '-' for missing."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "-"
    return f"{number:.6g}"


def _key(value: Any) -> str:
    """A layer/head id as shown in tables: '-' when missing."""
    if value is None:
        return "-"
    try:
        import pandas as pd

        if pd.isna(value):
            return "-"
    except (TypeError, ValueError, ImportError):
        pass
    return str(int(value))


@contextmanager
def _analysis_errors() -> Iterator[None]:
    """Turn analysis errors and a missing pandas/matplotlib into one-line exits."""
    try:
        yield
    except AnalysisError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"{exc.name or exc} is needed for this command: pip install 'otel-sparse[analysis]'")


def _load(paths: Sequence[Path]) -> RunData:
    """Read runs for a command; exits 2 for a wrong path or a run without events."""
    from otel_sparse.analysis import read_run

    with _analysis_errors():
        data = read_run([str(p) for p in paths])
    if data.events.empty:
        where = ", ".join(str(p) for p in paths)
        if data.non_numeric:
            _fail(f"no numeric events in {where} ({data.non_numeric} non-numeric event(s) only)")
        _fail(f"no events in {where}: the run is empty (or has not written its events yet)")
    return data


# -- demo ---------------------------------------------------------------------------------


class Backend(str, enum.Enum):
    """Array library of the demo loop."""

    auto = "auto"
    torch = "torch"
    numpy = "numpy"


@app.command()
def demo(
    steps: Annotated[int, typer.Option(help="Loop steps (each logs every layer).")] = 300,
    layers: Annotated[int, typer.Option(help="Layers.")] = 4,
    heads: Annotated[int, typer.Option(help="Heads per layer.")] = 8,
    seq: Annotated[int, typer.Option(help="Sequence length (queries = keys).")] = 128,
    head_dim: Annotated[int, typer.Option(help="Head dimension.")] = 32,
    top_k: Annotated[int, typer.Option(help="Top-k keys kept per query.")] = 16,
    sink: Annotated[int, typer.Option(help="Sink tokens always kept.")] = 4,
    window: Annotated[int, typer.Option(help="Local window always kept.")] = 8,
    run_dir: Annotated[
        Path | None,
        typer.Option(help="The run folder. Default: $OTEL_SPARSE_RUN_DIR or "
                          "./otel_sparse_runs, then /<run id>."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    backend: Annotated[Backend, typer.Option(help="torch when installed (auto), or numpy.")]
    = Backend.auto,
    device: Annotated[str, typer.Option(help="torch device: auto, cpu, cuda, cuda:1 ...")]
    = "auto",
    exporters: Annotated[
        str | None,
        typer.Option(help="Metric exporters, comma separated (jsonl, otlp_file, otlp, console). "
                          "Default: $OTEL_SPARSE_EXPORTERS, else jsonl."),
    ] = None,
    heatmap: Annotated[bool, typer.Option(help="Save density_heatmap.png in the run.")] = True,
) -> None:
    """Run a small sparse-attention loop that logs per-head density and output error."""
    from otel_sparse.demo import (
        DemoConfig,
        histogram_counts,
        resolve_backend,
        run_demo,
        summary_rows,
    )

    cfg = DemoConfig(steps=steps, layers=layers, heads=heads, seq=seq, head_dim=head_dim,
                     top_k=top_k, sink=sink, window=window, seed=seed, backend=backend.value,
                     device=device)
    exporter_list: list[str] | None = None
    try:
        cfg.check()
        resolved = resolve_backend(cfg.backend)
        if exporters is not None:
            exporter_list = list(config.parse_exporters(exporters))
    except ValueError as exc:
        _fail(str(exc))
    out = _console()
    out.print(
        f"otel_sparse demo: {steps} steps x {layers} layers x {heads} heads "
        f"(seq {seq}, top-k {top_k}, sink {sink}, window {window}), backend {resolved}"
    )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = _console(stderr=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True,
                  disable=not err.is_terminal) as progress:
        task = progress.add_task("steps", total=steps)
        try:
            result = run_demo(cfg, run_dir=None if run_dir is None else str(run_dir),
                              exporters=exporter_list, heatmap=heatmap,
                              on_step=lambda n: progress.update(task, completed=n))
        except (ValueError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _fail(f"demo failed: {first}", EXIT_FAILED)
    events = steps * layers * 2
    out.print(
        f"Run [bold]{escape(result.run_id)}[/] ({result.backend} on {result.device}): "
        f"{events} events in {result.seconds:.1f} s; files in [bold]{escape(result.run_dir)}[/]"
    )
    files = Table(title="files", title_justify="left")
    files.add_column("file")
    files.add_column("size", justify="right")
    files.add_column("lines", justify="right")
    for name, path in result.files.items():
        size = os.path.getsize(path)
        lines = "-"
        if name.endswith(".jsonl"):
            with open(path, "rb") as f:
                lines = str(sum(1 for _ in f))
        files.add_row(escape(name), f"{size:,}", lines)
    out.print(files)
    counts = histogram_counts(result.run_dir)
    table = Table(title="what was logged (per head values)", title_justify="left")
    for column in ("metric", "events", "values", "mean", "min", "p50", "p95", "max",
                   "OTel count"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    namespace = config.Settings.from_env().namespace
    for row in summary_rows(result):
        otel = counts.get(f"{namespace}.{row['metric']}")
        table.add_row(row["metric"], str(row["events"]), str(row["values"]),
                      *(_num(row[s]) for s in ("mean", "min", "p50", "p95", "max")),
                      "-" if otel is None else str(otel))
    out.print(table)
    if result.heatmap is None and heatmap:
        out.print("(no heatmap: matplotlib is not installed)")
    quoted = _shell_quote(result.run_dir)
    out.print("Next:")
    out.print(f"  otel-sparse summary {quoted} --by-head", soft_wrap=True)
    out.print(f"  otel-sparse heatmap {quoted} --metric research_attention_output_error "
              f"-o error.png", soft_wrap=True)


def _shell_quote(path: str) -> str:
    import shlex

    return escape(shlex.quote(path))


# -- summary ------------------------------------------------------------------------------


class OutputFormat(str, enum.Enum):
    """How ``summary`` prints its statistics."""

    table = "table"
    csv = "csv"
    json = "json"


def _manifest_header(data: RunData) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for run, (name, manifest) in zip(data.runs, data.manifests.items(), strict=True):
        grid.add_row("run", escape(name))
        grid.add_row("folder", escape(run.path))
        if not manifest:
            grid.add_row("manifest", "none (run.json missing: logged without start_run?)")
        else:
            grid.add_row("start", escape(str(manifest.get("start", "-"))))
            grid.add_row("end", escape(str(manifest.get("end", "- (still running, or killed)"))))
            grid.add_row("host", escape(str(manifest.get("host", "-"))))
            ranks = manifest.get("ranks") or {}
            shown = ", ".join(
                f"{rank} (pid {info.get('pid', '?')} on {info.get('host', '?')})"
                for rank, info in sorted(ranks.items(), key=lambda kv: int(kv[0]))
                if isinstance(info, dict)
            )
            grid.add_row("ranks", escape(f"{shown or '-'}; world size "
                                         f"{manifest.get('world_size', '-')}"))
            params = manifest.get("params") or {}
            grid.add_row("params", escape(", ".join(f"{k}={v}" for k, v in params.items())
                                          or "-"))
        events = data.events[data.events["run"] == name]
        files = sorted(set(events["file"].tolist()))
        grid.add_row("events", f"{len(events)} values from {len(files)} event file(s)")
        grid.add_row("", "")
    return grid


def _stats_table(stats: pd.DataFrame, keys: Sequence[str]) -> Table:
    table = Table()
    for key in keys:
        table.add_column(key, justify="left" if key in ("run", "metric") else "right")
    for stat in STATS:
        table.add_column(stat, justify="right")
    for record in stats.to_dict("records"):
        cells = [escape(str(record[k])) if k in ("run", "metric") else _key(record[k])
                 for k in keys]
        cells.append(str(record["count"]))
        cells.extend(_num(record[s]) for s in STATS[1:])
        table.add_row(*cells)
    return table


@app.command()
def summary(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folders, or a folder of runs (merged).", show_default=False)],
    by_head: Annotated[bool, typer.Option("--by-head", help="One row per head too.")] = False,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="Only this metric.")]
    = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table (with the run header), or csv/json of the statistics only.")]
    = OutputFormat.table,
) -> None:
    """Count, mean, min, max, p50, p95 per metric x layer (x head), exact from the event files."""
    from otel_sparse.analysis import summarize

    data = _load(runs)
    by_run = len(data.runs) > 1
    with _analysis_errors():
        stats = summarize(data.events, by_head=by_head, metric=metric, by_run=by_run)
    keys = (["run"] if by_run else []) + ["metric", "layer"] + (["head"] if by_head else [])
    if output_format is OutputFormat.csv:
        sys.stdout.write(stats.to_csv(index=False))
        return
    if output_format is OutputFormat.json:
        import json

        import pandas as pd

        for record in stats.to_dict("records"):
            clean = {k: None if v is None or (not isinstance(v, str) and pd.isna(v)) else
                     (int(v) if k in ("layer", "head", "count") else v)
                     for k, v in record.items()}
            sys.stdout.write(json.dumps(clean) + "\n")
        return
    out = _console()
    out.print(_manifest_header(data))
    out.print(_stats_table(stats, keys))


# -- heatmap ------------------------------------------------------------------------------


class Stat(str, enum.Enum):
    """The statistic a heatmap cell shows."""

    mean = "mean"
    p50 = "p50"
    p95 = "p95"
    min = "min"
    max = "max"
    n = "count"


def _parse_size(size: str | None) -> tuple[float, float] | None:
    if size is None:
        return None
    try:
        width, height = (float(x) for x in size.lower().split("x"))
    except ValueError:
        _fail(f"--size must look like 8x5 (inches), got {size!r}")
    if not (width > 0 and height > 0):
        _fail(f"--size must be positive, got {size!r}")
    return width, height


@app.command()
def heatmap(
    run: Annotated[Path, typer.Argument(help="A run folder (or a folder of runs, merged).",
                                        show_default=False)],
    metric: Annotated[str, typer.Option("--metric", "-m", help="The metric to show.",
                                        show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file (.png, .svg, .pdf).",
                                         show_default=False)],
    stat: Annotated[Stat, typer.Option(help="The statistic per cell.")] = Stat.mean,
    csv: Annotated[Path | None, typer.Option(
        help="Also write the layer x head values as CSV (rows: layers, columns: heads).")]
    = None,
    size: Annotated[str | None, typer.Option(help="Figure size in inches, WIDTHxHEIGHT.")]
    = None,
    dpi: Annotated[int, typer.Option(help="Pixels per inch.")] = 100,
) -> None:
    """Save a layer x head heatmap of one metric (mean or another statistic per cell)."""
    from otel_sparse.analysis import layer_head_matrix, plot_heatmap, resolve_metric

    figure_size = _parse_size(size)
    if dpi < 1:
        _fail(f"--dpi must be at least 1, got {dpi}")
    data = _load([run])
    with _analysis_errors():
        name = resolve_metric(metric, data.metrics)
        matrix, layers, heads = layer_head_matrix(data.events, name, stat.value)
    ids = data.run_ids
    label = f"run {ids[0]}" if len(ids) == 1 else f"{len(ids)} runs"
    output.parent.mkdir(parents=True, exist_ok=True)
    with _analysis_errors():
        try:
            plot_heatmap(matrix, layers, heads, output, title=f"{name} ({stat.value}) - {label}",
                         colorbar_label=f"{stat.value} {name}", size=figure_size, dpi=dpi)
        except (OSError, ValueError) as exc:
            _fail(f"cannot write {output}: {exc}")
    if csv is not None:
        import pandas as pd

        frame = pd.DataFrame(matrix, index=pd.Index(layers, name="layer"), columns=heads)
        try:
            csv.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(csv)
        except OSError as exc:
            _fail(f"cannot write {csv}: {exc}")
    out = _console()
    out.print(f"wrote {escape(str(output))} ({len(layers)} layers x {len(heads)} heads, "
              f"{stat.value} of {escape(name)})" + (f" and {escape(str(csv))}" if csv else ""))


# -- tail ---------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return _num(value)
    if isinstance(value, list):
        if any(isinstance(v, list) for v in value):
            flat = [x for row in value if isinstance(row, list) for x in row
                    if isinstance(x, (int, float))]
            mean = sum(flat) / len(flat) if flat else math.nan
            width = max((len(r) for r in value if isinstance(r, list)), default=0)
            return f"[{len(value)}x{width}] mean={_num(mean)}"
        shown = " ".join(_format_value(v) for v in value[:16])
        more = f" ...(+{len(value) - 16})" if len(value) > 16 else ""
        return f"[{shown}{more}]"
    return repr(value)


def _format_event(data_file: DataFile, record: dict[str, Any]) -> str:
    metadata = record.get("metadata")
    meta = metadata if isinstance(metadata, dict) else {}
    parts = [str(record.get("timestamp", "?"))]
    if data_file.rank is not None:
        parts.append(f"rank{data_file.rank}/pid{data_file.pid}")
    parts.append(str(record.get("metric", "?")))
    parts.extend(f"{k}={v}" for k, v in meta.items())
    parts.append(_format_value(record.get("value")))
    return "  ".join(parts)


@app.command()
def tail(
    run: Annotated[Path | None, typer.Argument(
        help="A run folder; a folder of runs follows its newest run. Default: the newest run "
             "under $OTEL_SPARSE_RUN_DIR or ./otel_sparse_runs.", show_default=False)] = None,
    once: Annotated[bool, typer.Option("--once", help="Print what is there and exit.")] = False,
    lines: Annotated[int | None, typer.Option(
        "--lines", "-n", help="Events already written to show first (default: 20; all with "
                              "--once).", show_default=False)] = None,
    metric: Annotated[str | None, typer.Option("--metric", "-m", help="Only this metric.")]
    = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.")] = 0.5,
    duration: Annotated[float | None, typer.Option(
        help="Stop following after this many seconds (default: until Ctrl-C).")] = None,
) -> None:
    """Follow a live run's event files (every rank), printing events as they are written."""
    from otel_sparse.run import default_runs_dir

    target = run if run is not None else Path(default_runs_dir())
    try:
        if not target.exists():
            raise RunNotFoundError(f"no such file or directory: {target}")
        runs = find_runs(target)
        chosen = latest_run(target) if len(runs) > 1 else runs[0]
    except AnalysisError as exc:
        _fail(str(exc))
    if run is None or len(runs) > 1:
        _console(stderr=True).print(f"following {escape(chosen.path)}", soft_wrap=True)
    follower = EventFollower(chosen.path, last=lines if lines is not None else
                             (None if once else 20))
    wanted = metric

    def emit() -> int:
        shown = 0
        for data_file, record in follower.poll():
            name = record.get("metric")
            if wanted is not None and name != wanted and not wanted.endswith(f".{name}"):
                continue
            typer.echo(_format_event(data_file, record))
            shown += 1
        return shown

    if once:
        from otel_sparse.analysis import resolve_metric

        seen = _known_metrics(chosen.path)
        if not seen:
            _fail(f"no events in {chosen.path}: the run is empty (or has not written its "
                  "events yet)")
        if metric is not None:
            with _analysis_errors():
                wanted = resolve_metric(metric, seen)
        emit()
        return
    interval = max(interval, 0.05)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        emit()
        while deadline is None or time.monotonic() < deadline:
            time.sleep(interval if deadline is None else
                       max(0.0, min(interval, deadline - time.monotonic())))
            emit()
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _known_metrics(folder: str) -> set[str]:
    from otel_sparse.analysis import EVENT_FILE_RE, BadLines, _data_files, iter_json_lines

    seen: set[str] = set()
    bad = BadLines()
    for data_file in _data_files(folder, EVENT_FILE_RE):
        for record in iter_json_lines(data_file.path, bad):
            metric = record.get("metric")
            if isinstance(metric, str):
                seen.add(metric)
    return seen


# -- replay -------------------------------------------------------------------------------


class Protocol(str, enum.Enum):
    """OTLP transport for ``replay``."""

    grpc = "grpc"
    http = "http/protobuf"


_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}


class SendError(Exception):
    """The collector did not take a request (message fit for users)."""


def resolve_endpoint(endpoint: str | None, protocol: str, environ: dict[str, str] | None = None
                     ) -> str:
    """Where ``replay`` sends: the argument, else OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT, else
    localhost. For HTTP the result is the full URL, ``/v1/metrics`` included."""
    env = os.environ if environ is None else environ
    per_signal = False
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "").strip() or None
        per_signal = endpoint is not None
    if endpoint is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or None
    if endpoint is None:
        endpoint = _DEFAULT_ENDPOINTS[protocol]
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    if protocol == "http/protobuf" and not per_signal:
        parsed = urllib.parse.urlparse(endpoint)
        if not parsed.path.rstrip("/").endswith("/v1/metrics"):
            endpoint = endpoint.rstrip("/") + "/v1/metrics"
    return endpoint


def parse_headers(raw: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings (comma-separated lists too) as a dict; values URL-decoded."""
    headers: dict[str, str] = {}
    for item in raw:
        for pair in item.split(","):
            if not pair.strip():
                continue
            if "=" not in pair:
                raise ValueError("every header must be key=value")  # never echo: tokens
            key, value = pair.split("=", 1)
            headers[key.strip().lower()] = urllib.parse.unquote(value.strip())
    return headers


def _env_headers() -> list[str]:
    for name in ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"):
        value = os.environ.get(name, "").strip()
        if value:
            return [value]
    return []


class HttpSender:
    """POSTs protobuf requests to an OTLP/HTTP endpoint."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        self.url = url
        self.headers = {"Content-Type": "application/x-protobuf", **headers}
        self.timeout_s = timeout_s

    def send(self, request: ExportMetricsServiceRequest) -> int:
        """Send one request; returns the data points the collector rejected."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceResponse,
        )

        body = request.SerializeToString()
        http_request = urllib.request.Request(self.url, data=body, headers=self.headers,
                                              method="POST")
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                payload = response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace").strip()
            raise SendError(f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
                            ) from None
        except urllib.error.URLError as exc:
            raise SendError(f"cannot connect: {exc.reason}") from None
        except (OSError, TimeoutError) as exc:
            raise SendError(f"cannot connect: {exc}") from None
        if payload and "protobuf" in content_type:
            answer = ExportMetricsServiceResponse()
            try:
                answer.ParseFromString(payload)
            except Exception:  # a proxy's odd body: the status code already said OK
                return 0
            return int(answer.partial_success.rejected_data_points)
        return 0

    def close(self) -> None:
        """Nothing to release."""


class GrpcSender:
    """Calls MetricsService/Export on an OTLP/gRPC endpoint."""

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float) -> None:
        import grpc  # type: ignore[import-untyped, unused-ignore]
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
            MetricsServiceStub,
        )

        parsed = urllib.parse.urlparse(url)
        if not parsed.hostname:
            raise SendError(f"cannot read host and port from {mask_url(url)!r}")
        target = f"{parsed.hostname}:{parsed.port or 4317}"
        if parsed.scheme == "https":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self.channel = grpc.insecure_channel(target)
        self.stub = MetricsServiceStub(self.channel)  # type: ignore[no-untyped-call, unused-ignore]
        self.metadata = list(headers.items())
        self.timeout_s = timeout_s
        self._grpc = grpc

    def send(self, request: ExportMetricsServiceRequest) -> int:
        """Send one request; returns the data points the collector rejected."""
        try:
            answer = self.stub.Export(request, timeout=self.timeout_s,
                                      metadata=self.metadata or None)
        except self._grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "error"
            raise SendError(f"gRPC {name}: {details}") from None
        return int(answer.partial_success.rejected_data_points)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()


@app.command()
def replay(
    run: Annotated[Path, typer.Argument(
        help="A run folder (its otlp/metrics*.jsonl), a folder of runs, or an OTLP/JSON file.",
        show_default=False)],
    endpoint: Annotated[str | None, typer.Option(
        help="Collector URL, e.g. http://localhost:4318. Default: OTEL_EXPORTER_OTLP_"
             "[METRICS_]ENDPOINT, else localhost:4318 (http) / :4317 (grpc).",
        show_default=False)] = None,
    protocol: Annotated[Protocol | None, typer.Option(
        help="Default: OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL, else http/protobuf.",
        show_default=False)] = None,
    header: Annotated[list[str] | None, typer.Option(
        "--header", "-H", help="Extra header key=value (repeatable). Default: "
                               "OTEL_EXPORTER_OTLP_[METRICS_]HEADERS.", show_default=False)]
    = None,
    timeout: Annotated[float, typer.Option(help="Seconds per request.")] = 10.0,
) -> None:
    """Send a run's OTLP/JSON lines (exporter otlp_file) to a collector over OTLP."""
    from otel_sparse.analysis import count_data_points, otlp_files, read_otlp_requests
    from otel_sparse.exporters.otlp import OtlpConfigError, resolve_protocol

    try:
        files = otlp_files(str(run))
    except AnalysisError as exc:
        _fail(str(exc))
    if not files:
        _fail(f"no OTLP/JSON file in {run}: log with exporters jsonl,otlp_file "
              "(OTEL_SPARSE_EXPORTERS=jsonl,otlp_file) to write otlp/metrics.jsonl")
    requests: list[ExportMetricsServiceRequest] = []
    with _analysis_errors():
        for path in files:
            requests.extend(read_otlp_requests(path))
    if not requests:
        _fail(f"no OTLP requests in {', '.join(files)}: the file is empty")
    try:
        resolved = resolve_protocol(None if protocol is None else protocol.value)
        headers = parse_headers(header if header else _env_headers())
    except (OtlpConfigError, ValueError) as exc:
        _fail(str(exc))
    url = resolve_endpoint(endpoint, resolved)
    sender: HttpSender | GrpcSender
    try:
        sender = GrpcSender(url, headers, timeout) if resolved == "grpc" \
            else HttpSender(url, headers, timeout)
    except SendError as exc:
        _fail(mask_text(str(exc)))
    shown = mask_url(url)  # printed: never the URL's credentials
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    err = _console(stderr=True)
    sent_points = 0
    rejected = 0
    failure: str | None = None
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), console=err,
                      transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"replaying to {shown}", total=len(requests))
            for i, request in enumerate(requests, 1):
                try:
                    rejected += sender.send(request)
                except SendError as exc:
                    failure = (f"collector at {shown} ({resolved}) refused request "
                               f"{i}/{len(requests)}: {mask_text(str(exc))}")
                    break
                sent_points += count_data_points(request)
                progress.update(task, completed=i)
    finally:
        sender.close()
    if failure is not None:
        _fail(failure, EXIT_FAILED)
    _console().print(f"replayed {len(requests)} request(s), {sent_points} data points, from "
                     f"{len(files)} file(s) to {escape(shown)} ({resolved})", soft_wrap=True)
    if rejected:
        _fail(f"the collector rejected {rejected} data point(s) (partial success)", EXIT_FAILED)


# -- doctor -------------------------------------------------------------------------------

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

    out = _console()
    problems: list[str] = []
    captured = _Captured()
    lib_logger = logging.getLogger("otel_sparse")
    lib_logger.addHandler(captured)
    try:
        settings = config.Settings.from_env()
        identity = ProcessIdentity.current()
    finally:
        lib_logger.removeHandler(captured)
    problems.extend(mask_text(m) for m in captured.messages)

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
        problems.append(mask_text(str(exc)))
        protocol = "http/protobuf"
    try:
        validate_otlp_environment()
    except OtlpConfigError as exc:
        problems.append(mask_text(str(exc)))
    url = resolve_endpoint(None, protocol)
    reachable, detail = tcp_reachable(url, timeout)
    url, detail = mask_url(url), mask_text(detail)  # printed: never the URL's credentials
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


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"otel-sparse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version and exit.")]
    = False,
) -> None:
    """Run, inspect and replay otel_sparse runs."""


if __name__ == "__main__":
    main()
