"""Helpers for integration tests: free ports, readiness waits, managed subprocesses, PromQL.

Everything here talks to loopback only. Waits poll with a deadline and, when given the
process they wait for, fail at once (with the tail of its log) if it exits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

LOOPBACK = "127.0.0.1"

Sample = tuple[dict[str, str], float]


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on `host` right now (the kernel picks it)."""
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """Return `n` distinct free TCP ports (all sockets are held until every port is picked).

    Args:
        n: how many ports.
        host: the address to bind while picking.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ProcessExited(RuntimeError):
    """A managed process exited while a test was waiting for it."""


def _check_alive(proc: ManagedProcess | None, waiting_for: str) -> None:
    if proc is not None and not proc.running:
        raise ProcessExited(
            f"{proc.name} exited with code {proc.returncode} while waiting for {waiting_for}; "
            f"log {proc.log_path}:\n{proc.log_tail()}"
        )


def wait_for_port(
    port: int,
    host: str = LOOPBACK,
    timeout: float = 30.0,
    proc: ManagedProcess | None = None,
) -> None:
    """Wait until a TCP connect to (host, port) succeeds.

    Args:
        port: the port.
        host: the address.
        timeout: seconds before TimeoutError.
        proc: the process expected to listen; its exit ends the wait with ProcessExited.
    """
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(proc, f"{host}:{port}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1.0):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.1)


def wait_http_ok(
    url: str,
    timeout: float = 30.0,
    proc: ManagedProcess | None = None,
) -> requests.Response:
    """Poll `url` with GET until it answers 200; return that response.

    Args:
        url: the URL.
        timeout: seconds before TimeoutError.
        proc: the process serving it; its exit ends the wait with ProcessExited.
    """
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while True:
        _check_alive(proc, url)
        try:
            resp = requests.get(url, timeout=2.0)
            if resp.status_code == 200:
                return resp
            last = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
        except requests.RequestException as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not OK after {timeout:.0f} s; last: {last}")
        time.sleep(0.2)


class ManagedProcess:
    """A subprocess whose stdout and stderr go to a log file, stopped on exit.

    Example::

        with ManagedProcess([binary, "--config", cfg], tmp_path / "otelcol.log") as proc:
            wait_for_port(4317, proc=proc)
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike[str]],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        """Args:
        args: the command line.
        log_path: file that receives stdout and stderr (appended, so restarts keep history).
        env: the full environment (default: this process's).
        cwd: working directory.
        name: used in messages (default: the program's file name).
        """
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.name = name or Path(self.args[0]).name
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        """Start the process (again, if it was stopped)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start: {' '.join(self.args)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
            )
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL; return the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        return proc.returncode

    @property
    def running(self) -> bool:
        """Whether the process was started and has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The process id, or None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running."""
        return self._proc.poll() if self._proc is not None else None

    def log_text(self) -> str:
        """The whole log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the log."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> ManagedProcess:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _sample_value(raw: Any) -> float:
    """A float sample's value; a native histogram sample (``[t, {count, sum, buckets}]``)
    stands for its count."""
    value = raw[1]
    return float(value["count"]) if isinstance(value, dict) else float(value)


def query(base_url: str, promql: str, at: float | None = None) -> list[Sample]:
    """Run an instant PromQL query; return (labels, value) for each series of the vector.

    A native-histogram sample's value is its count.

    Args:
        base_url: Prometheus, e.g. "http://127.0.0.1:9090".
        promql: the expression; must evaluate to an instant vector or a scalar.
        at: evaluation time (unix seconds); default now.

    Raises RuntimeError on an HTTP or PromQL error.
    """
    params: dict[str, str] = {"query": promql}
    if at is not None:
        params["time"] = repr(at)
    resp = requests.get(f"{base_url.rstrip('/')}/api/v1/query", params=params, timeout=10.0)
    try:
        body = resp.json()
    except ValueError as exc:
        raise RuntimeError(f"{promql!r}: HTTP {resp.status_code}: {resp.text[:300]!r}") from exc
    if body.get("status") != "success":
        raise RuntimeError(f"{promql!r}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, _sample_value(data["result"]))]
    if data["resultType"] != "vector":
        raise RuntimeError(f"{promql!r}: expected a vector, got {data['resultType']}")
    return [(dict(r["metric"]), _sample_value(r["value"] if "value" in r else r["histogram"]))
            for r in data["result"]]


Series = tuple[dict[str, str], list[tuple[float, float]]]


def query_matrix(
    base_url: str,
    promql: str,
    at: float | None = None,
    start: float | None = None,
    end: float | None = None,
    step: float = 15.0,
) -> list[Series]:
    """Run a query that gives a matrix; return (labels, [(unix seconds, value), ...]) per series.

    Without ``start``: an instant query (a range selector such as ``x[1h]`` gives every
    stored sample with its own timestamp). With ``start``: a range query from ``start`` to
    ``end`` (default now) every ``step`` seconds.

    Raises RuntimeError on an HTTP or PromQL error, or a result that is not a matrix.
    """
    if start is None:
        path, params = "query", {"query": promql}
        if at is not None:
            params["time"] = repr(at)
    else:
        path = "query_range"
        params = {"query": promql, "start": repr(start),
                  "end": repr(time.time() if end is None else end), "step": repr(step)}
    resp = requests.get(f"{base_url.rstrip('/')}/api/v1/{path}", params=params, timeout=10.0)
    body = resp.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{promql!r}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] != "matrix":
        raise RuntimeError(f"{promql!r}: expected a matrix, got {data['resultType']}")
    return [(dict(r["metric"]), [(float(t), float(v)) for t, v in r.get("values", [])])
            for r in data["result"]]


def wait_for_query(
    base_url: str,
    promql: str,
    predicate: Callable[[list[Sample]], bool] = bool,
    *,
    timeout: float = 30.0,
    interval: float = 0.5,
    procs: Iterable[ManagedProcess] = (),
) -> list[Sample]:
    """Poll `query(base_url, promql)` until `predicate(result)` holds; return that result.

    Args:
        base_url: Prometheus.
        promql: the expression.
        predicate: the condition (default: a non-empty result).
        timeout: seconds before TimeoutError (which shows the last result).
        interval: seconds between polls.
        procs: processes that must stay alive meanwhile (their exit ends the wait).
    """
    deadline = time.monotonic() + timeout
    last: list[Sample] | str = "no result"
    while True:
        for proc in procs:
            _check_alive(proc, promql)
        try:
            result = query(base_url, promql)
            if predicate(result):
                return result
            last = result
        except (RuntimeError, requests.RequestException) as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{promql!r} did not satisfy the predicate in {timeout:.0f} s; last result: {last}"
            )
        time.sleep(interval)
