"""What every command shares: the typer app, exit codes, consoles, one-line errors."""

from __future__ import annotations

import enum
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from otel_sparse._version import __version__
from otel_sparse.analysis import (
    AnalysisError,
)

if TYPE_CHECKING:

    import pandas as pd

    from otel_sparse.analysis import RunData


EXIT_USAGE = 2
"""Exit code for a mistake the user can fix: wrong path, empty run, unknown metric."""
EXIT_FAILED = 1
"""Exit code for a refused export, or problems found by ``doctor``."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _evaluated(func: _F) -> _F:
    """``func`` with its string annotations (``from __future__ import annotations``) evaluated,
    ``Annotated[...]`` kept. typer reads its options off them; on 3.9 it cannot evaluate them
    itself (no ``inspect.signature(eval_str=True)``), and every option silently became a
    positional argument there."""
    # Each text evaluated alone: 3.9's typing.get_type_hints would wrap an annotation whose
    # default is None in Optional[...], which hides the Annotated[...] from typer.
    func.__annotations__ = {
        name: eval(text, func.__globals__) if isinstance(text, str) else text
        for name, text in func.__annotations__.items()
    }
    return func


class _Typer(typer.Typer):
    """``typer.Typer`` whose commands read the same on 3.9 as on 3.10+ (see ``_evaluated``)."""

    if sys.version_info < (3, 10):

        def command(self, *args: Any, **kwargs: Any) -> Callable[[_F], _F]:
            register = super().command(*args, **kwargs)
            return lambda func: register(_evaluated(func))

        def callback(self, *args: Any, **kwargs: Any) -> Callable[[_F], _F]:
            register = super().callback(*args, **kwargs)
            return lambda func: register(_evaluated(func))


app = _Typer(
    name="otel-sparse",
    help="Run, inspect and replay otel_sparse runs (micro_metrics.jsonl, metrics.jsonl, run.json).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def console(stderr: bool = False) -> Console:
    """A console that does not wrap tables at 80 columns when the output is not a terminal."""
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, highlight=False, width=200)
    return console


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one error line to stderr and exit (no traceback)."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    console(stderr=True).print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
    raise typer.Exit(code)


def _significant(value: Any, digits: int) -> str:
    """A statistic with ``digits`` significant digits, '-' for missing (None or NaN)."""
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "-"
    return f"{number:.{digits}g}"


def num(value: Any) -> str:
    """A statistic as shown in tables: 6 significant digits, '-' for missing."""
    return _significant(value, 6)


def short(value: Any) -> str:
    """A statistic in a narrow table: 4 significant digits, '-' for missing."""
    return _significant(value, 4)


def _missing(value: Any) -> bool:
    """None, or what pandas counts as missing (NaN, NaT, pd.NA); a value pandas cannot judge
    (a list, say) or no pandas at all: not missing."""
    if value is None:
        return True
    try:
        import pandas as pd

        return bool(pd.isna(value))
    except (TypeError, ValueError, ImportError):
        return False


def cell(value: Any) -> str:
    """A grouping value (stage, k, layer) as shown in tables: '-' when missing."""
    if _missing(value):
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_where_option(where: Sequence[str] | None) -> dict[str, list[str]]:
    """``--where`` items as ``{key: values}``; exits 2 for an item that is not KEY=VALUE."""
    from otel_sparse.analysis import parse_where

    with analysis_errors():
        return parse_where(where or [])


def flag(name: str, help: str) -> Any:
    """A boolean option that takes no value, shown without a type in ``--help``."""
    return typer.Option(name, help=help, metavar="")


WHERE_HELP = ("Only events where KEY=VALUE (a context key such as stage or step, a metadata "
              "key, a run.json parameter). Repeat: the same key means OR, different keys AND.")
BY_HELP = "One row (or line) per value of this key too: a context, metadata or parameter key."

# Options several commands declare alike. typer copies the annotated OptionInfo for every
# parameter, so one alias can serve many commands.
WhereOption = Annotated[Optional[list[str]], typer.Option(
    "--where", "-w", help=WHERE_HELP, show_default=False)]
"""``--where KEY=VALUE`` (repeatable); read it with ``parse_where_option``."""
ByHeadOption = Annotated[bool, flag("--by-head", "One row per head too.")]
OnlyMetricOption = Annotated[Optional[str], typer.Option(
    "--metric", "-m", help="Only this metric.")]


def key_text(value: Any) -> str:
    """A layer/head id as shown in tables: '-' when missing."""
    if _missing(value):
        return "-"
    return str(int(value))


@contextmanager
def analysis_errors() -> Iterator[None]:
    """Turn analysis errors and a missing pandas/matplotlib into one-line exits."""
    try:
        yield
    except AnalysisError as exc:
        fail(str(exc))
    except ImportError as exc:
        fail(f"{exc.name or exc} is needed for this command: pip install 'otel-sparse[analysis]'")


_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})


def check_run_paths(paths: Sequence[Path]) -> None:
    """Exit 2 naming the mistake when a run path is a flag's value (``--by-head true``)."""
    for path in paths:
        if not path.exists() and path.name.lower() in _BOOLEAN_WORDS:
            fail(f"{str(path)!r} is not a run folder: flags take no value "
                 f"(write --by-head, not --by-head {path})")


def load_runs(paths: Sequence[Path]) -> RunData:
    """Read runs for a command; exits 2 for a wrong path or a run without events."""
    from otel_sparse.analysis import read_run

    check_run_paths(paths)
    with analysis_errors():
        data = read_run([str(p) for p in paths])
    if data.events.empty:
        where = ", ".join(str(p) for p in paths)
        if data.non_numeric:
            fail(f"no numeric events in {where} ({data.non_numeric} non-numeric event(s) only)")
        fail(f"no events in {where}: the run is empty (or has not written its events yet)")
    return data


def main() -> None:
    """Entry point of the ``otel-sparse`` console script."""
    app()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"otel-sparse {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version and exit.")]
    = False,
) -> None:
    """Run, inspect and replay otel_sparse runs."""


class FrameFormat(str, enum.Enum):
    """How a command that gathers a table prints it: rich tables, or CSV / JSON lines."""

    table = "table"
    csv = "csv"
    json = "json"


def write_frame(frame: pd.DataFrame, output_format: FrameFormat) -> bool:
    """Write ``frame`` to stdout as CSV or JSON lines (one object a row; missing values null,
    layer/head/count as ints) if ``output_format`` asks for one; False for a rich table."""
    if output_format is FrameFormat.csv:
        sys.stdout.write(frame.to_csv(index=False))
        return True
    if output_format is FrameFormat.json:
        import pandas as pd

        for record in frame.to_dict("records"):
            clean = {k: None if v is None or (not isinstance(v, str) and pd.isna(v)) else
                     (int(v) if k in ("layer", "head", "count") else
                      v.item() if hasattr(v, "item") else v)
                     for k, v in record.items()}
            sys.stdout.write(json.dumps(clean) + "\n")
        return True
    return False
