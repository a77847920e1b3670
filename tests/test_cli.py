"""Tests of the ``otel-sparse`` commands on runs logged through the facade with known values."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import otel_sparse
from otel_sparse import MicroMetricLogger
from otel_sparse.analysis import count_data_points, parse_otlp_line
from otel_sparse.cli import app, mask_env_value, parse_headers, resolve_endpoint
from tests._helpers import cli_runner

DENSITY = "research_attention_density"
STEPS, LAYERS, HEADS = 4, 3, 4


def density_value(step: int, layer: int, head: int) -> float:
    """The known density of one (step, layer, head): a multiple of 1/8."""
    return ((step + layer + 2 * head) % 8) / 8


def cell_values(layer: int, head: int | None = None) -> np.ndarray:
    """Every known value of a layer (all heads) or of one (layer, head)."""
    heads = range(HEADS) if head is None else [head]
    return np.array([density_value(s, layer, h) for s in range(STEPS) for h in heads])


@pytest.fixture
def clean(fresh_logger: type[MicroMetricLogger], monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh singleton (conftest's reset, closed afterwards); wide, untruncated tables."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def known_run(tmp_path: Path, clean: None, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run of known [heads] densities per layer, with metrics.jsonl and otlp/metrics.jsonl."""
    monkeypatch.setenv("OTEL_SPARSE_RUN_ID", "known-cli")
    MicroMetricLogger.register_metric(DENSITY, float)
    MicroMetricLogger.register_metric("note", str)
    MicroMetricLogger.register_metric("loss", float)
    run_dir = tmp_path / "run"
    logger = otel_sparse.start_run(str(run_dir), params={"masker": "known"},
                                   exporters=["jsonl", "otlp_file"])
    for step in range(STEPS):
        for layer in range(LAYERS):
            values = np.array([density_value(step, layer, h) for h in range(HEADS)])
            logger.log(DENSITY, values, metadata={"layer_idx": layer})
    logger.log("note", "a string event")
    logger.log("loss", 0.5)
    otel_sparse.end_run(logger)
    return run_dir


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run one command in-process."""
    return cli_runner().invoke(app, list(args), env=env)


def titled_tables(output: str) -> dict[str, list[list[str]]]:
    """Title -> the cells of each row of the tables (title, header, rule, rows) in ``output``."""
    lines = output.splitlines()
    tables: dict[str, list[list[str]]] = {}
    for i, line in enumerate(lines):
        if not line.startswith("─") or i < 2:
            continue
        rows = []
        for j in range(i + 1, len(lines)):
            cells = lines[j].split()
            if not cells or (j + 2 < len(lines) and lines[j + 2].startswith("─")):
                break  # a blank line, or the next table's title (title, header, rule)
            rows.append(cells)
        tables[lines[i - 2].strip()] = rows
    return tables


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestSummary:
    """``otel-sparse summary``."""

    def test_per_layer_numbers_equal_known_values(self, known_run: Path) -> None:
        """count, mean, min, max, p50, p95 per layer match the logged values; the table shows
        them under the metric's name."""
        result = invoke("summary", str(known_run))
        assert result.exit_code == 0, result.output
        tables = titled_tables(result.stdout)
        assert tables["loss"] == [["-", "1", *["0.5"] * 5]]
        rows = tables[DENSITY]
        assert [int(r[0]) for r in rows] == list(range(LAYERS))
        for cells in rows:
            values = cell_values(int(cells[0]))
            count, mean, lo, hi, p50, p95 = cells[1:7]
            assert int(count) == values.size
            assert float(mean) == pytest.approx(values.mean(), rel=1e-5)
            assert float(lo) == values.min() and float(hi) == values.max()
            assert float(p50) == pytest.approx(np.percentile(values, 50), rel=1e-5)
            assert float(p95) == pytest.approx(np.percentile(values, 95), rel=1e-5)

    def test_by_head_numbers_equal_known_values(self, known_run: Path) -> None:
        """One row per (layer, head), same statistics."""
        result = invoke("summary", str(known_run), "--by-head", "--metric", DENSITY)
        assert result.exit_code == 0, result.output
        rows = titled_tables(result.stdout)[DENSITY]
        assert len(rows) == LAYERS * HEADS
        for cells in rows:
            values = cell_values(int(cells[0]), int(cells[1]))
            assert int(cells[2]) == values.size
            assert float(cells[3]) == pytest.approx(values.mean(), rel=1e-5)
            assert float(cells[7]) == pytest.approx(np.percentile(values, 95), rel=1e-5)

    def test_header_shows_the_manifest(self, known_run: Path) -> None:
        """Run id, params, host, ranks, start and end come first."""
        out = invoke("summary", str(known_run)).stdout
        for text in ("known-cli", "masker=known", "start", "end", "host", "ranks",
                     f"pid {os.getpid()}"):
            assert text in out

    def test_csv_is_exact(self, known_run: Path) -> None:
        """--format csv prints full-precision statistics."""
        result = invoke("summary", str(known_run), "--by-head", "--format", "csv")
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(io.StringIO(result.stdout))
        assert list(frame.columns) == ["metric", "layer", "head", "count", "mean", "min", "max",
                                       "p50", "p95"]
        density = frame[frame["metric"] == DENSITY]
        assert len(density) == LAYERS * HEADS
        for row in density.to_dict("records"):
            assert row["mean"] == cell_values(int(row["layer"]), int(row["head"])).mean()

    def test_json_lines(self, known_run: Path) -> None:
        """--format json prints one object per row; a missing layer is null."""
        result = invoke("summary", str(known_run), "--format", "json")
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert records[0] == {"metric": "loss", "layer": None, "count": 1, "mean": 0.5,
                              "min": 0.5, "max": 0.5, "p50": 0.5, "p95": 0.5}
        density = [r for r in records if r["metric"] == DENSITY]
        assert [r["layer"] for r in density] == list(range(LAYERS))
        assert density[1]["mean"] == cell_values(1).mean()

    def test_parent_folder_of_runs(self, known_run: Path) -> None:
        """A folder holding one run reads that run."""
        result = invoke("summary", str(known_run.parent))
        assert result.exit_code == 0, result.output
        assert len(titled_tables(result.stdout)[DENSITY]) == LAYERS


