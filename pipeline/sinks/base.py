"""The contract every sink follows. The publisher drives sinks from one thread:
``write`` batches in arrival order, ``flush`` before acknowledging, ``close`` once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Sink(Protocol):
    """Where events go. Implementations need not be thread-safe (one publisher thread)."""

    name: str

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        """Accept a batch of events (one frame's, usually); may buffer."""

    def flush(self, timeout: float | None = None) -> None:
        """Deliver everything accepted so far, or raise SinkError naming what failed."""

    def close(self) -> None:
        """Flush what can be flushed and release resources; idempotent."""
