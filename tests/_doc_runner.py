"""Runs the code blocks of one Markdown file in order, as a reader would, in the current folder.

Used by ``tests/test_docs.py`` in a subprocess: ``python tests/_doc_runner.py BLOCKS.json``.
Python blocks share one namespace (like cells of a notebook); a Python block whose first line
is ``# test_<name>.py`` is written to that file and run with pytest; bash blocks run with
``bash -euo pipefail``. The first failure stops the run and names the block's file and line.
A block that makes the logger print one of the contract's "nothing was logged" warnings, or
that makes otel_sparse warn through ``logging`` that something was not recorded (a dropped
value, an identifier never registered, an ignored log_path), fails too: a snippet that logs
nothing is as broken as one that raises. Other warnings (a documented CPU fallback) pass.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
from typing import Any

NOTHING_LOGGED = ("Warning: Attempting to log metric", "Warning: Cannot log metric",
                  "Warning: Attempting to enable unregistered metrics", "otel_sparse: dropping")
"""Contract lines (stdout) that say a snippet's log() call recorded nothing."""
LOST = ("dropping", "never registered", "logs nothing", "ignored")
"""Words of otel_sparse's logging warnings that say something was not recorded."""

_TEST_FILE = re.compile(r"^#\s*(test_\w+\.py)\b")


def _check_output(where: str, out: str) -> None:
    sys.stdout.write(out)
    for line in out.splitlines():
        if line.startswith(NOTHING_LOGGED):
            raise SystemExit(f"{where}: the snippet logged nothing: {line}")


class _Warnings(logging.Handler):
    """Keeps the otel_sparse warnings of the block being run."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(word in message for word in LOST):
            self.seen.append(message)


def main() -> None:
    warnings = _Warnings()
    logging.getLogger("otel_sparse").addHandler(warnings)
    with open(sys.argv[1], encoding="utf-8") as f:
        blocks: list[dict[str, Any]] = json.load(f)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for block in blocks:
        where = f"{block['path']}:{block['line']}"
        print(f"--- {where} ({block['lang']})", flush=True)
        code = block["code"]
        test_file = _TEST_FILE.match(code)
        if block["lang"] == "python" and test_file:
            with open(test_file.group(1), "w", encoding="utf-8") as f:
                f.write(code)
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   test_file.group(1)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            _check_output(where, done.stdout + done.stderr)
            if done.returncode != 0:
                raise SystemExit(f"{where}: pytest exited with {done.returncode}")
        elif block["lang"] == "python":
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(compile(code, where, "exec"), namespace)
            finally:
                _check_output(where, out.getvalue())
            if warnings.seen:
                raise SystemExit(f"{where}: otel_sparse warned: {warnings.seen}")
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True,
                                  text=True, check=False)
            _check_output(where, done.stdout + done.stderr)
            if done.returncode != 0:
                raise SystemExit(f"{where}: bash exited with {done.returncode}")
    logging.shutdown()
    if warnings.seen:  # reported by the writer thread after the last block
        raise SystemExit(f"otel_sparse warned: {warnings.seen}")
    print("--- all blocks ran", flush=True)


if __name__ == "__main__":
    main()
