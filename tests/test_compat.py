"""otel_sparse/_compat.py: 3.10+ built-ins written once for 3.9 (run on 3.9, 3.11 and 3.13)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from otel_sparse._compat import zip_strict


def _gen(n: int) -> Iterator[int]:
    yield from range(n)


def test_zip_strict_pairs_equal_lengths() -> None:
    assert list(zip_strict([1, 2], "ab")) == [(1, "a"), (2, "b")]
    assert list(zip_strict(_gen(3), _gen(3), [7, 8, 9], (0, 0, 0))) == [
        (0, 0, 7, 0), (1, 1, 8, 0), (2, 2, 9, 0)
    ]
    assert list(zip_strict([], ())) == []


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1, 2, 3], [1, 2]),  # sized: checked up front on 3.9
        ([1], [1, 2]),
        (_gen(3), _gen(2)),  # iterators: checked as they run out
        (_gen(1), _gen(2)),
    ],
)
def test_zip_strict_refuses_different_lengths(a: object, b: object) -> None:
    with pytest.raises(ValueError):
        list(zip_strict(a, b))  # type: ignore[call-overload]
