"""A worker in a consumer group on the control topic.

The group assigns control-topic partitions; a stream runs on the worker that owns the
partition its ``stream_id`` key hashes to. On assignment the worker reads its partitions
from the beginning (compaction keeps the latest spec per stream) and starts the streams;
it keeps following updates and tombstones. On revocation it stops the streams of the lost
partitions (flushing their track-end / stream-end events) before the group hands them on,
so that a stream runs twice only while a dead worker's session has not yet expired.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from pipeline.control.metrics import Metrics
from pipeline.control.streams import StreamRecord, client_kwargs, validate_record
from pipeline.core.config import Assignor, GroupSettings, KafkaSettings, SourceSettings
from pipeline.core.errors import ConfigError, EmotionStreamError

logger = logging.getLogger(__name__)

__all__ = ["Assignor", "GroupRunner", "GroupSettings", "StreamHost"]


class StreamHost(Protocol):
    """What the group needs of ``pipeline.runtime.worker.Worker``."""

    def add_stream(
        self,
        spec: Any,
        source_settings: SourceSettings | None = None,
        session_id: str | None = None,
    ) -> None: ...

    def remove_stream(
        self, stream_id: str, reason: str = "removed", timeout: float = 30.0
    ) -> None: ...

    def stream_ids(self) -> list[str]: ...


def _sinks_behind(host: Any) -> dict[str, Any]:
    """Sinks of the host's event log that are failing or lagging (hosts without one: none)."""
    behind = getattr(host, "sinks_behind", None)
    return behind() if callable(behind) else {}


def _default_make_spec(url: str, stream_id: str) -> Any:
    from pipeline.media.sources import parse_source

    return parse_source(url, stream_id)


