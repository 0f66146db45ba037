"""A worker in a consumer group on the control topic.

The group assigns control-topic partitions; a stream runs on the worker that owns the
partition its ``stream_id`` key hashes to. On assignment the worker reads its partitions
from the beginning (compaction keeps the latest spec per stream) and starts the streams;
it keeps following updates and tombstones. On revocation it stops the streams of the lost
partitions (flushing their track-end / stream-end events) before the group hands them on,
so that a stream runs twice only while a dead worker's session has not yet expired.

Each record is decoded and validated on its own (``pipeline.control.streams.check_record``):
whatever is wrong with one record rejects that record (logged in one line, counted in
``emotion_stream_control_rejected_total{reason}``, the most recent shown in ``/readyz``) and
the loop goes on, at start-up and live. Streams connect only to hosts ``group.allow_hosts`` /
``group.deny_hosts`` allow, checked at every connect; beyond ``group.max_streams`` records
wait for a slot, with the reason in ``/readyz``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from pipeline.control.metrics import Metrics
from pipeline.control.streams import (
    RejectedRecordError,
    Rejections,
    RejectReason,
    StreamRecord,
    check_record,
    client_kwargs,
    shown_key,
    shown_value,
)
from pipeline.core.config import Assignor, GroupSettings, KafkaSettings, SourceSettings
from pipeline.core.hosts import HostPolicy
from pipeline.core.redact import cut, redact_text

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


#: Most valid records that wait for a slot (``group.max_streams``); beyond: rejected.
MAX_WAITING = 4096


def control_spec(url: str, stream_id: str, hosts: HostPolicy) -> Any:
    """The ``SourceSpec`` of a control-topic stream: its host is checked against ``hosts`` at
    every connect, and the ``ES_RTSP_*`` pair (meant for ``run``'s own sources) is not added;
    ``source.credentials`` gives each host its own entry at connect time."""
    from pipeline.media.sources import parse_source

    return parse_source(url, stream_id, hosts=hosts, env_credentials=False)


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
        make_spec: Callable[[str, str], Any] | None = None,
    ) -> None:
        self.host = host
        self.kafka = kafka
        self.settings = settings
        self.worker_id = worker_id
        self.media_root = media_root
        self.base_source = base_source
        self.metrics = metrics or Metrics()
        self.hosts = HostPolicy(settings.allow_hosts, settings.deny_hosts)
        self._make_spec = make_spec or self._control_spec
        self._running: dict[str, tuple[StreamRecord, int]] = {}  # stream_id -> (record, partition)
        # valid records over group.max_streams: stream_id -> (record, url, partition)
        self._waiting: dict[str, tuple[StreamRecord, str, int]] = {}
        self._assigned: set[int] = set()
        self.assignments = 0
        self.join_s: float | None = None
        self._t0 = time.monotonic()
        self.last_loop = time.monotonic()
        self.rejected = Rejections()  # bounded: latest reason per key, recent rejections
        for reason in RejectReason:  # every reason exported from the start, at 0
            self.metrics.rejected.labels(reason.value)

    def _control_spec(self, url: str, stream_id: str) -> Any:
        return control_spec(url, stream_id, self.hosts)

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
                "waiting": {sid: self._waiting_reason() for sid in sorted(self._waiting)},
                "rejected": self.rejected.recent(),
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
                if self._waiting:
                    self._start_waiting()  # a slot may have freed (a stream failed or ended)
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
        for sid in [k for k, (_r, _u, p) in self._waiting.items() if p in parts]:
            del self._waiting[sid]
        self._start_waiting()

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
        """Apply control records (latest per key wins within one poll). A record that does
        not decode or validate is rejected on its own; the others are applied."""
        latest: dict[bytes, tuple[bytes | None, int]] = {}
        for r in records:
            if r.key is None or r.partition not in self._assigned:
                continue
            latest[bytes(r.key)] = (r.value, r.partition)
        for key, (value, part) in latest.items():
            self.apply_one(key, value, part)

    def apply_one(self, key: str | bytes, value: bytes | None, partition: int) -> None:
        """Apply one record; whatever is wrong with it, the loop and the other streams go on."""
        try:
            self._apply_one(key, value, partition)
        except Exception as exc:  # a bug must not stop the worker (and every worker) for good
            self._reject(key, value, RejectReason.INTERNAL, f"{type(exc).__name__}: {exc}")
            logger.debug("control record %s: unexpected error", shown_key(key), exc_info=True)

    def _apply_one(self, key: str | bytes, value: bytes | None, partition: int) -> None:
        try:
            sid, rec, url = check_record(key, value, self.media_root, self.hosts)
        except RejectedRecordError as exc:
            self._reject(key, value, exc.reason, str(exc))
            self._drop(key, "rejected")
            return
        self.rejected.clear(sid)
        current = self._running.get(sid)
        if rec is None or url is None:  # tombstone
            if current is not None:
                logger.info("stream %s: removed from the control topic", sid)
            self._drop(sid, "removed")
            return
        if current is not None:
            if current[0] == rec:
                return
            logger.info("stream %s: spec changed: restarting", sid)
            self._stop_one(sid, "updated")
        self._waiting.pop(sid, None)
        self._start_or_wait(rec, url, partition)

    def _drop(self, key: str | bytes, reason: str) -> None:
        """Stop (or forget, if waiting) the stream of ``key``; a waiting one may take its slot."""
        try:
            sid = key.decode("utf-8") if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            return
        self._waiting.pop(sid, None)
        if sid in self._running:
            self._stop_one(sid, reason)
            self._start_waiting()
        self.metrics.waiting.set(len(self._waiting))

    def _reject(
        self, key: str | bytes, value: bytes | None, reason: RejectReason, detail: str
    ) -> None:
        detail = cut(redact_text(" ".join(detail.split())), 300)
        self.rejected.add(key, reason, detail)
        self.metrics.rejected.labels(reason.value).inc()
        logger.warning(
            "control record rejected (%s): key '%s': %s; value %s",
            reason.value,
            shown_key(key),
            detail,
            shown_value(value),
        )

    # ------------------------------------------------------------------ slots
    def _waiting_reason(self) -> str:
        return (
            f"waiting: this worker runs group.max_streams={self.settings.max_streams} streams:"
            " raise group.max_streams or add workers"
        )

    def _full(self) -> bool:
        """Every slot taken; a stream that failed or ended (its reason still shown) frees its
        slot, so that failing records cannot keep the others waiting."""
        limit = self.settings.max_streams
        if limit is None or len(self._running) < limit:
            return False
        states = getattr(self.host, "stream_states", None)
        if not callable(states):
            return True
        done = {sid for sid, st in states().items() if st.get("state") in ("failed", "ended")}
        return len(set(self._running) - done) >= limit

    def _start_or_wait(self, rec: StreamRecord, url: str, partition: int) -> None:
        if not self._full():
            self._start(rec, url, partition)
            return
        if len(self._waiting) >= MAX_WAITING:
            self._reject(
                rec.stream_id,
                None,
                RejectReason.CAPACITY,
                f"stream {rec.stream_id}: {MAX_WAITING} streams already wait for a slot"
                f" (group.max_streams={self.settings.max_streams}): raise it or add workers",
            )
            return
        if rec.stream_id not in self._waiting:
            logger.warning("stream %s: %s", rec.stream_id, self._waiting_reason())
        self._waiting[rec.stream_id] = (rec, url, partition)
        self.metrics.waiting.set(len(self._waiting))

    def _start_waiting(self) -> None:
        """Start waiting streams while there are free slots (oldest first)."""
        while self._waiting and not self._full():
            sid = next(iter(self._waiting))
            rec, url, partition = self._waiting.pop(sid)
            if partition in self._assigned:
                logger.info("stream %s: a slot is free: starting", sid)
                self._start(rec, url, partition)
        self.metrics.waiting.set(len(self._waiting))

    def _start(self, rec: StreamRecord, url: str, partition: int) -> None:
        try:
            spec = self._make_spec(url, rec.stream_id)
            self.host.add_stream(
                spec, rec.source_settings(self.base_source), session_id=rec.session_id
            )
        except Exception as exc:  # one stream's error stays its own
            self.metrics.stream_errors.inc()
            logger.warning(
                "stream %s: cannot start %s: %s",
                rec.stream_id,
                cut(rec.display, 300),
                cut(redact_text(" ".join(str(exc).split())), 300),
            )
            return
        self._running[rec.stream_id] = (rec, partition)
        self.metrics.stream_starts.inc()
