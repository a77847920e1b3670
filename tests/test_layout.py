"""The run-folder layout is defined once (otel_sparse.layout) and writers and readers agree."""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import numpy as np

import otel_sparse
from otel_sparse import _values, layout
from otel_sparse.resource import ProcessIdentity

PACKAGE = Path(otel_sparse.__file__).parent

_NAMES = {
    layout.EVENT_FILE_NAME, layout.METRICS_FILE_NAME, layout.MANIFEST_NAME,
    layout.OTLP_FILE_NAME,
}


def _string_constants(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal that is not a docstring."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value) for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_file_names_are_written_only_in_layout() -> None:
    """No module but layout.py spells a run-folder file name as a literal."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "layout.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{path.relative_to(PACKAGE)}:{line} {value!r}"
                      for line, value in _string_constants(tree) if value in _NAMES]
    assert offenders == []


def test_process_file_names_round_trip() -> None:
    """What a writer names a rank's file, the reader's pattern parses back."""
    for name in (layout.EVENT_FILE_NAME, layout.METRICS_FILE_NAME, layout.OTLP_FILE_NAME):
        written = layout.process_file_name(os.path.basename(name), layout.rank_pid_suffix(7, 123))
        match = layout.process_file_pattern(name).match(written)
        assert match is not None and match["rank"] == "7" and match["pid"] == "123"
        own = layout.process_file_pattern(name).match(os.path.basename(name))
        assert own is not None and own["rank"] is None
    assert layout.EVENT_FILE_RE.match(layout.METRICS_FILE_NAME) is None
    assert layout.POINT_FILE_RE.match(layout.EVENT_FILE_NAME) is None


def test_identity_suffix_comes_from_layout() -> None:
    identity = ProcessIdentity.current()
    assert identity.file_suffix(is_fork_child=True) == layout.rank_pid_suffix(
        identity.rank, identity.pid)


def test_inline_alias_checks_agree_with_layout() -> None:
    """The hot path spells the layer/head keys inline; they are exactly layout's keys."""
    source = inspect.getsource(_values._torch_tensor)
    for key in layout.HEAD_KEYS + layout.LAYER_KEYS:
        assert f'"{key}" in metadata' in source
    spelled = {c for _, c in _string_constants(ast.parse(source.strip()))
               if c in ("layer", "head") or c.endswith("_idx")}
    assert spelled == set(layout.HEAD_KEYS + layout.LAYER_KEYS)
    # and the numpy path (which reads layout's keys) refuses the same metadata
    for key in layout.HEAD_KEYS:
        assert _values._numpy_array(np.zeros(4), {key: 0}) is _values.HEADS_IN_METADATA
    for key in layout.LAYER_KEYS:
        assert _values._numpy_array(np.zeros((2, 4)), {key: 0}) is _values.LAYERS_IN_METADATA


def test_metrics_rows_use_layout_columns(
    tmp_path: Path, fresh_logger: type[otel_sparse.MicroMetricLogger]
) -> None:
    """A metrics.jsonl row carries exactly layout's columns, then the resource columns."""
    import pandas as pd

    fresh_logger.register_metric("d", float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
    logger.log("d", 0.5, {"layer_idx": 1})
    logger.close()
    rows = pd.read_json(tmp_path / layout.METRICS_FILE_NAME, lines=True)
    columns = list(rows.columns)
    assert columns[: len(layout.METRICS_COLUMNS)] == list(layout.METRICS_COLUMNS)
    assert set(layout.RESOURCE_COLUMNS.values()) <= set(columns)
    assert rows[rows["metric"] == "sparse_attention.d"][layout.LAYER].tolist() == [1]
