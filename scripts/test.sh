#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run every test.
#
#   bash scripts/test.sh [pytest args...]
#
# Steps (each idempotent, each cached across clones of the repo on one machine):
#   1. uv (from PyPI) and the virtual environment .venv with otel-sparse[dev], torch
#      included. uv keeps its wheel cache in ${UV_CACHE_DIR:-~/.cache/uv} and hard-links
#      from it, so the 5 GB torch install costs ~15 s cold and ~2 s warm.
#   2. Prometheus 2.42 + promtool from Debian (scripts/install-prometheus.sh).
#   3. Our collector distribution (scripts/build-collector.sh): ~3-5 min cold, cached by
#      the manifest's hash + Go and builder versions afterwards.
#   4. vmagent, the aggregation tier (scripts/build-vmagent.sh): 79 s of CPU and 0.5 GB of Go
#      caches cold, 87 s wall with the collector's Go caches warm; cached afterwards
#      (docs/cluster.md, "Installing the aggregator").
#   5. ruff and mypy (both with Python 3.9's rules, the oldest we support).
#   6. The unit tests on CPython 3.9 and 3.13 (scripts/python-versions.sh: pyenv's
#      interpreters where present, else Debian bullseye/trixie roots made with debootstrap,
#      cached in ${OTEL_SPARSE_CACHE:-~/.cache/otel_sparse}).
#   7. pytest over tests/ on .venv's 3.11 (unit, deploy and integration; nothing skipped
#      for want of a tool: CUDA tests alone skip, on machines without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "python environment (.venv, otel-sparse[dev] incl. torch)"
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check uv
fi
if [[ ! -x .venv/bin/python ]]; then
    uv venv --quiet --python python3 .venv
fi
uv pip install --quiet --python .venv/bin/python -e ".[dev]"

step "prometheus + promtool"
bash scripts/install-prometheus.sh

step "otelcol-sparse collector"
OTELCOL_BIN="$(bash scripts/build-collector.sh)"
export OTELCOL_BIN
echo "collector: $OTELCOL_BIN"

step "vmagent (stream aggregation tier)"
VMAGENT_BIN="$(bash scripts/build-vmagent.sh)"
export VMAGENT_BIN
echo "vmagent: $VMAGENT_BIN"

step "ruff + mypy"
.venv/bin/ruff check otel_sparse tests bench scripts
.venv/bin/mypy

step "unit tests on CPython 3.9 and 3.13 (scripts/python-versions.sh)"
bash scripts/python-versions.sh

step "pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
