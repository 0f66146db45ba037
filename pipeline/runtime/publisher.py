"""One publisher thread that owns the sinks: stream threads hand it events through a bounded
queue (backpressure, never a drop), it writes them to every sink in arrival order, and on
close it drains the queue and flushes every sink, so nothing accepted is lost."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import SinkError

if TYPE_CHECKING:
    from pipeline.sinks.base import Sink

logger = logging.getLogger(__name__)

_STOP = object()


class _Flush:
    """A marker: the publisher flushes every sink when it reaches it, then sets ``done``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


@dataclass
class PublisherStats:
    events: int = 0
    batches: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)


class Publisher:
    """Writes event batches to all sinks from one thread."""

    def __init__(
        self, sinks: Sequence[Sink], queue_size: int = 256, keep_latency: int = 20000
    ) -> None:
        self._sinks = list(sinks)
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="publisher", daemon=True)
        self._stats = PublisherStats()
        self._keep = keep_latency
        self._lock = threading.Lock()

    @property
    def sink_names(self) -> list[str]:
        return [s.name for s in self._sinks]

    def start(self) -> None:
        self._thread.start()

    def put(self, events: list[dict[str, Any]], decoded_at: float | None = None) -> None:
        """Queue one frame's events (blocks while the queue is full)."""
        if events:
            self._q.put((events, decoded_at))

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if isinstance(item, _Flush):
                item.error = self._flush_sinks(None)
                item.done.set()
                continue
            events, decoded_at = item
            self._write(events)
            with self._lock:
                self._stats.events += len(events)
                self._stats.batches += 1
                if decoded_at is not None and len(self._stats.latency_ms) < self._keep:
                    self._stats.latency_ms.append((time.time() - decoded_at) * 1000.0)

    def _write(self, events: list[dict[str, Any]]) -> None:
        for sink in self._sinks:
            try:
                sink.write(events)
            except Exception as exc:  # one sink failing must not stop the others
                with self._lock:
                    self._stats.sink_errors[sink.name] = (
                        self._stats.sink_errors.get(sink.name, 0) + 1
                    )
                logger.error("sink %s failed to write %d events: %s", sink.name, len(events), exc)

    def _flush_sinks(self, timeout: float | None) -> str | None:
        failures = []
        for sink in self._sinks:
            try:
                sink.flush(timeout)
            except Exception as exc:
                failures.append(f"{sink.name}: {exc}")
        return "; ".join(failures) or None

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until everything queued so far is written and every sink has flushed."""
        if not self._thread.is_alive():
            return
        marker = _Flush()
        self._q.put(marker)
        if not marker.done.wait(timeout):
            raise SinkError(f"sinks did not flush within {timeout} s")
        if marker.error:
            raise SinkError("could not deliver every event: " + marker.error)

    def stats(self) -> PublisherStats:
        with self._lock:
            s = self._stats
            return PublisherStats(s.events, s.batches, dict(s.sink_errors), list(s.latency_ms))

    def close(self, timeout: float | None = 60.0) -> None:
        """Drain everything queued, then flush and close every sink."""
        if self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(timeout)
        error = self._flush_sinks(timeout)
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as exc:
                logger.warning("closing sink %s: %s", sink.name, exc)
        if error:
            raise SinkError("could not deliver every event: " + error)
