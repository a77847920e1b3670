"""``otel-sparse``: the researcher's command line (demo, summary, compare, heatmap, plot, tail,
replay, doctor), one module per command.

Every command reads run folders as otel_sparse writes them; see docs/cli.md. A command gathers
its numbers with a plain function of ``otel_sparse.analysis`` (a DataFrame) and renders them
with rich. Errors a user can fix (a wrong path, an empty run, an unknown metric, a bad option)
print one line and exit with code 2; a collector that refuses data exits with code 1.

pandas and matplotlib are imported only by the commands that need them.
"""

from __future__ import annotations

from otel_sparse._safety import mask_env_value
from otel_sparse.cli import compare, demo, doctor, heatmap, plot, replay, summary, tail
from otel_sparse.cli._common import EXIT_FAILED, EXIT_USAGE, app, main
from otel_sparse.otlp_send import parse_headers, resolve_endpoint

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "app",
    "compare",
    "demo",
    "doctor",
    "heatmap",
    "main",
    "mask_env_value",
    "parse_headers",
    "plot",
    "replay",
    "resolve_endpoint",
    "summary",
    "tail",
]
