"""The ``location`` of a log() call is the same string on every interpreter (3.9-3.13).

The cases below are logged through a real logger from a module written to disk and imported
(so the source is where 3.9/3.10 look for it); the expected strings are the same literals on
every interpreter, and scripts/python-versions.sh runs this file on 3.9 and 3.13 as well as
the main 3.11. The rebuilt names (the 3.9/3.10 path) are also compared with ``co_qualname``
wherever the interpreter has it: the plain twin of otel_sparse/_callsite.py.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import CodeType, ModuleType

import pytest

import otel_sparse.facade
import otel_sparse.pipeline
from otel_sparse import MicroMetricLogger, _callsite

Logger = type[MicroMetricLogger]

CASES_MODULE = "callsite_cases"
CASES = textwrap.dedent('''
    import functools
    from otel_sparse import MicroMetricLogger

    def log(value):
        MicroMetricLogger().log("m", value)

    def function():
        MicroMetricLogger().log("m", 1.0)

    def outer():
        def inner():
            MicroMetricLogger().log("m", 2.0)
        inner()

    class Attn:
        def forward(self):
            MicroMetricLogger().log("m", 3.0)

        @classmethod
        def cm(cls):
            MicroMetricLogger().log("m", 4.0)

        @staticmethod
        def sm():
            MicroMetricLogger().log("m", 5.0)

        class Inner:
            def deep(self):
                MicroMetricLogger().log("m", 6.0)

    class Sub(Attn):
        pass

    to_lambda = lambda: MicroMetricLogger().log("m", 7.0)

    def in_comprehension():
        [MicroMetricLogger().log("m", 8.0) for _ in range(1)]

    def in_generator():
        list(MicroMetricLogger().log("m", 9.0) for _ in range(1))

    def declared_global():
        global made_global
        def made_global():
            MicroMetricLogger().log("m", 10.0)
        made_global()

    def decorated(fn):
        @functools.wraps(fn)
        def wrapper():
            MicroMetricLogger().log("m", 11.0)
            return fn()
        return wrapper

    @decorated
    def wrapped():
        pass

    def lambda_in_function():
        (lambda: MicroMetricLogger().log("m", 12.0))()

    class AtClassLevel:
        [MicroMetricLogger().log("m", 13.0) for _ in range(1)]

    MicroMetricLogger().log("m", 0.0)
''')

EXPECTED = {
    0.0: "callsite_cases.<module>",
    1.0: "callsite_cases.function",
    2.0: "callsite_cases.outer.<locals>.inner",
    3.0: "callsite_cases.Attn.forward",
    4.0: "callsite_cases.Attn.cm",
    5.0: "callsite_cases.Attn.sm",
    6.0: "callsite_cases.Attn.Inner.deep",
    7.0: "callsite_cases.<lambda>",
    8.0: "callsite_cases.in_comprehension",  # 3.12+ inline comprehensions (PEP 709)
    9.0: "callsite_cases.in_generator.<locals>.<genexpr>",
    10.0: "callsite_cases.made_global",
    11.0: "callsite_cases.decorated.<locals>.wrapper",  # functools.wraps renames the function,
    12.0: "callsite_cases.lambda_in_function.<locals>.<lambda>",  # not its code
    13.0: "callsite_cases.AtClassLevel",
}
"""Logged value -> location: what 3.11's co_qualname writes (comprehensions dropped)."""


