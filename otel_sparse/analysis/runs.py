"""Finding runs: run folders, their per-process files and manifests."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from otel_sparse.analysis.errors import RunNotFoundError
from otel_sparse.layout import EVENT_FILE_RE, MANIFEST_NAME, OTLP_DIR, OTLP_FILE_RE, POINT_FILE_RE

if TYPE_CHECKING:
    pass

_logger = logging.getLogger("otel_sparse.analysis")


@dataclass(frozen=True)
class DataFile:
    """One JSONL file of a run, with the rank and pid its name carries (None for rank 0)."""

    path: str
    rank: int | None
    pid: int | None


@dataclass
class RunFolder:
    """The files of one run folder."""

    path: str
    name: str
    manifest: dict[str, Any]
    event_files: list[DataFile] = field(default_factory=list)
    point_files: list[DataFile] = field(default_factory=list)
    otlp_files: list[DataFile] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        """The manifest's run id, else the folder name."""
        run_id = self.manifest.get("run_id")
        return str(run_id) if run_id else os.path.basename(os.path.abspath(self.path))

    @property
    def has_files(self) -> bool:
        """Whether any run file is there (an empty folder is not a run)."""
        return bool(self.manifest or self.event_files or self.point_files or self.otlp_files)


def data_files(folder: str, pattern: re.Pattern[str]) -> list[DataFile]:
    """The files of ``folder`` whose names ``pattern`` matches, rank 0 first."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    out: list[DataFile] = []
    for name in names:
        match = pattern.match(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        rank = match.group("rank")
        pid = match.group("pid")
        out.append(DataFile(path, None if rank is None else int(rank),
                            None if pid is None else int(pid)))
    # rank 0's own file first, then by rank and pid
    out.sort(key=lambda f: (f.rank is not None, f.rank or 0, f.pid or 0))
    return out


def read_manifest(folder: str) -> dict[str, Any]:
    """``run.json`` of a run folder, or {} when missing or unreadable (warned)."""
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        _logger.warning("otel_sparse: cannot read %s (%s); ignoring it", path, exc)
        return {}
    return manifest if isinstance(manifest, dict) else {}


def scan_run(folder: str) -> RunFolder:
    """The run files of one folder (which may hold none)."""
    return RunFolder(
        path=folder,
        name=os.path.basename(os.path.abspath(folder)),
        manifest=read_manifest(folder),
        event_files=data_files(folder, EVENT_FILE_RE),
        point_files=data_files(folder, POINT_FILE_RE),
        otlp_files=data_files(os.path.join(folder, OTLP_DIR), OTLP_FILE_RE),
    )


def find_runs(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[RunFolder]:
    """Run folders named by ``paths``: run folders, files inside them, or parents of runs.

    A folder without run files whose subfolders hold runs is a parent of runs; a folder with
    neither counts as one (empty) run. Raises RunNotFoundError for a path that does not exist.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise RunNotFoundError("no run path given")
    runs: list[RunFolder] = []
    seen: set[str] = set()
    for item in items:
        path = os.fspath(item)
        if not os.path.exists(path):
            raise RunNotFoundError(f"no such file or directory: {path}")
        if os.path.isfile(path):
            path = os.path.dirname(os.path.abspath(path))
        run = scan_run(path)
        found = [run]
        if not run.has_files:
            children = sorted(
                os.path.join(path, name) for name in os.listdir(path)
                if os.path.isdir(os.path.join(path, name))
            )
            nested = [r for r in map(scan_run, children) if r.has_files]
            if nested:
                found = nested
        for r in found:
            key = os.path.realpath(r.path)
            if key not in seen:
                seen.add(key)
                runs.append(r)
    return runs


def latest_run(parent: str | os.PathLike[str]) -> RunFolder:
    """The most recently modified run under ``parent`` (or ``parent`` itself if it is a run)."""
    runs = find_runs(parent)

    def mtime(run: RunFolder) -> float:
        files = [f.path for f in run.event_files + run.point_files]
        files.append(os.path.join(run.path, MANIFEST_NAME))
        return max((os.path.getmtime(p) for p in files if os.path.exists(p)), default=0.0)

    return max(runs, key=mtime)
