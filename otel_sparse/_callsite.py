"""The ``location`` of a ``log()`` call: ``"<module>.<qualified name of the calling code>"``.

The contract asks for "module.function" or "module.Class.method"; we write the caller's
qualified name (PEP 3155), so nested functions read ``module.outer.<locals>.inner``, lambdas
``module.f.<locals>.<lambda>`` and module-level code ``module.<module>``. The string must
be the same for the same call on every interpreter we support (3.9-3.13):

- 3.11+ stores that name on the code object (``co_qualname``).
- 3.9 and 3.10 do not. There it is rebuilt the way the compiler builds it, from the caller's
  source file (``linecache``, which also knows notebook cells): compile the file once, walk
  its code objects from the module down, and look the running code object up in that table
  (code objects compare and hash by content; code compiled from a rewritten tree, as pytest
  does with test modules, by first line and name). Cost: one compile per source file, the
  first time a call site in it logs; the facade caches the result per call site anyway.
- 3.12 inlines list/set/dict comprehensions into their enclosing code (PEP 709), so a call
  inside one has no ``<listcomp>`` code object of its own there. Those name parts are
  dropped on every version, so ``[log(...) for ...]`` in ``f`` reads ``module.f`` everywhere.

Without source (code made by ``exec`` of a string), 3.9/3.10 fall back on the function's own
name (``co_name``), as the hub's logger did for functions.
"""

from __future__ import annotations

import dis
import linecache
from collections.abc import Mapping
from types import CodeType, FrameType
from typing import Any, Optional

_CO_OPTIMIZED = 0x0001  # inspect.CO_OPTIMIZED: function scopes (not module or class bodies)
_COMPREHENSIONS = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>"})
"""Code objects 3.12+ no longer make (PEP 709); ``<genexpr>`` stays a scope everywhere."""
_SCOPES_WITHOUT_LOCALS = _COMPREHENSIONS | {"<genexpr>"}
"""Function-like scopes whose children are named without ``<locals>`` (compiler rule)."""
_LOCALS = "<locals>"

_by_file: dict[str, dict[Any, Optional[str]]] = {}
"""Source file -> {code object, and (first line, name) -> its qualified name}, for 3.9/3.10.

The code object itself is the exact key. (first line, name) serves code compiled from a
rewritten tree of the same source, which compares unequal: pytest's assertion rewriting
does that to every test module. A (line, name) pair two names share maps to None."""


def location(frame: FrameType) -> str:
    """``"<module>.<qualified name>"`` of the code running in ``frame`` (see the module doc)."""
    module = frame.f_globals.get("__name__", "unknown")
    return f"{module}.{qualified_name(frame.f_code, frame.f_globals)}"


def qualified_name(code: CodeType, module_globals: Mapping[str, Any]) -> str:
    """The code's qualified name as 3.11's ``co_qualname`` has it, comprehensions dropped."""
    name: Optional[str] = getattr(code, "co_qualname", None)  # 3.11+
    if name is None:
        name = _rebuilt(code, module_globals) or code.co_name
    return without_comprehensions(name)


def without_comprehensions(qualname: str) -> str:
    """``f.<locals>.<listcomp>`` -> ``f``; ``<listcomp>`` -> ``<module>`` (see module doc).

    Only a comprehension's own scope goes: what is defined inside one (a lambda) keeps its
    ``<locals>`` from the enclosing function, as 3.12+ writes it.
    """
    parts = qualname.split(".")
    if not _COMPREHENSIONS.intersection(parts):
        return qualname
    kept = [p for p in parts if p not in _COMPREHENSIONS]
    if kept and kept[-1] == _LOCALS:
        kept.pop()
    return ".".join(kept) or "<module>"


def _rebuilt(code: CodeType, module_globals: Mapping[str, Any]) -> Optional[str]:
    """The compiler's qualified name for ``code`` (3.9/3.10); None without matching source."""
    filename = code.co_filename
    table = _by_file.get(filename)
    if table is None:  # (IPython names every cell run a file of its own)
        table = {}
        for known, name in qualnames_in_source(filename, module_globals).items():
            table[known] = name
            place = (known.co_firstlineno, known.co_name)
            table[place] = name if table.get(place, name) == name else None
        _by_file[filename] = table
    found = table.get(code)
    if found is None:
        found = table.get((code.co_firstlineno, code.co_name))
    return found


def qualnames_in_source(filename: str, module_globals: Mapping[str, Any]) -> dict[CodeType, str]:
    """Every code object compiled from ``filename``'s source -> its qualified name ({} when
    the source is unavailable or does not compile)."""
    source = "".join(linecache.getlines(filename, dict(module_globals)))
    if not source:
        return {}
    try:
        root = compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return {}
    table: dict[CodeType, str] = {}
    _walk(root, None, table)
    return table


def _walk(parent: CodeType, parent_name: Optional[str], table: dict[CodeType, str]) -> None:
    """The rule of CPython's ``compiler_set_qualname`` (3.3-3.13), applied to children."""
    stored_global: Optional[set[str]] = None
    for child in parent.co_consts:
        if not isinstance(child, CodeType):
            continue
        name = child.co_name
        if parent_name is None:  # defined at module level
            qualname = name
        else:
            if _is_def(child):
                if stored_global is None:
                    stored_global = _stored_globals(parent)
                if name in stored_global:  # `global name` then `def name` / `class name`
                    qualname = name
                    table[child] = qualname
                    _walk(child, qualname, table)
                    continue
            base = parent_name
            if parent.co_flags & _CO_OPTIMIZED and parent.co_name not in _SCOPES_WITHOUT_LOCALS:
                base += "." + _LOCALS
            qualname = f"{base}.{name}"
        table[child] = qualname
        _walk(child, qualname, table)



def _is_def(code: CodeType) -> bool:
    """A ``def`` or ``class`` body (the scopes ``global name`` applies to), not a lambda or
    comprehension."""
    return code.co_name not in _SCOPES_WITHOUT_LOCALS and code.co_name != "<lambda>"


def _stored_globals(code: CodeType) -> set[str]:
    """Names ``code`` stores as globals: a nested ``def``/``class`` declared ``global``."""
    return {str(i.argval) for i in dis.get_instructions(code) if i.opname == "STORE_GLOBAL"}

