"""Fixtures for the deploy tests (no servers started: these check files and run promtool)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

PROMTOOL_HINT = (
    "promtool not found (looked for $PROMTOOL, /usr/bin/promtool, promtool on PATH). "
    "Install it with: scripts/install-prometheus.sh"
)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool; fails (never skips) when it is missing, so CI cannot pass without it."""
    for candidate in (os.environ.get("PROMTOOL"), "/usr/bin/promtool", shutil.which("promtool")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(PROMTOOL_HINT, pytrace=False)