def _import_cases(tmp_path: Path) -> ModuleType:
    path = tmp_path / f"{CASES_MODULE}.py"
    path.write_text(CASES, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(CASES_MODULE, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[CASES_MODULE] = module
    try:
        spec.loader.exec_module(module)  # logs the module-level case (0.0)
    except BaseException:
        del sys.modules[CASES_MODULE]
        raise
    return module


@pytest.fixture
def cases(fresh_logger: Logger, tmp_path: Path) -> ModuleType:
    MicroMetricLogger.register_metric("m", float)
    fresh_logger(log_path=str(tmp_path / "run"), enabled_metrics="all")
    try:
        yield _import_cases(tmp_path)
    finally:
        sys.modules.pop(CASES_MODULE, None)


def _locations(logger: MicroMetricLogger) -> dict[float, str]:
    return {event.value: event.location for event in logger.log_queue}


def test_every_kind_of_call_site_has_its_qualified_name(cases: ModuleType) -> None:
    """Module code, functions, methods, class/static methods, nested functions and classes,
    lambdas, comprehensions, generators, `global` defs and wrapped functions: all logged
    (none dropped as internal_error) with the same location on every interpreter."""
    cases.function()
    cases.outer()
    cases.Attn().forward()
    cases.Attn.cm()
    cases.Attn.sm()
    cases.Attn.Inner().deep()
    cases.to_lambda()
    cases.in_comprehension()
    cases.in_generator()
    cases.declared_global()
    cases.wrapped()
    cases.lambda_in_function()
    logger = MicroMetricLogger()
    assert _locations(logger) == EXPECTED
    assert logger._drops.snapshot() == {}


def test_an_inherited_method_names_the_class_that_defines_it(cases: ModuleType) -> None:
    """``Sub().forward()`` runs Attn's code: the location is Attn's (the same on 3.9)."""
    cases.Sub().forward()
    assert _locations(MicroMetricLogger())[3.0] == "callsite_cases.Attn.forward"


def test_a_call_site_is_located_once(cases: ModuleType) -> None:
    """The second call from one call site takes the cached string (the same object)."""
    for _ in range(3):
        cases.function()
    located = [e.location for e in MicroMetricLogger().log_queue if e.value == 1.0]
    assert len(located) == 3
    assert located[0] is located[1] is located[2]


def test_timer_uses_the_same_location(fresh_logger: Logger, tmp_path: Path) -> None:
    """``logger.timer`` locates its caller by the same rule."""
    MicroMetricLogger.register_metric("t", float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")

    class Layer:
        def step(self) -> None:
            with logger.timer("t"):
                pass

    Layer().step()
    assert [e.location for e in logger.log_queue] == [
        f"{__name__}.test_timer_uses_the_same_location.<locals>.Layer.step"
    ]


def test_code_without_source_is_still_logged(fresh_logger: Logger, tmp_path: Path) -> None:
    """exec() of a string: no source to rebuild the name from on 3.9/3.10, so the
    function's own name; 3.11+ has co_qualname. Either way the event is logged."""
    MicroMetricLogger.register_metric("m", float)
    logger = fresh_logger(log_path=str(tmp_path), enabled_metrics="all")
    namespace: dict[str, object] = {"__name__": "generated", "logger": logger}
    exec(compile("class K:\n    def f(self):\n        logger.log('m', 1.0)\n", "<gen>", "exec"),
         namespace)
    namespace["K"]().f()  # type: ignore[operator]
    [event] = list(logger.log_queue)
    want = "generated.K.f" if sys.version_info >= (3, 11) else "generated.f"
    assert event.location == want


@pytest.mark.parametrize(
    ("qualname", "want"),
    [
        ("f", "f"),
        ("f.<locals>.<listcomp>", "f"),
        ("<listcomp>", "<module>"),
        ("C.<dictcomp>", "C"),
        ("f.<locals>.<setcomp>.<lambda>", "f.<locals>.<lambda>"),
        ("f.<locals>.<genexpr>", "f.<locals>.<genexpr>"),
    ],
)
def test_comprehension_scopes_are_dropped(qualname: str, want: str) -> None:
    """What 3.9-3.11 name a comprehension's own code reads as 3.12+ (inlined) names it."""
    assert _callsite.without_comprehensions(qualname) == want


def _all_codes(root: CodeType) -> list[CodeType]:
    found = [root]
    for const in root.co_consts:
        if isinstance(const, CodeType):
            found.extend(_all_codes(const))
    return found


@pytest.mark.skipif(sys.version_info < (3, 11), reason="co_qualname is 3.11+")
@pytest.mark.parametrize("module", [otel_sparse.facade, otel_sparse.pipeline, _callsite])
def test_rebuilt_names_equal_co_qualname(module: ModuleType) -> None:
    """The 3.9/3.10 rule (compile the file, name code objects as the compiler does) gives
    exactly ``co_qualname`` for every code object of these modules."""
    path = module.__file__
    assert path is not None
    table = _callsite.qualnames_in_source(path, vars(module))
    root = compile(Path(path).read_text(encoding="utf-8"), path, "exec", dont_inherit=True)
    codes = _all_codes(root)[1:]  # the module's own code is never a dict entry
    assert len(codes) >= 5
    assert {code: code.co_qualname for code in codes} == table


@pytest.mark.skipif(sys.version_info < (3, 11), reason="co_qualname is 3.11+")
def test_rebuilt_names_of_the_cases_equal_co_qualname(cases: ModuleType) -> None:
    """The same comparison over the cases above (nested, global, lambdas, comprehensions)."""
    path = cases.__file__
    assert path is not None
    table = _callsite.qualnames_in_source(path, vars(cases))
    assert table
    assert all(code.co_qualname == name for code, name in table.items())
