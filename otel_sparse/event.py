"""The event record of the MicroMetricLogger API, unchanged from sparse-attention-hub."""

from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter
from typing import Any, Optional


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
    value: Optional[Any]  # typing.Optional: a dataclass field's annotation must work on 3.9
    metadata: dict[str, Any]
    location: str


# log() under context()/step() sets `event.context` (an EventContext) on the event. The
# default lives on the class, as neither a field nor a type hint: the dataclass keeps exactly
# the contract's five fields, and the writer reads every event's context without a failing
# lookup.
LogEvent.context = None  # type: ignore[attr-defined]
event_context: Any = attrgetter("context")
"""``event.context``: the event's EventContext, or None."""
