"""Kafka sink: one message per event, key = stream id (one stream stays ordered in one
partition), value = ``encode(event)``; ``flush`` raises if any accepted event failed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from pipeline.core.config import KafkaSettings
from pipeline.core.errors import SinkError
from pipeline.core.events import encode
from pipeline.core.kafka_client import ensure_topic, make_producer

logger = logging.getLogger(__name__)


class KafkaSink:
    """Creates the topic if missing (``settings.partitions``), then produces asynchronously.

    Delivery failures are counted by callbacks on the producer's I/O thread; ``flush``
    waits for every send and raises SinkError if any of them failed, so nothing accepted
    is lost silently.
    """

    def __init__(self, settings: KafkaSettings, topic: str | None = None) -> None:
        self.settings = settings
        self.topic = topic or settings.topic
        self.name = f"kafka:{self.topic}"
        self.partitions = ensure_topic(
            settings, self.topic, settings.partitions, settings.replication
        )
        self._producer: Any = make_producer(settings)
        self._lock = threading.Lock()
        self._sent = 0
        self._failed = 0
        self._first_error: str | None = None

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            if self._first_error is None:
                self._first_error = f"{type(exc).__name__}: {exc}"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        if self._producer is None:
            raise SinkError(f"{self.name} is closed")
        from kafka.errors import KafkaError

        for event in events:
            key = str(event["stream_id"]).encode()
            try:
                future = self._producer.send(self.topic, key=key, value=encode(event))
            except KafkaError as exc:
                self._on_error(exc)
                raise SinkError(
                    f"Kafka at {self.settings.bootstrap}: send to {self.topic!r} failed ({exc}): "
                    "check the broker"
                ) from exc
            future.add_errback(self._on_error)
            self._sent += 1

    def flush(self, timeout: float | None = None) -> None:
        if self._producer is None:
            return
        from kafka.errors import KafkaTimeoutError

        try:
            self._producer.flush(timeout)
        except KafkaTimeoutError as exc:
            raise SinkError(
                f"Kafka at {self.settings.bootstrap}: events not acknowledged within {timeout} s: "
                "check the broker"
            ) from exc
        with self._lock:
            failed, first = self._failed, self._first_error
            self._failed, self._first_error = 0, None
        if failed:
            raise SinkError(
                f"Kafka at {self.settings.bootstrap}: {failed} events to {self.topic!r} were not "
                f"delivered ({first}): check the broker and replay the source"
            )

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        from kafka.errors import KafkaError

        try:
            producer.flush(30)
        except KafkaError as exc:  # flush() already reported undelivered events
            logger.warning("%s: closing with undelivered events: %s", self.name, exc)
        finally:
            producer.close(timeout=5)