class TestErrors:
    """Wrong path, empty run, unknown metric: exit 2, one line on stderr, no traceback."""

    def check(self, result: Any, *needles: str) -> None:
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        for needle in needles:
            assert needle in lines[0]
        assert "Traceback" not in result.output

    def test_wrong_path(self, tmp_path: Path) -> None:
        """Every run command names the missing path."""
        missing = str(tmp_path / "nope")
        self.check(invoke("summary", missing), "no such file", missing)
        self.check(invoke("heatmap", missing, "-m", DENSITY, "-o", str(tmp_path / "x.png")),
                   "no such file")
        self.check(invoke("tail", missing, "--once"), "no such file")
        self.check(invoke("replay", missing, "--endpoint", "http://127.0.0.1:1"),
                   "no such file")

    def test_empty_run(self, tmp_path: Path) -> None:
        """A run folder without events, or with only a manifest."""
        (tmp_path / "empty").mkdir()
        self.check(invoke("summary", str(tmp_path / "empty")), "no events")
        (tmp_path / "manifest-only").mkdir()
        (tmp_path / "manifest-only" / "run.json").write_text('{"run_id": "x"}')
        self.check(invoke("summary", str(tmp_path / "manifest-only")), "no events")
        self.check(invoke("heatmap", str(tmp_path / "empty"), "-m", DENSITY, "-o",
                          str(tmp_path / "x.png")), "no events")
        self.check(invoke("tail", str(tmp_path / "empty"), "--once"), "no events")
        self.check(invoke("replay", str(tmp_path / "empty")), "no OTLP/JSON file")

    def test_unknown_metric(self, known_run: Path, tmp_path: Path) -> None:
        """The message lists the metrics the run has."""
        self.check(invoke("summary", str(known_run), "--metric", "nope"), "unknown metric",
                   DENSITY)
        self.check(invoke("heatmap", str(known_run), "-m", "nope", "-o",
                          str(tmp_path / "x.png")), "unknown metric")
        self.check(invoke("tail", str(known_run), "--once", "-m", "nope"), "unknown metric")

    def test_metric_without_layers(self, known_run: Path, tmp_path: Path) -> None:
        """A heatmap needs a layer/head breakdown; a string metric has no numbers at all."""
        self.check(invoke("heatmap", str(known_run), "-m", "loss", "-o",
                          str(tmp_path / "x.png")), "no layer/head breakdown")
        self.check(invoke("heatmap", str(known_run), "-m", "note", "-o",
                          str(tmp_path / "x.png")), "unknown metric")


