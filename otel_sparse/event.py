"""The event record of the MicroMetricLogger API, unchanged from sparse-attention-hub."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any


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
    value: Any | None
    metadata: dict[str, Any]
    location: str
