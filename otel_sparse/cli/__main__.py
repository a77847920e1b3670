"""``python -m otel_sparse.cli``."""

from otel_sparse.cli import main

main()
