"""The one rule of the line cache: which values and which metadata a remembered line takes.

A remembered line is the text of an earlier event around its value, plus the series state
its values go to. Reusing it is right only when the plain path (``encode_event`` and the
aggregator's checks) would have written the same text and added the same float: that is
what these two functions decide, for every tier of the cache. Everything they refuse takes
the plain path, where it is written, checked and counted one event at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

INT_BOUND = 2**63
"""Largest int magnitude a remembered line takes: such ints are written by repr and become
floats without the checks huge ones need (too many digits to write, too large for a float)."""
COUNTER_FLOOR = 0
"""Least value a counter's line takes: counters only go up; negative values are refused,
counted as dropped on the plain path."""
ANY_FLOOR = -INT_BOUND
"""Least value any other line takes."""
NUMBER_TYPES = frozenset({float, int})
"""Value types a remembered line takes (not bool, not subclasses: they write differently)."""
METADATA_VALUE_TYPES = frozenset({int, str, bool, float})
"""Metadata value types a remembered line's key may hold. Not None: orjson writes None,
NaN and infinity all as null, so a key holding null could stand for any of them; not
containers: (1, 2) and [1, 2] write alike."""


def accepts(values: Sequence[Any], floors: Iterable[int]) -> bool:
    """Whether every value may take its remembered line: a finite float or an int within
    ``INT_BOUND``, not below the line's floor (``COUNTER_FLOOR`` or ``ANY_FLOOR``); the
    floors are read only when a value is negative.

    One C-level pass per check (no bytecode per value): the writer calls it on whole
    batches, and on one value at a time where a batch mixes remembered and new lines.
    """
    if not NUMBER_TYPES.issuperset(map(type, values)):
        return False
    try:
        total = sum(values)
        low, high = min(values, default=0), max(values, default=0)
    except OverflowError:  # an int too large for a float, among floats
        return False
    if total - total != 0 or low < -INT_BOUND or high > INT_BOUND:
        return False  # a NaN or infinity somewhere (or a sum that overflowed), or huge ints
    # a negative value in a batch with a counter's line: refused one by one
    return not (low < 0 and max(floors, default=ANY_FLOOR) >= COUNTER_FLOOR)


def accepts_metadata(metadata: Any) -> bool:
    """Whether a line with this metadata may be remembered: a dict of ints, strs, bools and
    finite floats (its key text then tells apart every metadata that writes differently)."""
    if type(metadata) is not dict:
        return False
    values = metadata.values()
    if not METADATA_VALUE_TYPES.issuperset(map(type, values)):
        return False
    return all(math.isfinite(v) for v in values if type(v) is float)
