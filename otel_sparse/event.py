"""The event record of the MicroMetricLogger API, unchanged from sparse-attention-hub.

``LogEvent`` keeps exactly the contract's five fields (``fields()``, ``asdict()`` and equality
see only those). The context an event was logged under (``logger.context(...)``/``step()``)
travels as the attribute ``context``, declared in the class body without an annotation, so
the dataclass machinery never makes it a field: None on every event (the class default)
unless ``log()`` runs under a context, which sets it to the shared ``EventContext``.
"""

from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any, Optional, cast


class EventContext:
    """An immutable snapshot of context values, shared by every event logged under it.

    Attributes:
        values: the context values (written under ``"context"`` on each event line).
        key: a hashable form of ``values`` (line caches use it), None if a value is unhashable.
    """

    __slots__ = ("key", "values")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        try:
            self.key: Any = tuple(sorted(values.items()))
            hash(self.key)
        except TypeError:
            self.key = None  # unhashable values: encoded per event, never cached


@dataclass
class LogEvent:
    """One call to ``MicroMetricLogger.log``, as queued and as written to the event file.

    Example:
        >>> from datetime import datetime
        >>> LogEvent(datetime(2026, 1, 1), "density", 0.5, {"layer_idx": 3}, "model.Attn.forward")
        ... # doctest: +ELLIPSIS
        LogEvent(timestamp=datetime.datetime(2026, 1, 1, 0, 0), metric='density', ...)
    """

    timestamp: datetime
    metric: str
    value: Optional[Any]  # evaluated at run time: the contract types, on 3.9 too
    metadata: dict[str, Any]
    location: str

    # Not annotated on purpose: an annotation would make it a sixth dataclass field. The
    # cast gives type checkers its type; the class default makes every event readable.
    context = cast(Optional[EventContext], None)  # evaluated at run time: 3.9 has no X | Y
    """The context the event was logged under, or None (not a field: see the module doc)."""


event_context: Any = attrgetter("context")
"""``event.context`` as a C-level getter, for ``map()`` over a batch of events."""
