"""Every code block of README.md and docs/*.md runs as written, or says why it cannot.

Python and bash blocks of one file run in order in a fresh folder (``tests/_doc_runner.py``)
with this environment's ``otel-sparse`` first on PATH and ``.venv`` linked to it, so
``.venv/bin/otel-sparse`` works as the docs write it. As after the quickstart, the folder
already holds one demo run in ``otel_sparse_runs/`` for the blocks that read "your runs". A block that needs what test machines
lack (Docker, kubectl, a cluster, a GPU, the network) is tagged on the line before it with
``<!-- no-run: <reason> -->``; the reason is required. ``console`` blocks are transcripts
(a command and what it printed, on example run folders): their ``otel-sparse`` commands are
parsed against the CLI, so a renamed command or option shows here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = {"python": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
"""Fence languages that are code to run (others are output, config or diagrams)."""
NO_RUN = re.compile(r"^\s*<!--\s*no-run\b:?\s*(?P<reason>.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")


@dataclass
class Block:
    """One fenced code block."""

    path: str
    line: int
    lang: str
    code: str
    no_run: str | None
    """The reason given in ``<!-- no-run: ... -->`` (``""``: tagged without one); None: runs."""


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with the no-run tag of the line before it, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening["fence"]
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        tag = NO_RUN.match(before)
        indent = len(opening["indent"])
        code = "\n".join(line[indent:] for line in lines[i + 1:end]) + "\n"
        found.append(Block(str(path.relative_to(REPO)), i + 1, opening["lang"].lower(), code,
                           tag["reason"] if tag else None))
        i = end + 1
    return found


def _to_run(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in RUNNABLE and b.no_run is None]


def test_every_skipped_block_says_why() -> None:
    """A no-run tag carries a reason, and sits right before a block of code to run."""
    problems = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        tagged = {b.line for b in blocks(path) if b.no_run is not None}
        for number, line in enumerate(lines, 1):
            tag = NO_RUN.match(line)
            if tag is None:
                continue
            if len(tag["reason"].split()) < 2:
                problems.append(f"{path.name}:{number}: no-run without a reason")
            following = next((n for n in range(number, len(lines)) if lines[n].strip()), None)
            if following is None or following + 1 not in tagged:
                problems.append(f"{path.name}:{number}: no-run tag not right before a block")
    problems.extend(
        f"{b.path}:{b.line}: no-run on a {b.lang!r} block, which never runs"
        for path in DOCS for b in blocks(path) if b.no_run is not None and b.lang not in RUNNABLE
    )
    assert problems == []


def test_every_block_names_its_language() -> None:
    """Code cannot hide from the runner in an untagged fence: text and diagrams say ``text``."""
    untagged = [f"{b.path}:{b.line}" for path in DOCS for b in blocks(path) if not b.lang]
    assert untagged == []


def test_block_parser_sees_tags_and_languages() -> None:
    """The parser (what every other check relies on) reads a known file right."""
    readme = blocks(REPO / "README.md")
    assert readme and all(b.code.endswith("\n") for b in readme)
    assert {b.lang for b in readme} >= {"bash", "python"}
    assert any(b.no_run for b in readme)


def _reader_env() -> dict[str, str]:
    """This environment, as a reader's shell: none of our test variables, the venv first."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "PYTEST_")) and k not in {"RANK", "WORLD_SIZE",
                                                                  "LOCAL_RANK"}}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               MPLBACKEND="Agg", PYTHONPATH=str(REPO))
    return env


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``otel_sparse_runs/`` holding one short demo run, made once for every doc."""
    for module in ("torch", "pandas", "matplotlib"):  # optional extras: not on every CI root
        pytest.importorskip(module)
    runs = tmp_path_factory.mktemp("seed") / "otel_sparse_runs"
    subprocess.run([str(Path(sys.executable).parent / "otel-sparse"), "demo", "--steps", "5",
                    "--backend", "numpy", "--no-heatmap", "--run-dir",
                    str(runs / "20260101-000000-demo")], env=_reader_env(), check=True,
                   capture_output=True, timeout=300)
    return runs


@pytest.mark.parametrize("doc", [p for p in DOCS if _to_run(p)], ids=lambda p: p.name)
def test_doc_blocks_run(doc: Path, tmp_path: Path, demo_runs: Path) -> None:
    """Every python/bash block of ``doc`` without a no-run tag runs, in order, as written."""
    todo = [{**asdict(b), "lang": RUNNABLE[b.lang]} for b in _to_run(doc)]
    (tmp_path / "blocks.json").write_text(json.dumps(todo))
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    shutil.copytree(demo_runs, work / "otel_sparse_runs")
    env = _reader_env()
    done = subprocess.run([sys.executable, str(REPO / "tests" / "_doc_runner.py"),
                           str(tmp_path / "blocks.json")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=480, check=False)
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    assert done.stdout.rstrip().endswith("--- all blocks ran")


def test_torch_floor_in_docs_is_the_package_floor() -> None:
    """docs/torch.md states the torch version pyproject's ``torch`` extra requires."""
    floor = re.search(r'torch = \["torch>=([\d.]+)"\]', (REPO / "pyproject.toml").read_text())
    assert floor is not None
    stated = re.search(r"needs torch\s+([\d.]+)\s+or newer", (REPO / "docs" / "torch.md").read_text())
    assert stated is not None and stated.group(1) == floor.group(1)


def _transcript_commands() -> list[tuple[str, list[str]]]:
    """``$ otel-sparse ...`` lines of the ``console`` blocks: (where, argv after the program)."""
    import shlex

    found = []
    for path in DOCS:
        for block in blocks(path):
            if block.lang != "console":
                continue
            for offset, line in enumerate(block.code.splitlines(), 1):
                if not line.startswith("$ "):
                    continue
                words = shlex.split(line[2:], comments=True)
                while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value cmd
                    words.pop(0)
                if ">" in words:
                    words = words[:words.index(">")]
                if words and words[0] == "otel-sparse":
                    found.append((f"{block.path}:{block.line + offset}", words[1:]))
    return found


def test_transcript_commands_parse() -> None:
    """``console`` blocks are transcripts (shown, not run: their run folders are examples),
    but every ``otel-sparse`` command in them names a real command with options it takes."""
    from typer.main import get_command

    try:  # typer >= 0.25 carries its own copy of click; older ones use click
        from typer._click.exceptions import UsageError  # type: ignore[import-not-found]
    except ImportError:
        from click.exceptions import UsageError  # type: ignore[import-not-found,no-redef]

    from otel_sparse.cli import app

    group: Any = get_command(app)
    commands = _transcript_commands()
    assert commands  # the parser finds them (cli.md has several)
    problems = []
    for where, argv in commands:
        with group.context_class(group, info_name="otel-sparse") as parent:
            command = group.get_command(parent, argv[0]) if argv else None
            if command is None:
                problems.append(f"{where}: no command {argv[:1]}")
                continue
            try:
                command.make_context(argv[0], argv[1:], parent=parent)
            except UsageError as exc:
                problems.append(f"{where}: {exc.format_message()}")
    assert problems == []
