"""scripts/gpu-checks.sh --dry-run: the prepared GPU run works on the CPU (what CI can check).

The script's device run is the same code with real sizes: its harness (paths, the wheels'
PYTHONPATH, the parts writing under $OUT, the benchmark's event counts) is proven here, so a
session with a lent GPU spends its minutes on the GPU, not on the script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def test_dry_run_writes_every_part(tmp_path: Path) -> None:
    """Every part reports, the benchmark logged steps x layers x 2 events per logging mode."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-checks.sh"), "--dry-run"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bench.json", "bench.log", "cuda-tests.log", "cuda-tests.xml", "env.txt", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0].startswith("env: ok")
    assert summary[1].startswith("cuda tests: ") and "collected" in summary[1]
    assert "bench: ok" in summary and summary[-1].startswith("done: status 0")
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert bench["ok"] and bench["dry_run"] and bench["drops"] == {}
    per_mode = bench["steps"] * bench["rounds"] * bench["layers"] * 2
    assert {m: r["events"] for m, r in bench["modes"].items()} == {
        "eager_off": 0, "eager_otel": per_mode, "eager_item": per_mode}


def test_unknown_argument_refused() -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-checks.sh"), "--gpu"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "usage" in done.stderr