class TestHeatmap:
    """``otel-sparse heatmap``."""

    def test_png_and_csv(self, known_run: Path, tmp_path: Path) -> None:
        """The PNG has the asked size and real data; the CSV holds the exact means."""
        import matplotlib.image

        png, csv = tmp_path / "out" / "density.png", tmp_path / "out" / "density.csv"
        result = invoke("heatmap", str(known_run), "--metric", DENSITY, "-o", str(png),
                        "--csv", str(csv), "--size", "6x4", "--dpi", "50")
        assert result.exit_code == 0, result.output
        image = matplotlib.image.imread(str(png))
        assert image.shape[:2] == (200, 300)
        # the plot area (left of the colour bar, below the title) holds several colours
        plot = image[40:170, 40:200, :3].reshape(-1, 3)
        assert len({tuple(px) for px in np.round(plot, 3)}) > 5
        frame = pd.read_csv(csv, index_col="layer")
        assert list(frame.index) == list(range(LAYERS))
        assert list(frame.columns) == [str(h) for h in range(HEADS)]
        for layer in range(LAYERS):
            for head in range(HEADS):
                assert frame.loc[layer, str(head)] == cell_values(layer, head).mean()

    def test_p95(self, known_run: Path, tmp_path: Path) -> None:
        """--stat p95 puts each cell's 95th percentile in the CSV."""
        csv = tmp_path / "p95.csv"
        result = invoke("heatmap", str(known_run), "-m", DENSITY, "-o", str(tmp_path / "p.png"),
                        "--stat", "p95", "--csv", str(csv))
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(csv, index_col="layer")
        assert frame.loc[1, "2"] == pytest.approx(np.percentile(cell_values(1, 2), 95))

    def test_title_and_labels(self, known_run: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
        """Axes are labelled head/layer, the title names metric and run, a colour bar exists."""
        from matplotlib.figure import Figure

        saved: list[Figure] = []
        original = Figure.savefig

        def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
            saved.append(self)
            original(self, *args, **kwargs)

        monkeypatch.setattr(Figure, "savefig", keep)
        result = invoke("heatmap", str(known_run), "-m", DENSITY, "-o", str(tmp_path / "t.png"))
        assert result.exit_code == 0, result.output
        (fig,) = saved
        main, colorbar = fig.axes
        assert main.get_xlabel() == "head" and main.get_ylabel() == "layer"
        title = fig.get_suptitle().replace("\n", " ")
        assert DENSITY in title and "known-cli" in title
        assert DENSITY in colorbar.get_ylabel()
        data = main.images[0].get_array()
        assert data is not None
        assert float(data[0, 0]) == cell_values(0, 0).mean()


class TestTail:
    """``otel-sparse tail``."""

    def test_once_prints_every_event(self, known_run: Path) -> None:
        """--once prints each event of the file, with its layer and per-head values."""
        result = invoke("tail", str(known_run), "--once")
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert len(lines) == STEPS * LAYERS + 2
        first = lines[0]
        assert DENSITY in first and "layer_idx=0" in first
        assert "[" + " ".join(f"{density_value(0, 0, h):.6g}" for h in range(HEADS)) + "]" \
            in first
        assert "a string event" in lines[-2]
        assert lines[-1].endswith("loss  0.5")

    def test_once_last_lines_and_metric(self, known_run: Path) -> None:
        """-n keeps the last events; --metric filters (the OTel name works too)."""
        result = invoke("tail", str(known_run), "--once", "-n", "2")
        assert len(result.stdout.strip().splitlines()) == 2
        result = invoke("tail", str(known_run), "--once", "-m", f"sparse_attention.{DENSITY}")
        assert len(result.stdout.strip().splitlines()) == STEPS * LAYERS

    def test_follow_for_a_while(self, known_run: Path) -> None:
        """Without --once it follows, here for a fixed duration, starting with the last 3."""
        result = invoke("tail", str(known_run), "-n", "3", "--duration", "0.3",
                        "--interval", "0.1")
        assert result.exit_code == 0, result.output
        assert len(result.stdout.strip().splitlines()) == 3

    def test_default_is_newest_run(self, known_run: Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
        """Without a path, the newest run under OTEL_SPARSE_RUN_DIR."""
        monkeypatch.setenv("OTEL_SPARSE_RUN_DIR", str(known_run.parent))
        result = invoke("tail", "--once")
        assert result.exit_code == 0, result.output
        assert len(result.stdout.strip().splitlines()) == STEPS * LAYERS + 2


def requests_from_file(run_dir: Path) -> list[Any]:
    """The OTLP requests of a run's otlp/metrics.jsonl."""
    lines = (run_dir / "otlp" / "metrics.jsonl").read_text().splitlines()
    return [parse_otlp_line(line) for line in lines]


class TestReplay:
    """``otel-sparse replay``: parsing, and sending to in-process HTTP and gRPC servers."""

    def test_parse_line_has_the_points_of_metrics_jsonl(self, known_run: Path) -> None:
        """The last OTLP/JSON line holds the same histogram points as metrics.jsonl's totals."""
        request = requests_from_file(known_run)[-1]
        points: dict[tuple[int, int], tuple[int, float]] = {}
        for rm in request.resource_metrics:
            attrs = {a.key: a.value for a in rm.resource.attributes}
            assert attrs["run.id"].string_value == "known-cli"
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != f"sparse_attention.{DENSITY}":
                        continue
                    assert metric.WhichOneof("data") == "histogram"
                    for dp in metric.histogram.data_points:
                        a = {kv.key: kv.value.int_value for kv in dp.attributes}
                        points[(a["layer"], a["head"])] = (dp.count, dp.sum)
        latest = {}
        for line in (known_run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row["metric"] == f"sparse_attention.{DENSITY}":
                latest[(row["layer"], row["head"])] = (row["count"], row["sum"])
        assert points == latest
        assert len(points) == LAYERS * HEADS
        assert points[(1, 2)] == (STEPS, cell_values(1, 2).sum())
        assert count_data_points(request) >= LAYERS * HEADS

    def test_http(self, known_run: Path) -> None:
        """Each line is POSTed as protobuf to /v1/metrics, with the extra headers."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
        )

        received: list[tuple[str, bytes, str | None]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, body, self.headers.get("x-team")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            result = invoke("replay", str(known_run), "--endpoint",
                            f"http://127.0.0.1:{server.server_address[1]}",
                            "--protocol", "http/protobuf", "-H", "x-team=sparse")
        finally:
            server.shutdown()
            server.server_close()
        assert result.exit_code == 0, result.output
        expected = requests_from_file(known_run)
        assert [path for path, _, _ in received] == ["/v1/metrics"] * len(expected)
        assert {team for _, _, team in received} == {"sparse"}
        for (_, body, _), want in zip(received, expected):  # same length: asserted above
            got = ExportMetricsServiceRequest()
            got.ParseFromString(body)
            assert got == want
        assert f"replayed {len(expected)} request(s)" in result.stdout

    def test_grpc(self, known_run: Path) -> None:
        """With --protocol grpc each request goes to MetricsService/Export."""
        import grpc  # type: ignore[import-untyped, unused-ignore]
        from opentelemetry.proto.collector.metrics.v1 import (
            metrics_service_pb2,
            metrics_service_pb2_grpc,
        )

        received: list[Any] = []

        class Service(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc, unused-ignore]
            def Export(self, request: Any, context: Any) -> Any:
                received.append(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call, unused-ignore]
            Service(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            result = invoke("replay", str(known_run), "--endpoint", f"http://127.0.0.1:{port}",
                            "--protocol", "grpc")
        finally:
            server.stop(grace=None)
        assert result.exit_code == 0, result.output
        assert received == requests_from_file(known_run)

    @pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
    def test_refused(self, known_run: Path, protocol: str) -> None:
        """A closed port exits 1 with one line naming the endpoint."""
        port = free_port()
        result = invoke("replay", str(known_run), "--endpoint", f"http://127.0.0.1:{port}",
                        "--protocol", protocol, "--timeout", "5")
        assert result.exit_code == 1, result.output
        assert f"127.0.0.1:{port}" in result.stderr and "refused" in result.stderr
        assert "Traceback" not in result.output

    def test_endpoint_and_headers(self) -> None:
        """Endpoints get /v1/metrics for HTTP (not the per-signal variable); headers decode."""
        assert resolve_endpoint("http://c:4318", "http/protobuf") == "http://c:4318/v1/metrics"
        assert resolve_endpoint("c:4317", "grpc") == "http://c:4317"
        assert resolve_endpoint(None, "http/protobuf", {
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:9/custom"}) == "http://c:9/custom"
        assert resolve_endpoint(None, "grpc", {}) == "http://localhost:4317"
        assert parse_headers(["a=1,b=x%20y", "C=3"]) == {"a": "1", "b": "x y", "c": "3"}
        with pytest.raises(ValueError, match="key=value"):
            parse_headers(["token"])


class TestDoctor:
    """``otel-sparse doctor``."""

    def test_runs_and_masks_headers(self, clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """Prints exporters, run dir, torch, endpoint state; never a header value."""
        port = free_port()
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t,x-a=b")
        result = invoke("doctor", "--timeout", "0.5")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "s3cr3t" not in out and "authorization=***" in out
        for text in ("exporters", "jsonl", "run dir", "torch", "unreachable",
                     f"127.0.0.1:{port}", "no problems found"):
            assert text in out

    def test_reachable_endpoint(self, clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """A listening port is reported reachable."""
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            port = listener.getsockname()[1]
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
            result = invoke("doctor")
        assert result.exit_code == 0, result.output
        assert "reachable" in result.stdout and "unreachable" not in result.stdout

    def test_problems_exit_1(self, clean: None, monkeypatch: pytest.MonkeyPatch) -> None:
        """otlp enabled but unreachable, or a bad variable, is a problem (exit 1)."""
        monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl,otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("OTEL_SPARSE_EXPORT_INTERVAL", "soon")
        result = invoke("doctor", "--timeout", "0.5")
        assert result.exit_code == 1, result.output
        assert "problems" in result.stdout
        assert "OTEL_SPARSE_EXPORT_INTERVAL" in result.stdout

    def test_diagnose_returns_the_findings(self, clean: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """The gathering half: settings rows, masked environment, problems, endpoint state."""
        from otel_sparse.cli.doctor import diagnose

        port = free_port()
        monkeypatch.setenv("OTEL_SPARSE_EXPORTERS", "jsonl,otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20s3cr3t")
        found = diagnose(timeout=0.5)
        settings = dict(found.settings)
        assert settings["exporters"].startswith("jsonl, otlp  (from OTEL_SPARSE_EXPORTERS)")
        assert settings["otlp endpoint"].startswith(f"http://127.0.0.1:{port} (http/protobuf)")
        assert found.otlp_enabled and not found.otlp_reachable
        assert ("OTEL_EXPORTER_OTLP_HEADERS", "authorization=***") in found.environment
        assert [p for p in found.problems if "unreachable" in p and str(port) in p]

    def test_mask_env_value(self) -> None:
        """Header values and secret-looking variables are masked."""
        assert mask_env_value("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "a=1,b=2") == "a=***,b=***"
        assert mask_env_value("MY_API_KEY", "x") == "***"
        assert mask_env_value("OTEL_SERVICE_NAME", "svc") == "svc"


def test_imports_stay_light() -> None:
    """``import otel_sparse`` (and the CLI module) never import torch, pandas or matplotlib."""
    code = ("import sys, otel_sparse, otel_sparse.cli, otel_sparse.analysis, otel_sparse.demo\n"
            "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_version_and_help() -> None:
    """--version prints the version; no arguments shows the commands."""
    assert invoke("--version").stdout.strip() == f"otel-sparse {otel_sparse.__version__}"
    result = invoke()
    for command in ("demo", "summary", "compare", "heatmap", "plot", "tail", "replay", "doctor"):
        assert command in result.output



# -- sweeps: --where/--by, compare, plot, several runs, 80 columns, flags ------------------------

from tests import _sweep  # noqa: E402


@pytest.fixture
def sweep(tmp_path: Path, clean: None) -> list[Path]:
    """Three runs, k = 8, 16, 32, with step and stage contexts (tests/_sweep.py)."""
    return _sweep.write_sweep(tmp_path / "sweep")


def narrow(*args: str) -> Any:
    """Run one command as in an 80-column terminal."""
    return invoke(*args, env={"COLUMNS": "80"})


def assert_fits_80(output: str) -> None:
    """Every line within 80 columns, nothing cut short with an ellipsis."""
    for line in output.splitlines():
        assert len(line) <= 80, line
        assert "…" not in line and "..." not in line, line


class TestWhereBy:
    """--where and --by on summary, heatmap and tail."""

    def test_summary_by_stage_exact_and_readable_at_80(self, sweep: list[Path]) -> None:
        result = narrow("summary", str(sweep[0]), "--by", "stage", "--by-head",
                        "-m", _sweep.ERROR)
        assert result.exit_code == 0, result.output
        assert_fits_80(result.stdout)
        rows = titled_tables(result.stdout)[_sweep.ERROR]
        assert len(rows) == 2 * _sweep.LAYERS * _sweep.HEADS
        for stage, layer, head, count, mean, *_ in rows:
            values = _sweep.values(_sweep.error, 8, stages=(stage,), layer=int(layer),
                                   head=int(head))
            assert int(count) == values.size
            assert float(mean) == pytest.approx(values.mean(), rel=1e-3)

    def test_summary_of_runs_titled_by_parameters(self, sweep: list[Path]) -> None:
        """Several runs: one table per run, named k=8, k=16, k=32 in command-line order."""
        result = narrow("summary", *map(str, sweep), "-m", _sweep.DENSITY)
        assert result.exit_code == 0, result.output
        assert_fits_80(result.stdout)
        tables = titled_tables(result.stdout)
        assert list(tables) == [f"k={k}: {_sweep.DENSITY}" for k in (8, 16, 32)]
        layer, _count, mean = tables[f"k=16: {_sweep.DENSITY}"][2][:3]
        assert float(mean) == pytest.approx(
            _sweep.values(_sweep.density, 16, layer=int(layer)).mean(), rel=1e-5)

    def test_summary_where_decode_only(self, sweep: list[Path]) -> None:
        result = invoke("summary", str(sweep[0]), "--where", "stage=decode", "--format", "csv",
                        "-m", _sweep.ERROR)
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(io.StringIO(result.stdout))
        for row in frame.to_dict("records"):
            values = _sweep.values(_sweep.error, 8, stages=("decode",), layer=row["layer"])
            assert row["mean"] == values.mean() and row["count"] == values.size

    def test_unknown_key_is_a_usage_error(self, sweep: list[Path]) -> None:
        result = invoke("summary", str(sweep[0]), "--where", "phase=decode")
        assert result.exit_code == 2
        assert "no such key" in result.stderr and "stage" in result.stderr
        result = invoke("summary", str(sweep[0]), "--where", "stage")
        assert result.exit_code == 2 and "KEY=VALUE" in result.stderr

    def test_tail_shows_step_and_stage_and_follows_one_metric(self, sweep: list[Path]) -> None:
        result = invoke("tail", str(sweep[0]), "--once", "-m", _sweep.ERROR,
                        "--where", "stage=decode", "--where", "step=3")
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert len(lines) == _sweep.LAYERS
        for layer, line in enumerate(lines):
            assert f"{_sweep.ERROR}  step=3  stage=decode  layer_idx={layer}" in line
        result = invoke("tail", str(sweep[0]), "--once", "-n", "2", "-m", _sweep.DENSITY)
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 2 and all(_sweep.DENSITY in line for line in lines)

    def test_tail_by_stage_keeps_a_running_mean_per_stage(self, sweep: list[Path]) -> None:
        """--by on a live stream: each line names its group; the last line of each group
        carries the mean of every value of that group so far, here the whole run's."""
        result = invoke("tail", str(sweep[0]), "--once", "-m", _sweep.ERROR, "--by", "stage")
        assert result.exit_code == 0, result.output
        last: dict[str, str] = {}
        for line in result.stdout.strip().splitlines():
            stage = re.match(r"\[stage=(\w+)\]", line)
            assert stage is not None, line
            last[stage.group(1)] = line
        assert set(last) == set(_sweep.STAGES)
        for stage, line in last.items():
            found = re.search(rf"mean\(stage={stage}\)=(\S+) of (\d+)$", line)
            assert found is not None, line
            values = _sweep.values(_sweep.error, 8, stages=(stage,))
            assert float(found.group(1)) == pytest.approx(values.mean(), rel=1e-5)
            assert int(found.group(2)) == values.size
        result = invoke("tail", str(sweep[0]), "--once", "-n", "3", "--by", "phase")
        assert result.exit_code == 0, result.output
        assert "--by phase: no event shown so far has this key" in result.stderr

    def test_heatmap_where(self, sweep: list[Path], tmp_path: Path) -> None:
        csv = tmp_path / "decode.csv"
        result = invoke("heatmap", str(sweep[0]), "-m", _sweep.ERROR, "-o",
                        str(tmp_path / "d.png"), "--where", "stage=decode", "--csv", str(csv))
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(csv, index_col="layer")
        assert frame.loc[2, "3"] == _sweep.values(_sweep.error, 8, stages=("decode",), layer=2,
                                                  head=3).mean()


class TestCompare:
    """``otel-sparse compare``."""

    def test_csv_numbers(self, sweep: list[Path]) -> None:
        result = invoke("compare", *map(str, sweep), "--format", "csv", "-m", _sweep.DENSITY,
                        "--by-head")
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(io.StringIO(result.stdout))
        assert list(frame.columns) == ["metric", "layer", "head", "label", "count", "mean",
                                       "p50", "p95", "diff_mean", "diff_p50", "diff_p95"]
        row = frame[(frame["label"] == "k=32") & (frame["layer"] == 1) & (frame["head"] == 0)]
        values = _sweep.values(_sweep.density, 32, layer=1, head=0)
        base = _sweep.values(_sweep.density, 8, layer=1, head=0)
        assert row["mean"].item() == pytest.approx(values.mean())
        assert row["p95"].item() == pytest.approx(np.percentile(values, 95))
        assert row["diff_mean"].item() == pytest.approx(values.mean() - base.mean())

    def test_json_by_param(self, sweep: list[Path]) -> None:
        result = invoke("compare", str(sweep[0].parent), "--by", "k", "--format", "json",
                        "-m", _sweep.ERROR, "--where", "stage=prefill")
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in result.stdout.splitlines()]
        assert [r["label"] for r in records[:3]] == ["k=8", "k=16", "k=32"]
        first = records[0]
        assert first["layer"] == 0 and first["diff_mean"] == 0.0
        assert first["mean"] == pytest.approx(
            _sweep.values(_sweep.error, 8, stages=("prefill",), layer=0).mean())

    def test_table_at_80_columns_wraps_runs(self, sweep: list[Path], tmp_path: Path) -> None:
        """Labels in column headers, every number whole; runs that do not fit continue below."""
        more = [_sweep.write_run(tmp_path / f"more{k}", k) for k in (64, 128)]
        result = narrow("compare", *map(str, [*sweep, *more]), "--by", "k", "-m", _sweep.DENSITY)
        assert result.exit_code == 0, result.output
        assert_fits_80(result.stdout)
        out = result.stdout
        assert f"{_sweep.DENSITY} (continued)" in out
        for k in (8, 16, 32, 64, 128):
            assert f"k={k}" in out
        assert "differences (Δ) to k=8" in out

    def test_long_labels_become_letters_with_a_legend(self, tmp_path: Path, clean: None
                                                      ) -> None:
        runs = [_sweep.write_run(tmp_path / name, 8, masker=name)
                for name in ("topk_with_sink_and_window", "hashattention_topk_sink")]
        result = narrow("compare", *map(str, runs))
        assert result.exit_code == 0, result.output
        assert_fits_80(result.stdout)
        assert "A = masker=topk_with_sink_and_window" in result.stdout
        assert "B = masker=hashattention_topk_sink" in result.stdout


class TestSeveralRuns:
    """heatmap and plot over several runs."""

    def test_heatmap_one_panel_per_run(self, sweep: list[Path], tmp_path: Path) -> None:
        csv = tmp_path / "panels.csv"
        result = invoke("heatmap", *map(str, sweep), "-m", _sweep.DENSITY, "-o",
                        str(tmp_path / "p.png"), "--csv", str(csv))
        assert result.exit_code == 0, result.output
        assert "3 panels" in result.stdout
        frame = pd.read_csv(csv, index_col=["run", "layer"])
        assert frame.loc[("k=16", 2), "1"] == _sweep.values(_sweep.density, 16, layer=2,
                                                            head=1).mean()

    def test_heatmap_by_stage(self, sweep: list[Path], tmp_path: Path) -> None:
        """--by stage: a panel per stage (per run), decode apart from prefill."""
        csv = tmp_path / "stages.csv"
        result = invoke("heatmap", str(sweep[0]), "-m", _sweep.ERROR, "--by", "stage", "-o",
                        str(tmp_path / "s.png"), "--csv", str(csv))
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(csv, index_col=["run", "layer"])
        assert sorted(set(frame.index.get_level_values("run"))) == ["stage=decode",
                                                                    "stage=prefill"]
        for stage in _sweep.STAGES:
            assert frame.loc[(f"stage={stage}", 1), "2"] == _sweep.values(
                _sweep.error, 8, stages=(stage,), layer=1, head=2).mean()
        result = invoke("heatmap", "-m", _sweep.ERROR, "--by", "stage",
                        "--diff", str(sweep[0]), str(sweep[1]), "-o", str(tmp_path / "x.png"))
        assert result.exit_code == 2 and "leave out --by" in result.stderr

    def test_heatmap_diff(self, sweep: list[Path], tmp_path: Path) -> None:
        csv = tmp_path / "diff.csv"
        result = invoke("heatmap", "--diff", str(sweep[2]), str(sweep[0]), "-m", _sweep.ERROR,
                        "-o", str(tmp_path / "d.png"), "--csv", str(csv))
        assert result.exit_code == 0, result.output
        frame = pd.read_csv(csv, index_col="layer")
        expected = (_sweep.values(_sweep.error, 32, layer=0, head=3).mean()
                    - _sweep.values(_sweep.error, 8, layer=0, head=3).mean())
        assert frame.loc[0, "3"] == pytest.approx(expected)

    def test_plot_png_and_csv(self, sweep: list[Path], tmp_path: Path) -> None:
        import matplotlib.image

        png, csv = tmp_path / "k.png", tmp_path / "k.csv"
        result = invoke("plot", *map(str, sweep), "-m", _sweep.ERROR, "--by", "k", "-o",
                        str(png), "--csv", str(csv), "--where", "stage=decode")
        assert result.exit_code == 0, result.output
        assert matplotlib.image.imread(str(png)).shape[:2] == (480, 800)
        frame = pd.read_csv(csv)
        assert sorted(set(frame["line"])) == ["k=16", "k=32", "k=8"]
        row = frame[(frame["line"] == "k=16") & (frame["x"] == 1)]
        assert row["mean"].item() == _sweep.values(_sweep.error, 16, stages=("decode",),
                                                   step=1).mean()


class TestFlags:
    """Boolean flags take no value."""

    def test_flag_value_is_named_as_the_mistake(self, known_run: Path) -> None:
        result = invoke("summary", str(known_run), "--by-head", "true")
        assert result.exit_code == 2
        assert "flags take no value" in result.stderr and "--by-head" in result.stderr
        assert invoke("summary", str(known_run), "--by-head").exit_code == 0

    def test_help_shows_no_value_for_flags(self) -> None:
        """No flag is shown taking a value; bracketed variable names survive (no markup)."""
        for command in ("summary", "compare"):
            result = invoke(command, "--help", env={"COLUMNS": "120"})
            line = next(li for li in result.stdout.splitlines() if "--by-head" in li)
            assert "<bool>" not in line and "BOOLEAN" not in line, line
        for args in (["--help"], ["tail", "--help"], ["demo", "--help"]):
            out = invoke(*args, env={"COLUMNS": "120"}).stdout
            assert "<bool>" not in out and "BOOLEAN" not in out, out
        out = invoke("replay", "--help", env={"COLUMNS": "200"}).stdout
        assert "OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT" in out


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    """Fail loudly if a test leaves a non-daemon thread behind (a server not shut down)."""
    before = {t.ident for t in threading.enumerate()}
    yield
    stray = [t for t in threading.enumerate()
             if t.ident not in before and t.is_alive() and not t.daemon]
    assert not stray, stray
