"""The control plane: stream specifications as records of a compacted Kafka topic.

Each record is keyed by ``stream_id`` (UTF-8) and holds a ``StreamRecord`` as JSON; a
tombstone (``None`` value) removes the stream. Compaction keeps the latest record per key,
so reading the topic from the beginning yields the current set of streams. The producer's
default partitioner (murmur2 of the key) decides a stream's partition, and the consumer
group on this topic decides which worker owns which partitions, hence which streams.

Records are untrusted input for a worker: ``validate_record`` admits only the allowed URL
schemes and ``file:`` sources under the worker's media root. Credentials in URLs are
redacted in logs (``redact_url``); a URL may instead name them as ``${ENV_VAR}`` references
that only the worker expands (``expand_env_refs``), so secrets need not sit in the topic.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.config import DropPolicy, KafkaSettings, SourceSettings
from pipeline.core.errors import ConfigError, SinkError
from pipeline.media.sources import STREAM_ID_PATTERN

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "emotion-stream.stream/v1"
ALLOWED_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "file"})
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StreamRecord(BaseModel):
    """One stream's specification, the value of a control-topic record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: str = Field(RECORD_SCHEMA, alias="schema", description="Record schema tag.")
    stream_id: str = Field(
        pattern=STREAM_ID_PATTERN.pattern, description="Key of the record; unique per stream."
    )
    url: str = Field(
        min_length=1, max_length=4096, description="rtsp://, http(s)://, file: URL or path."
    )
    session_id: str | None = Field(
        None, max_length=256, description="Session of the events; None: the worker's."
    )
    every: int = Field(1, ge=1, le=1000, description="Process every Nth decoded frame.")
    realtime: bool = Field(False, description="Pace file sources at their frame rate.")
    loop: bool = Field(False, description="Replay a file source forever.")
    max_frames: int | None = Field(None, ge=1, description="Stop after this many decoded frames.")
    drop_policy: DropPolicy | None = Field(
        None, description="Full-queue policy of live sources; None: default."
    )

    def to_bytes(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, key: str, value: bytes) -> StreamRecord:
        """Parse and check a record; the key must equal the record's stream_id."""
        try:
            rec = cls.model_validate(json.loads(value))
        except (ValueError, ValidationError) as exc:
            msg = str(exc).replace("\n", " ")[:300]
            raise ConfigError(
                f"control record {key!r}: invalid ({msg}): rewrite it with `streams add`"
            ) from exc
        if rec.schema_ != RECORD_SCHEMA:
            raise ConfigError(
                f"control record {key!r}: schema {rec.schema_!r} is not {RECORD_SCHEMA!r}"
            )
        if rec.stream_id != key:
            raise ConfigError(
                f"control record {key!r}: stream_id {rec.stream_id!r} differs from its key"
            )
        return rec

    def source_settings(self, base: SourceSettings) -> SourceSettings:
        update: dict[str, Any] = {"every": self.every, "realtime": self.realtime, "loop": self.loop}
        if self.max_frames is not None:
            update["max_frames"] = self.max_frames
        if self.drop_policy is not None:
            update["drop_policy"] = self.drop_policy
        return SourceSettings.model_validate({**base.model_dump(), **update})

    @property
    def display(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """The URL with any user:password replaced by ``***`` (env references are kept)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if "@" not in parts.netloc:
        try:
            from pipeline.core.redact import redact_url as shared

            return shared(url)
        except ImportError:
            return url
    creds, host = parts.netloc.rsplit("@", 1)
    if not _ENV_REF.sub("", creds).replace(":", ""):
        return url  # only ${VAR} references: no secret in the text
    try:  # the project-wide redaction (also secret query parameters) when present
        from pipeline.core.redact import redact_url as shared

        return shared(url)
    except ImportError:
        return urlunsplit(parts._replace(netloc=f"***@{host}"))


def expand_env_refs(url: str) -> str:
    """Replace ``${NAME}`` by the worker's environment variable NAME (ConfigError if unset)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in os.environ:
            raise ConfigError(
                f"stream url references ${{{name}}}: set {name} in the worker's environment"
            )
        return os.environ[name]

    return _ENV_REF.sub(sub, url)


def validate_record(rec: StreamRecord, media_root: Path | None) -> str:
    """The URL a worker may open for ``rec``: an allowed scheme, and a file only under
    ``media_root``. Raises ConfigError naming the reason otherwise."""
    url = rec.url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme and len(scheme) > 1 and scheme not in ALLOWED_SCHEMES:
        raise ConfigError(
            f"stream {rec.stream_id}: scheme {scheme!r} not allowed: use one of {', '.join(sorted(ALLOWED_SCHEMES))}"
        )
    if scheme and len(scheme) > 1 and scheme != "file":
        return expand_env_refs(url)
    path = Path(unquote(parts.path)) if scheme == "file" else Path(url)
    if media_root is None:
        raise ConfigError(
            f"stream {rec.stream_id}: file sources are disabled: start the worker with --media-root DIR"
        )
    root = media_root.resolve()
    full = (root / path).resolve() if not path.is_absolute() else path.resolve()
    if not full.is_relative_to(root):
        raise ConfigError(
            f"stream {rec.stream_id}: file {path} is outside the media root {root}: put it under --media-root"
        )
    return str(full)


def partition_for(stream_id: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for this key (murmur2)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(stream_id.encode()) & 0x7FFFFFFF) % partitions


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options (``pipeline.core.kafka_client``); fails fast, in one line,
    when no bootstrap address accepts a connection."""
    from pipeline.core.kafka_client import check_reachable
    from pipeline.core.kafka_client import client_kwargs as shared

    kw = shared(kafka)
    check_reachable(kafka)
    return kw


def ensure_control_topic(kafka: KafkaSettings, partitions: int, timeout_s: float = 15.0) -> int:
    """Create the compacted control topic if missing; returns its partition count."""
    from pipeline.core.kafka_client import ensure_topic

    return ensure_topic(
        kafka,
        kafka.control_topic,
        partitions,
        kafka.replication,
        config={"cleanup.policy": "compact"},
        timeout_s=timeout_s,
    )


class ControlClient:
    """Writes and reads stream specifications on the control topic."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka

    def _producer(self) -> Any:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        try:
            return KafkaProducer(**client_kwargs(self.kafka), acks="all", linger_ms=0)
        except KafkaError as exc:
            raise SinkError(
                f"kafka {self.kafka.bootstrap}: cannot connect ({exc}): check --kafka"
            ) from exc

    def put(self, rec: StreamRecord) -> int:
        """Write the spec; returns the partition it landed in."""
        return self._send(rec.stream_id, rec.to_bytes())

    def remove(self, stream_id: str) -> int:
        """Write a tombstone for ``stream_id``."""
        return self._send(stream_id, None)

    def _send(self, key: str, value: bytes | None) -> int:
        from kafka.errors import KafkaError

        producer = self._producer()
        try:
            meta = producer.send(self.kafka.control_topic, key=key.encode(), value=value).get(
                timeout=15
            )
            return int(meta.partition)
        except KafkaError as exc:
            raise SinkError(
                f"control topic {self.kafka.control_topic}: write failed ({exc})"
            ) from exc
        finally:
            producer.close(timeout=5)

    def read_all(self, idle_s: float = 0.5, timeout_s: float = 15.0) -> dict[str, StreamRecord]:
        """The current streams: the whole topic from the beginning, latest record per key."""
        out: dict[str, StreamRecord] = {}
        for key, value, _part in self.iter_records(idle_s, timeout_s):
            if value is None:
                out.pop(key, None)
                continue
            try:
                out[key] = StreamRecord.from_bytes(key, value)
            except ConfigError as exc:
                logger.warning("%s", exc)
                out.pop(key, None)
        return out

    def iter_records(
        self, idle_s: float, timeout_s: float
    ) -> Iterator[tuple[str, bytes | None, int]]:
        """(key, value, partition) from the beginning until every partition is caught up and
        nothing new arrived for ``idle_s`` (brokers may report end offsets one batch late)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            **client_kwargs(self.kafka), enable_auto_commit=False, group_id=None
        )
        try:
            parts = consumer.partitions_for_topic(self.kafka.control_topic) or set()
            if not parts:
                return
            tps = [TopicPartition(self.kafka.control_topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            quiet_since = time.monotonic()
            while time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=100)
                for tp_records in batch.values():
                    for r in tp_records:
                        if r.key is not None:
                            yield r.key.decode(errors="replace"), r.value, r.partition
                if batch:
                    quiet_since = time.monotonic()
                caught_up = all(consumer.position(tp) >= ends[tp] for tp in tps)
                if caught_up and time.monotonic() - quiet_since >= idle_s:
                    return
        finally:
            consumer.close()


@dataclass(frozen=True)
class Rejection:
    """A control record a worker refused, with the reason (logged and counted)."""

    stream_id: str
    reason: str
