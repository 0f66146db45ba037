"""Delivery from the worker's event log to the sinks.

Stream threads ``put`` each frame's events: they are appended to the durable event log
(``pipeline.runtime.eventlog``) and the call returns; no sink is touched on the pipeline's
threads. One delivery thread per sink reads the log from that sink's own cursor, writes a
batch, waits for the sink's acknowledgement (``flush``: Kafka acks, the Redis script applied,
the JSONL file flushed) and only then commits the cursor. A sink that fails is closed, rebuilt
(a fresh Kafka producer, a new Redis connection) and retried with capped backoff, from the
same position: it falls behind on its own while the pipeline and the other sinks go on, and
drains its backlog in log order (so in order per stream) when it is back.

A delivery thread never stays dead: an unexpected error in it (not a sink failure, which is
retried as above) is logged in one line and counted (``restarts``), and its loop starts again
from the sink's committed position after the retry delay. Events a sink or the log rejected
for good (a row that does not decode, a frame Redis can never apply) are counted per sink
(``rejected``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.config import DeliverySettings
from pipeline.core.errors import SinkError
from pipeline.runtime.eventlog import EventLog, LogRow, check_drained

if TYPE_CHECKING:
    from pipeline.sinks.base import Sink

logger = logging.getLogger(__name__)

SinkFactory = Callable[[], "Sink"]


@dataclass
class PublisherStats:
    events: int = 0
    batches: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ChannelCounters:
    delivered: int = 0
    retried: int = 0
    failures: int = 0
    outages: list[float] = field(default_factory=list)
    last_error: str | None = None
    down_since: float | None = None
    #: events the sink rejected for good (``Sink.take_rejected``, when it has one)
    rejected: int = 0
    #: times the delivery loop failed unexpectedly and was started again
    restarts: int = 0


class SinkChannel:
    """One sink's delivery thread: log rows after its cursor -> write + flush -> commit."""

    def __init__(
        self,
        log: EventLog,
        sink: Sink,
        rebuild: SinkFactory | None,
        settings: DeliverySettings,
        flush_timeout_s: float,
        on_rows: Callable[[list[LogRow]], None] | None = None,
    ) -> None:
        self.name = sink.name
        self._log = log
        self._sink: Sink | None = sink
        self._rebuild = rebuild
        self._settings = settings
        self._flush_timeout = flush_timeout_s
        self._on_rows = on_rows
        self.counters = ChannelCounters()
        self._lock = threading.Lock()
        self.draining = threading.Event()
        self.abort = threading.Event()
        self.cursor = log.attach(self.name)
        self.thread = threading.Thread(target=self._run, name=f"sink-{self.name}", daemon=True)

    def _run(self) -> None:
        """The thread: the delivery loop, started again (counted) whenever it fails."""
        delay = self._settings.retry_initial_s
        while True:
            try:
                self._loop()
                return
            except Exception as exc:
                with self._lock:
                    self.counters.restarts += 1
                    restarts = self.counters.restarts
                logger.error(
                    "sink %s: delivery thread failed (%s: %s); restarting it in %.1f s "
                    "(restart %d, from event %d)",
                    self.name,
                    type(exc).__name__,
                    str(exc).splitlines()[0][:200] if str(exc) else "",
                    delay,
                    restarts,
                    self.cursor,
                )
                logger.debug("sink %s: delivery thread failure", self.name, exc_info=True)
            if self.abort.wait(delay):
                return
            delay = min(delay * 2, self._settings.retry_max_s)

    def _loop(self) -> None:
        delay = self._settings.retry_initial_s
        while not self.abort.is_set():
            rows = self._log.read(self.cursor, self._settings.batch_rows)
            if not rows:
                if self.draining.is_set():
                    return
                self._log.wait_beyond(self.cursor, 0.2)
                continue
            if self._deliver(rows):
                delay = self._settings.retry_initial_s
            else:
                self.abort.wait(delay)
                delay = min(delay * 2, self._settings.retry_max_s)

    def _deliver(self, rows: list[LogRow]) -> bool:
        events = [e for row in rows for e in row.events]
        try:
            if self._sink is None:
                assert self._rebuild is not None
                self._sink = self._rebuild()
            self._sink.write(events)
            self._sink.flush(self._flush_timeout)
        except Exception as exc:  # any sink failure: keep the cursor, retry later
            self._take_rejected()
            self._failed(exc, len(events))
            return False
        self._take_rejected()
        self._log.commit(self.name, rows[-1].seq)
        self.cursor = rows[-1].seq
        with self._lock:
            c = self.counters
            c.delivered += len(events)
            if c.down_since is not None:
                c.outages.append(round(time.monotonic() - c.down_since, 3))
                logger.info("sink %s: delivering again after %.1f s", self.name, c.outages[-1])
                c.down_since = None
        if self._on_rows is not None:
            self._on_rows(rows)
        return True

    def _take_rejected(self) -> None:
        take = getattr(self._sink, "take_rejected", None)
        if take is not None:
            n = int(take())
            with self._lock:
                self.counters.rejected += n

    def _failed(self, exc: BaseException, n: int) -> None:
        with self._lock:
            c = self.counters
            c.retried += n
            c.failures += 1
            c.last_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            first = c.down_since is None
            if first:
                c.down_since = time.monotonic()
        if first:
            logger.warning(
                "sink %s: delivery failed (%s); events wait in the event log and are retried",
                self.name,
                c.last_error,
            )
        if self._rebuild is not None and self._sink is not None:
            self._close_sink()

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            sink.close()
        except Exception as exc:
            logger.debug("closing sink %s: %s", self.name, exc)

    def snapshot(self) -> dict[str, Any]:
        pending, age = self._log.pending(self.name)
        with self._lock:
            c = self.counters
            return {
                "pending": pending,
                "oldest_pending_age_s": age,
                "delivered": c.delivered,
                "retried": c.retried,
                "failures": c.failures,
                "dropped": self._log.dropped.get(self.name, 0),
                "rejected": self._log.rejected.get(self.name, 0) + c.rejected,
                "restarts": c.restarts,
                "down": c.down_since is not None,
                "outages_s": list(c.outages),
                "last_error": c.last_error,
            }

    def close(self, join_s: float) -> None:
        self.abort.set()
        if self.thread.ident is not None:
            self.thread.join(join_s)
        if not self.thread.is_alive():
            self._close_sink()