class GroupRunner:
    """Drives a ``StreamHost`` from the control topic through one consumer group."""

    def __init__(
        self,
        host: StreamHost,
        kafka: KafkaSettings,
        settings: GroupSettings,
        worker_id: str,
        media_root: Path | None,
        base_source: SourceSettings,
        metrics: Metrics | None = None,
        make_spec: Callable[[str, str], Any] = _default_make_spec,
    ) -> None:
        self.host = host
        self.kafka = kafka
        self.settings = settings
        self.worker_id = worker_id
        self.media_root = media_root
        self.base_source = base_source
        self.metrics = metrics or Metrics()
        self._make_spec = make_spec
        self._running: dict[str, tuple[StreamRecord, int]] = {}  # stream_id -> (record, partition)
        self._assigned: set[int] = set()
        self.assignments = 0
        self.join_s: float | None = None
        self._t0 = time.monotonic()
        self.last_loop = time.monotonic()
        self.rejected: dict[str, str] = {}

    # ------------------------------------------------------------------ health
    def live(self) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_loop
        limit = max(30.0, self.settings.max_poll_interval_ms / 1000)
        return age < limit, {"loop_age_s": round(age, 3), "worker_id": self.worker_id}

    def ready(self) -> tuple[bool, dict[str, Any]]:
        ok, detail = self.live()
        detail.update(
            {
                "joined": self.assignments > 0,
                "partitions": sorted(self._assigned),
                "streams": sorted(self._running),
                "sinks_behind": _sinks_behind(self.host),
            }
        )
        states = getattr(self.host, "stream_states", None)
        if callable(states):  # connecting / running / reconnecting / failed (with the reason)
            detail["stream_states"] = states()
        return ok and self.assignments > 0, detail

    # ------------------------------------------------------------------ loop
    def _consumer(self) -> Any:
        from kafka import KafkaConsumer
        from kafka.coordinator.assignors.cooperative_sticky import (
            CooperativeStickyAssignor,
        )
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

        s = self.settings
        strategy: tuple[Any, ...] = (
            (CooperativeStickyAssignor,)
            if s.assignor is Assignor.COOPERATIVE
            else (RangePartitionAssignor, RoundRobinPartitionAssignor)
        )
        return KafkaConsumer(
            **client_kwargs(self.kafka),
            group_id=s.group,
            client_id=self.worker_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            partition_assignment_strategy=strategy,
            fetch_max_wait_ms=100,
        )

    def run(self, stop: threading.Event) -> None:
        """Follow the control topic until ``stop`` is set; then stop every stream (flushing)
        and leave the group, so that the others take the partitions over at once."""
        from kafka import ConsumerRebalanceListener

        runner = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                runner._on_revoked({tp.partition for tp in revoked}, "rebalance")

            def on_partitions_assigned(self, assigned: Any) -> None:
                runner._on_assigned({tp.partition for tp in assigned})

            def on_partitions_lost(self, lost: Any) -> None:
                runner._on_revoked({tp.partition for tp in lost}, "partitions_lost")

        consumer = self._consumer()
        self._t0 = time.monotonic()
        consumer.subscribe([self.kafka.control_topic], listener=Listener())
        logger.info(
            "worker %s: joining group %s on %s",
            self.worker_id,
            self.settings.group,
            self.kafka.control_topic,
        )
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=self.settings.poll_ms)
                self.last_loop = time.monotonic()
                # Newly assigned partitions have no committed offset (nothing is committed):
                # they start at the earliest record, i.e. the whole compacted log.
                self.apply(r for recs in batch.values() for r in recs)
        finally:
            self._stop_streams(set(self._running), "shutdown")
            consumer.close()
            logger.info("worker %s: left group %s", self.worker_id, self.settings.group)

    # ------------------------------------------------------------------ rebalance
    def _on_assigned(self, parts: set[int]) -> None:
        """Eager assignors pass the whole new set, cooperative ones only the added part."""
        new = parts - self._assigned
        self._assigned |= parts
        self.assignments += 1
        if self.assignments == 1:
            self.join_s = time.monotonic() - self._t0
            logger.info("worker %s: joined group in %.2f s", self.worker_id, self.join_s)
        self.metrics.rebalances.labels("assigned").inc()
        self.metrics.partitions.set(len(self._assigned))
        logger.info(
            "worker %s: assigned partitions %s (new %s)",
            self.worker_id,
            sorted(self._assigned),
            sorted(new),
        )

    def _on_revoked(self, parts: set[int], reason: str) -> None:
        self.metrics.rebalances.labels("revoked").inc()
        self._assigned -= parts
        self.metrics.partitions.set(len(self._assigned))
        ids = {sid for sid, (_rec, p) in self._running.items() if p in parts}
        if ids:
            logger.info(
                "worker %s: partitions %s revoked: stopping %s",
                self.worker_id,
                sorted(parts),
                sorted(ids),
            )
        self._stop_streams(ids, reason)

    def _stop_streams(self, ids: Iterable[str], reason: str) -> None:
        """Stop streams in parallel (each flushes its end events); returns when all did."""
        ids = list(ids)
        threads = [
            threading.Thread(target=self._stop_one, args=(sid, reason), name=f"stop-{sid}")
            for sid in ids
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_one(self, stream_id: str, reason: str) -> None:
        t0 = time.monotonic()
        try:
            self.host.remove_stream(stream_id, reason)
        except Exception:
            logger.exception("stream %s: stop failed", stream_id)
        self._running.pop(stream_id, None)
        self.metrics.stream_stops.labels(reason).inc()
        self.metrics.stop_seconds.observe(time.monotonic() - t0)

    # ------------------------------------------------------------------ records
    def apply(self, records: Iterable[Any]) -> None:
        """Apply control records (latest per key wins within one poll)."""
        latest: dict[str, tuple[bytes | None, int]] = {}
        for r in records:
            if r.key is None or r.partition not in self._assigned:
                continue
            latest[r.key.decode(errors="replace")] = (r.value, r.partition)
        for key, (value, part) in latest.items():
            self.apply_one(key, value, part)

    def apply_one(self, key: str, value: bytes | None, partition: int) -> None:
        current = self._running.get(key)
        if value is None:
            self.rejected.pop(key, None)
            if current is not None:
                logger.info("stream %s: removed from the control topic", key)
                self._stop_one(key, "removed")
            return
        try:
            rec = StreamRecord.from_bytes(key, value)
            url = validate_record(rec, self.media_root)
        except ConfigError as exc:
            self._reject(key, str(exc))
            if current is not None:
                self._stop_one(key, "rejected")
            return
        if current is not None:
            if current[0] == rec:
                return
            logger.info("stream %s: spec changed: restarting", key)
            self._stop_one(key, "updated")
        self._start(rec, url, partition)

    def _reject(self, key: str, reason: str) -> None:
        self.rejected[key] = reason
        self.metrics.rejected.inc()
        logger.warning("control record rejected: %s", reason)

    def _start(self, rec: StreamRecord, url: str, partition: int) -> None:
        try:
            spec = self._make_spec(url, rec.stream_id)
            self.host.add_stream(
                spec, rec.source_settings(self.base_source), session_id=rec.session_id
            )
        except EmotionStreamError as exc:
            self.metrics.stream_errors.inc()
            logger.warning("stream %s: cannot start %s: %s", rec.stream_id, rec.display, exc)
            return
        self._running[rec.stream_id] = (rec, partition)
        self.metrics.stream_starts.inc()
