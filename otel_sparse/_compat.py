"""What Python 3.10+ has built in, written once for 3.9 (``requires-python >= 3.9``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sized
from itertools import zip_longest
from typing import Any, TypeVar, overload

_A = TypeVar("_A")
_B = TypeVar("_B")
_C = TypeVar("_C")
_D = TypeVar("_D")


@overload
def zip_strict(a: Iterable[_A], b: Iterable[_B], /) -> Iterator[tuple[_A, _B]]: ...
@overload
def zip_strict(
    a: Iterable[_A], b: Iterable[_B], c: Iterable[_C], /
) -> Iterator[tuple[_A, _B, _C]]: ...
@overload
def zip_strict(
    a: Iterable[_A], b: Iterable[_B], c: Iterable[_C], d: Iterable[_D], /
) -> Iterator[tuple[_A, _B, _C, _D]]: ...
def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """``zip(*iterables, strict=True)``: ValueError when their lengths differ.

    On 3.9, sized arguments (lists, tuples, arrays) are compared up front and zipped at C
    speed; anything else goes through a checking generator.
    """
    if sys.version_info >= (3, 10):
        return zip(*iterables, strict=True)
    if all(isinstance(it, Sized) for it in iterables):
        if len({len(it) for it in iterables}) > 1:  # type: ignore[arg-type]
            raise ValueError("zip_strict: arguments have different lengths")
        return zip(*iterables)
    return _checked_zip(iterables)


def _checked_zip(iterables: tuple[Iterable[Any], ...]) -> Iterator[tuple[Any, ...]]:
    missing = object()
    for row in zip_longest(*iterables, fillvalue=missing):
        if any(v is missing for v in row):
            raise ValueError("zip_strict: arguments have different lengths")
        yield row
