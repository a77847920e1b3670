"""Steady-state memory of a long run: RSS while MicroMetricLogger.log() is called 1,000,000 times.

Run: .venv/bin/python bench/bench_memory.py [--n 1000000] [--every 100000] [--variant all]
         [--pace-us 0] [--max-pending N]

Values (each run in a fresh subprocess, so one cannot inherit another's heap):
  scalar  log(id, float, {"layer_idx": l, "head_idx": h}), 32 x 32 (layer, head) pairs
  tensor  log(id, torch.rand(32) (one [heads] tensor), {"layer_idx": l}), 32 layers

Every ``--every`` events it prints the process RSS (psutil), the events handed to the writer
but not yet written (``_pending_events``) and the caller's queue length; at the end, the RSS
growth between the 200k-th and the last event. Figures only; nothing here is asserted.

What bounds memory: the caller's queue (flush_every), the writer's caches (bounded), and what
the writer has not written yet, at most OTEL_SPARSE_MAX_PENDING_EVENTS events (then batches
are dropped, counted as queue_overflow). The writer costs less per event than log(), so even a
loop that does nothing but log() leaves only a bounded backlog (tens of thousands of events:
the writer waits a GIL switch interval after each write); with time between calls that
releases the GIL (``--pace-us``, as a forward pass does), the backlog stays near zero.
``--variant all`` runs the tight loops, the tight loops under a 100k cap, and paced loops.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil

METRIC = "research_attention_density"
LAYERS, HEADS = 32, 32
MIB = 1 << 20


PACE_CHUNK = 100
"""With --pace-us, one GIL-free sleep of PACE_CHUNK * pace after every PACE_CHUNK events."""


def run(variant: str, n: int, every: int, pace_us: float) -> None:
    """One variant in this process: log n events, print RSS every ``every`` events."""
    from otel_sparse import MicroMetricLogger

    MicroMetricLogger.register_metric(METRIC, float)
    path = tempfile.mkdtemp(prefix=f"otel-sparse-mem-{variant}-")
    logger = MicroMetricLogger(log_path=path, enabled_metrics="all", exporters=["jsonl"])
    log = logger.log
    process = psutil.Process()
    heads = None
    if variant == "tensor":
        import torch

        heads = torch.rand(HEADS)
    gc.collect()
    rss: dict[int, int] = {0: process.memory_info().rss}
    cap = os.environ.get("OTEL_SPARSE_MAX_PENDING_EVENTS", "default (1,000,000)")
    label = f"{variant}, pace {pace_us:g} us/event, max pending {cap}"
    print(f"\n[{label}] n={n:,}  pid={os.getpid()}  run dir {path} (removed at the end)")
    print(f"{'events':>10} {'RSS MiB':>9} {'writer pending':>15} {'queue':>6} {'s':>7}")
    print(f"{0:>10,} {rss[0] / MIB:>9.1f} {0:>15,} {0:>6} {0.0:>7.1f}")
    pause = PACE_CHUNK * pace_us / 1e6
    start = time.perf_counter()
    for step in range(every, n + every, every):
        done = min(step, n)
        for first in range(done - every, done, PACE_CHUNK):
            last = min(first + PACE_CHUNK, done)
            if heads is None:
                for i in range(first, last):
                    log(METRIC, 0.25, {"layer_idx": i & 31, "head_idx": i >> 5 & 31})
            else:
                for i in range(first, last):
                    log(METRIC, heads, {"layer_idx": i & 31})
            if pause:
                time.sleep(pause)
        rss[done] = process.memory_info().rss
        pipeline = logger._pipeline
        pending = pipeline._pending_events if pipeline is not None else 0
        print(f"{done:>10,} {rss[done] / MIB:>9.1f} {pending:>15,} {len(logger.log_queue):>6} "
              f"{time.perf_counter() - start:>7.1f}")
    logger.close()
    gc.collect()
    end_rss = process.memory_info().rss
    with open(os.path.join(path, "micro_metrics.jsonl"), "rb") as events:
        lines = sum(1 for _ in events)
    shutil.rmtree(path)  # up to ~800 MB of event lines per run
    dropped = {k: v for k, v in logger._drops.snapshot().items()}
    base = min((k for k in rss if k >= 200_000), default=max(rss))
    print(f"after close: RSS {end_rss / MIB:.1f} MiB; event lines {lines:,} of {n:,}; "
          f"drops {dropped or 'none'}")
    print(f"[{label}] growth {base:,} -> {n:,} events: "
          f"{(rss[n] - rss[base]) / MIB:+.1f} MiB "
          f"(peak {max(rss.values()) / MIB:.1f} MiB, start {rss[0] / MIB:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=100_000)
    parser.add_argument("--variant", choices=["scalar", "tensor", "all"], default="all")
    parser.add_argument("--pace-us", type=float, default=None,
                        help="GIL-free time per event between calls (default 0; 'all': 0 and 20)")
    parser.add_argument("--max-pending", type=int, default=None,
                        help="OTEL_SPARSE_MAX_PENDING_EVENTS for the runs")
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_process:
        run(args.variant, args.n, args.every, args.pace_us or 0.0)
        return
    if args.variant == "all" and args.pace_us is None and args.max_pending is None:
        runs: list[tuple[str, float, int | None]] = [(v, 0.0, None) for v in ("scalar", "tensor")]
        runs += [(v, 0.0, 100_000) for v in ("scalar", "tensor")]
        runs += [(v, 20.0, None) for v in ("scalar", "tensor")]
    else:
        variants = ["scalar", "tensor"] if args.variant == "all" else [args.variant]
        runs = [(v, args.pace_us or 0.0, args.max_pending) for v in variants]
    print(f"python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    for variant, pace, cap in runs:
        env = dict(os.environ)
        if cap is not None:
            env["OTEL_SPARSE_MAX_PENDING_EVENTS"] = str(cap)
        subprocess.run([sys.executable, __file__, "--in-process", "--variant", variant,
                        "--n", str(args.n), "--every", str(args.every), "--pace-us", str(pace)],
                       check=True, env=env)


if __name__ == "__main__":
    main()
