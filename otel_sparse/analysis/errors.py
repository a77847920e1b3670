"""What analysis raises: one message fit for users per error."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass



class AnalysisError(Exception):
    """A run cannot be read or does not hold what was asked for (message fit for users)."""


class RunNotFoundError(AnalysisError, FileNotFoundError):
    """A path does not exist or holds no run."""


class UnknownMetricError(AnalysisError, LookupError):
    """A metric that the run never logged."""

    def __str__(self) -> str:  # LookupError would repr() the message
        return str(self.args[0]) if self.args else ""