class Publisher:
    """Accepts events into the event log and runs one delivery thread per sink."""

    def __init__(
        self,
        log: EventLog,
        sinks: Sequence[Sink],
        rebuild: Mapping[str, SinkFactory] | None = None,
        settings: DeliverySettings | None = None,
        flush_timeout_s: float = 60.0,
        keep_latency: int = 20000,
    ) -> None:
        self.log = log
        self.settings = settings or log.settings
        rebuild = rebuild or {}
        self._stats = PublisherStats()
        #: the most recent decode -> delivered latencies (ms): a rolling window, so long runs
        #: report current figures
        self._latency: deque[float] = deque(maxlen=keep_latency)
        self._lock = threading.Lock()
        self._channels = [
            SinkChannel(
                log,
                s,
                rebuild.get(s.name),
                self.settings,
                flush_timeout_s,
                self._record_latency if i == 0 else None,
            )
            for i, s in enumerate(sinks)
        ]
        self._started = False
        self._closed = False
        self._final: dict[str, dict[str, Any]] | None = None
        self._warn_orphans()

    def _warn_orphans(self) -> None:
        """A sink this worker delivered to before but no longer has keeps its events in the
        log (and the log from trimming below them): say so, and how to let go of them."""
        for name in sorted(set(self.log.sinks()) - set(self.sink_names)):
            n, age = self.log.pending(name)
            logger.warning(
                "event log %s keeps %d undelivered events (oldest %.0f s) for sink %s, which this "
                "worker no longer has: add the sink back to deliver them, or drop them with "
                "`emotion-stream eventlog forget %s --worker-id %s` while the worker is stopped",
                self.log.folder,
                n,
                age,
                name,
                name,
                self.log.folder.name,
            )

    @property
    def sink_names(self) -> list[str]:
        return [ch.name for ch in self._channels]

    def start(self) -> None:
        if not self._started:
            self._started = True
            for ch in self._channels:
                ch.thread.start()

    def put(self, events: list[dict[str, Any]], decoded_at: float | None = None) -> None:
        """Store one frame's events durably (blocks only under the ``block`` full policy)."""
        if not events:
            return
        self.log.append(events, decoded_at)
        with self._lock:
            self._stats.events += len(events)
            self._stats.batches += 1

    def _record_latency(self, rows: list[LogRow]) -> None:
        now = time.time()
        with self._lock:
            self._latency.extend((now - r.born) * 1000.0 for r in rows if r.born is not None)

    def behind(self, target: int | None = None) -> dict[str, int]:
        """Sinks whose cursor is below ``target`` (default: everything stored): seq gap."""
        goal = self.log.last_seq if target is None else target
        return {ch.name: goal - ch.cursor for ch in self._channels if ch.cursor < goal}

    def flush(self, timeout: float | None = 60.0) -> None:
        """Block until every sink has acknowledged everything stored so far."""
        if not self._started or self._closed:
            return
        target = self.log.last_seq
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.behind(target):
            if deadline is not None and time.monotonic() > deadline:
                errors = {ch.name: ch.counters.last_error for ch in self._channels}
                listed = ", ".join(f"{n} ({errors.get(n)})" for n in self.behind(target))
                raise SinkError(
                    f"sinks not caught up within {timeout} s: {listed}; the events stay in the "
                    f"event log {self.log.folder}"
                )
            time.sleep(0.02)

    def stats(self) -> PublisherStats:
        sinks = self._final or {ch.name: ch.snapshot() for ch in self._channels}
        with self._lock:
            s = self._stats
            errors = {n: v["failures"] for n, v in sinks.items() if v["failures"]}
            return PublisherStats(s.events, s.batches, errors, list(self._latency), sinks)

    def close(self, timeout: float | None = None) -> None:
        """Let every sink catch up (``drain_timeout_s``), stop the delivery threads, close the
        sinks and the log. SinkError if events remain: they stay in the log for the next start."""
        if self._closed:
            return
        self._closed = True
        wait = self.settings.drain_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        for ch in self._channels:
            ch.draining.set()
        for ch in self._channels:
            if self._started:
                ch.thread.join(max(deadline - time.monotonic(), 0.0))
        for ch in self._channels:
            ch.close(5.0 if self._started else 0.0)
        self._final = {ch.name: ch.snapshot() for ch in self._channels}
        try:
            check_drained(self.log, [ch.name for ch in self._channels])
        finally:
            self.log.close()
