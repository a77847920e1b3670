"""A training rank for integration tests: run as a script, one process per rank.

Each process is started the way torchrun starts its workers: the environment carries
RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT and
TORCHELASTIC_RUN_ID (the same on every rank), and otel_sparse reads its identity from them.
The OTLP endpoint, exporters and export interval come from the usual OTEL_* variables, so
a rank is configured exactly as a user's training script would be.

The test drives the ranks through phases with files in a control folder::

    rank<r>.ready           written by the rank once its logger is up
    go<k>                   written by the test: every rank with phase k logs it
    rank<r>.done<k>         written by the rank after phase k was logged and flushed
    stop                    written by the test: ranks that are waiting close and exit

A rank with ``--phases N`` leaves after phase N: it waits for ``stop`` unless
``--exit-after-last`` is given, in which case it closes its logger (final export) and
exits at once, while the others go on. Values are multiples of 1/8 (``value()``), so every
count and sum is exact in binary floating point; ``expected_totals()`` gives them.

Imported as a module, this file also gives tests ``value``, ``expected_totals`` and
``RankGroup`` (starts the processes with torchrun's environment, stops them afterwards).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

METRICS = ("research_attention_density", "research_attention_output_error")
"""Registered by every rank, in this order; ``--metrics`` picks how many are logged."""

CONTROL_TIMEOUT_S = 600.0
"""A rank whose next control file does not come within this time exits with code 3."""


def value(rank: int, phase: int, step: int, layer: int, head: int, metric: int = 0) -> float:
    """The value rank ``rank`` logs: a multiple of 1/8 in [0, 1]."""
    return ((3 * rank + 5 * phase + step + 2 * layer + head + 4 * metric) % 9) / 8


def expected_totals(
    plan: Mapping[int, Iterable[int]], steps: int, layers: int, heads: int, metric: int = 0
) -> dict[tuple[int, int], tuple[int, float]]:
    """(count, sum) per (layer, head) over every rank and phase of ``plan`` (rank -> phases)."""
    totals: dict[tuple[int, int], tuple[int, float]] = {}
    for layer in range(layers):
        for head in range(heads):
            values = [
                value(rank, phase, step, layer, head, metric)
                for rank, phases in plan.items()
                for phase in phases
                for step in range(steps)
            ]
            totals[(layer, head)] = (len(values), math.fsum(values))
    return totals


def torchrun_env(
    rank: int, world_size: int, local_rank: int, local_world_size: int, run_id: str,
    master_port: int, group_rank: int = 0,
) -> dict[str, str]:
    """The variables torchrun (torch.distributed.run) sets for one worker."""
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "GROUP_RANK": str(group_rank),
        "GROUP_WORLD_SIZE": str(max(1, world_size // max(1, local_world_size))),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "ROLE_NAME": "default",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        "OMP_NUM_THREADS": "1",
    }


class RankGroup:
    """Rank processes of one job, started with torchrun's environment, driven by files.

    Example::

        group = RankGroup(tmp_path, run_id, world_size=4)
        group.start(0, env={"OTEL_EXPORTER_OTLP_ENDPOINT": ...}, args=["--phases", "2"])
        group.wait_ready()
        group.go(1); group.wait_done(1)
        group.stop_all()
    """

    def __init__(self, folder: Path, run_id: str, world_size: int) -> None:
        from _procs import free_port

        self.folder = Path(folder)
        self.control = self.folder / "control"
        self.control.mkdir(parents=True, exist_ok=True)
        self.run_dir = self.folder / "run"
        self.run_id = run_id
        self.world_size = world_size
        self.master_port = free_port()
        self.procs: dict[int, Any] = {}
        self.phases: dict[int, int] = {}

    def start(
        self, rank: int, env: Mapping[str, str], args: Sequence[str] = (),
        local_rank: int | None = None, local_world_size: int | None = None,
        group_rank: int = 0,
    ) -> None:
        """Start rank ``rank``; ``env`` adds OTEL_* variables to torchrun's set."""
        from _procs import ManagedProcess

        full = {k: v for k, v in os.environ.items()
                if not k.startswith("OTEL_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        full.update(torchrun_env(
            rank, self.world_size, rank if local_rank is None else local_rank,
            local_world_size or self.world_size, self.run_id, self.master_port, group_rank,
        ))
        full.update(env)
        argv = list(args)
        self.phases[rank] = int(argv[argv.index("--phases") + 1]) if "--phases" in argv else 1
        proc = ManagedProcess(
            [sys.executable, __file__, "--control", str(self.control),
             "--log-dir", str(self.run_dir), *argv],
            self.folder / f"rank{rank}.log", env=full, name=f"rank{rank}",
        )
        self.procs[rank] = proc
        proc.start()

    def _wait_files(self, names: Sequence[str], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            missing = [n for n in names if not (self.control / n).exists()]
            if not missing:
                return
            for rank, proc in self.procs.items():
                if not proc.running and proc.returncode != 0:
                    raise RuntimeError(
                        f"rank {rank} exited with {proc.returncode} while waiting for {what}:"
                        f"\n{proc.log_tail()}"
                    )
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- rank {r}\n{p.log_tail(15)}" for r, p in self.procs.items())
                raise TimeoutError(f"{what}: {missing} missing after {timeout:.0f} s\n{logs}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until every started rank has its logger up."""
        self._wait_files([f"rank{r}.ready" for r in self.procs], "ranks ready", timeout)

    def go(self, phase: int) -> None:
        """Let every rank that has phase ``phase`` log it."""
        (self.control / f"go{phase}").touch()

    def ranks_in(self, phase: int) -> list[int]:
        """The ranks that log phase ``phase``."""
        return [r for r, n in self.phases.items() if n >= phase]

    def wait_done(self, phase: int, timeout: float = 120.0) -> None:
        """Wait until every rank with phase ``phase`` logged and flushed it."""
        names = [f"rank{r}.done{phase}" for r in self.ranks_in(phase)]
        self._wait_files(names, f"phase {phase} done", timeout)

    def wait_exited(self, rank: int, timeout: float = 60.0) -> int:
        """Wait for rank ``rank`` to exit by itself; return its exit code."""
        proc = self.procs[rank]
        deadline = time.monotonic() + timeout
        while proc.running:
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank} still running after {timeout:.0f} s")
            time.sleep(0.05)
        code = proc.returncode
        assert code is not None
        return int(code)

    def plan(self) -> dict[int, range]:
        """rank -> the phases it logs (1-based)."""
        return {r: range(1, n + 1) for r, n in self.phases.items()}

    def stop_all(self, timeout: float = 60.0) -> dict[int, int | None]:
        """Write ``stop``; wait for every rank to close its logger and exit; return codes."""
        (self.control / "stop").touch()
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            while proc.running and time.monotonic() < deadline:
                time.sleep(0.05)
        return {r: p.stop() for r, p in self.procs.items()}

    def kill_all(self) -> None:
        """Stop every rank still running (teardown)."""
        for proc in self.procs.values():
            proc.stop(timeout=5.0)


# -- the rank process ------------------------------------------------------------------------


def _wait_for(path: Path, control: Path) -> None:
    deadline = time.monotonic() + CONTROL_TIMEOUT_S
    while not path.exists():
        if (control / "abort").exists():
            sys.exit(2)
        if time.monotonic() > deadline:
            print(f"rank: no {path} after {CONTROL_TIMEOUT_S} s", file=sys.stderr)
            sys.exit(3)
        time.sleep(0.02)


def _touch(path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> None:
    """Log the phases given on the command line, as rank $RANK."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--phases", type=int, default=1)
    parser.add_argument("--exit-after-last", action="store_true",
                        help="close and exit right after the last phase (no wait for stop)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--metrics", type=int, default=1, help="how many of METRICS to log")
    parser.add_argument("--extra-layers", type=int, default=0,
                        help="also log these layers past --layers (cardinality overflow "
                             "with OTEL_SPARSE_MAX_SERIES=layers*heads)")
    parser.add_argument("--non-finite", type=int, default=0,
                        help="NaN values logged per phase (dropped: reason non_finite)")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    args = parser.parse_args(argv)

    from otel_sparse import MicroMetricLogger

    rank = int(os.environ.get("RANK", "0"))
    for name in METRICS:
        MicroMetricLogger.register_metric(name, float)
    logger = MicroMetricLogger(log_path=args.log_dir, enabled_metrics="all")
    control: Path = args.control
    _touch(control / f"rank{rank}.ready")
    for phase in range(1, args.phases + 1):
        _wait_for(control / f"go{phase}", control)
        for step in range(args.steps):
            for m in range(args.metrics):
                for layer in range(args.layers + args.extra_layers):
                    for head in range(args.heads):
                        logger.log(METRICS[m], value(rank, phase, step, layer, head, m),
                                   {"layer_idx": layer, "head_idx": head})
            if args.step_sleep:
                time.sleep(args.step_sleep)
        for _ in range(args.non_finite):
            logger.log(METRICS[0], math.nan, {"layer_idx": 0, "head_idx": 0})
        logger.flush()
        _touch(control / f"rank{rank}.done{phase}")
    if not args.exit_after_last:
        _wait_for(control / "stop", control)
    logger.close()


if __name__ == "__main__":
    main()
