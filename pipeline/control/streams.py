"""The control plane: stream specifications as records of a compacted Kafka topic.

Each record is keyed by ``stream_id`` (UTF-8) and holds a ``StreamRecord`` as JSON; a
tombstone (``None`` value) removes the stream. Compaction keeps the latest record per key,
so reading the topic from the beginning yields the current set of streams. The producer's
default partitioner (murmur2 of the key) decides a stream's partition, and the consumer
group on this topic decides which worker owns which partitions, hence which streams.

Records are untrusted input for a worker. ``check_record`` decodes and validates one record
on its own: any error in it (bad bytes, bad JSON, nesting too deep, an unparsable URL, a path
with a NUL byte, ...) rejects that record with a ``RejectReason`` and never escapes to the
caller, so one record cannot stop a worker or the group. ``validate_record`` admits only the
allowed URL schemes, ``file:`` sources under the worker's media root, and hosts the worker's
``group.allow_hosts`` / ``group.deny_hosts`` allow (checked again at every connect, against
the addresses the name resolves to: ``pipeline.core.hosts``).

Record URLs are never expanded from the worker's environment (a ``${NAME}`` in a record's
URL is rejected): credentials come from the worker's ``source.credentials`` setting, which
sends each host its own entry and no other (``pipeline.core.credentials``). URLs are shown
redacted everywhere (``redact_url``).
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.config import DropPolicy, KafkaSettings, SourceSettings
from pipeline.core.errors import ConfigError, SinkError
from pipeline.core.hosts import HostPolicy
from pipeline.core.ids import id_problem
from pipeline.core.redact import cut, redact_text, redact_url
from pipeline.media.sources import STREAM_ID_PATTERN

logger = logging.getLogger(__name__)

RECORD_SCHEMA = "emotion-stream.stream/v1"
ALLOWED_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https", "file"})
NETWORK_SCHEMES = ALLOWED_SCHEMES - {"file"}
#: Largest record value a worker decodes (a record is a few hundred bytes).
MAX_RECORD_BYTES = 64 * 1024
#: Characters of a rejected key / value / detail that a log line or /readyz shows.
SHOWN_KEY_CHARS = 100
SHOWN_VALUE_CHARS = 300
#: Recent rejections kept for /readyz and `streams list`; rejected keys remembered at most.
RECENT_REJECTIONS = 32
REMEMBERED_KEYS = 1024


class RejectReason(enum.StrEnum):
    """Why a control record was refused (the ``reason`` label of the rejected counter)."""

    KEY = "key"  # not UTF-8, or not a valid stream id
    TOO_LARGE = "too_large"  # value over MAX_RECORD_BYTES
    NOT_JSON = "not_json"  # not UTF-8 JSON, or nested too deep
    INVALID = "invalid"  # a field fails the record schema
    SCHEMA = "schema"  # another schema tag
    KEY_MISMATCH = "key_mismatch"  # stream_id differs from the key
    URL = "url"  # unparsable URL, control characters, no host, bad port
    SCHEME = "scheme"  # a scheme not allowed
    ENV_REFERENCE = "env_reference"  # ${NAME} in the URL
    FILE = "file"  # file sources disabled, outside the media root, or a bad path
    HOST = "host"  # host denied by group.allow_hosts / group.deny_hosts / the defaults
    CAPACITY = "capacity"  # too many streams waiting for a slot (group.max_streams)
    INTERNAL = "internal"  # any other error while checking the record


class RejectedRecordError(ConfigError):
    """A control record refused, with its reason; the message is one line."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def shown_key(key: str | bytes) -> str:
    """A key as a log line / error shows it: control characters escaped, cut short."""
    size = len(key)
    if isinstance(key, bytes | bytearray):
        key = bytes(key[: SHOWN_KEY_CHARS * 4]).decode("utf-8", errors="backslashreplace")
    head = key[: SHOWN_KEY_CHARS * 2]
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in head)
    if len(key) > len(head) or len(text) > SHOWN_KEY_CHARS or size > SHOWN_KEY_CHARS * 4:
        return (
            f"{text[:SHOWN_KEY_CHARS]}... ({size} {'bytes' if size != len(key) else 'characters'})"
        )
    return text


def shown_value(value: bytes | None) -> str:
    """A raw record value as a log line shows it: cut short, URL secrets masked."""
    if value is None:
        return "(tombstone)"
    head = value[: SHOWN_VALUE_CHARS * 4].decode("utf-8", errors="replace")
    text = cut(redact_text(head), SHOWN_VALUE_CHARS)
    return text if len(value) <= SHOWN_VALUE_CHARS * 4 else f"{text} ({len(value)} bytes)"


def _errors_line(exc: ValidationError) -> str:
    """The schema errors without the offending values (which may hold secrets)."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{cut(loc, 40)}: {err['msg']}")
    return cut("; ".join(parts), SHOWN_VALUE_CHARS)


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
        None,
        pattern=STREAM_ID_PATTERN.pattern,  # the one id rule (pipeline.core.ids)
        description="Session of the events; None: the worker's.",
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
        """Parse and check a record; the key must equal the record's stream_id. Any error is
        a ``RejectedRecordError`` naming the reason (never another exception type)."""
        try:
            return cls._from_bytes(key, value)
        except RejectedRecordError:
            raise
        except Exception as exc:  # any error in one record rejects that record, nothing more
            raise RejectedRecordError(
                RejectReason.INTERNAL,
                f"control record '{shown_key(key)}': cannot be read ({type(exc).__name__}):"
                " rewrite it with `streams add`",
            ) from None

    @classmethod
    def _from_bytes(cls, key: str, value: bytes) -> StreamRecord:
        k = f"'{shown_key(key)}'"
        if not isinstance(value, bytes | bytearray) or len(value) > MAX_RECORD_BYTES:
            size = len(value) if isinstance(value, bytes | bytearray) else 0
            raise RejectedRecordError(
                RejectReason.TOO_LARGE,
                f"control record {k}: {size} bytes, more than {MAX_RECORD_BYTES}:"
                " rewrite it with `streams add`",
            )
        try:
            doc = json.loads(bytes(value).decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            why = "nested too deep" if isinstance(exc, RecursionError) else "not UTF-8 JSON"
            raise RejectedRecordError(
                RejectReason.NOT_JSON,
                f"control record {k}: invalid ({why}): rewrite it with `streams add`",
            ) from None
        try:
            rec = cls.model_validate(doc)
        except ValidationError as exc:
            raise RejectedRecordError(
                RejectReason.INVALID,
                f"control record {k}: invalid ({_errors_line(exc)}): rewrite it with `streams add`",
            ) from None
        if rec.schema_ != RECORD_SCHEMA:
            raise RejectedRecordError(
                RejectReason.SCHEMA,
                f"control record {k}: schema {cut(repr(rec.schema_), 80)} is not {RECORD_SCHEMA!r}",
            )
        if rec.stream_id != key:
            raise RejectedRecordError(
                RejectReason.KEY_MISMATCH,
                f"control record {k}: stream_id {rec.stream_id!r} differs from its key",
            )
        return rec

    def source_settings(self, base: SourceSettings) -> SourceSettings:
        update: dict[str, Any] = {"every": self.every, "realtime": self.realtime, "loop": self.loop}
        if self.max_frames is not None:
            update["max_frames"] = self.max_frames
        if self.drop_policy is not None:
            update["drop_policy"] = self.drop_policy
        return base.model_copy(update=update)

    @property
    def display(self) -> str:
        return redact_url(self.url)


def decode_key(key: str | bytes) -> str:
    """The stream id of a record key: UTF-8 and the id rule, else ``RejectedRecordError``."""
    try:
        text = key.decode("utf-8") if isinstance(key, bytes | bytearray) else str(key)
    except UnicodeDecodeError:
        raise RejectedRecordError(
            RejectReason.KEY, f"control record key '{shown_key(key)}': not UTF-8: remove it"
        ) from None
    problem = id_problem("stream id", text)
    if problem is not None:
        raise RejectedRecordError(RejectReason.KEY, f"control record key: {problem}: remove it")
    return text


def validate_record(
    rec: StreamRecord, media_root: Path | None, hosts: HostPolicy | None = None
) -> str:
    """The URL a worker may open for ``rec``: an allowed scheme, a host ``hosts`` allows (names
    and literal addresses; resolved names are checked at connect), and a file only under
    ``media_root``. Raises ``RejectedRecordError`` naming the reason otherwise (any error)."""
    try:
        return _validate(rec, media_root, hosts)
    except RejectedRecordError:
        raise
    except Exception as exc:
        raise RejectedRecordError(
            RejectReason.URL,
            f"stream {rec.stream_id}: url {cut(redact_url(rec.url), 200)!r} cannot be used"
            f" ({type(exc).__name__}: {cut(redact_text(str(exc)), 120)}): fix the URL",
        ) from None


def _validate(rec: StreamRecord, media_root: Path | None, hosts: HostPolicy | None) -> str:
    url, sid = rec.url, rec.stream_id
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise RejectedRecordError(
            RejectReason.URL, f"stream {sid}: the url contains control characters: fix the URL"
        )
    if "${" in url:
        raise RejectedRecordError(
            RejectReason.ENV_REFERENCE,
            f"stream {sid}: the url contains '${{': record URLs are never expanded from the"
            " worker's environment; give the host's credentials in the worker's"
            " source.credentials setting instead",
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme and len(scheme) > 1 and scheme not in ALLOWED_SCHEMES:
        raise RejectedRecordError(
            RejectReason.SCHEME,
            f"stream {sid}: scheme {cut(repr(scheme), 40)} not allowed: use one of"
            f" {', '.join(sorted(ALLOWED_SCHEMES))}",
        )
    if scheme in NETWORK_SCHEMES:
        return _validate_network(url, sid, hosts)
    return _validate_file(url, scheme, sid, media_root)


def _validate_network(url: str, sid: str, hosts: HostPolicy | None) -> str:
    parts = urlsplit(url)
    host = parts.hostname
    _ = parts.port  # ValueError for a port out of range
    if not host:
        raise RejectedRecordError(
            RejectReason.URL, f"stream {sid}: the url has no host: use scheme://host[:port]/path"
        )
    if hosts is not None and (reason := hosts.check_static(host)) is not None:
        raise RejectedRecordError(RejectReason.HOST, f"stream {sid}: {reason}")
    return url


def _validate_file(url: str, scheme: str, sid: str, media_root: Path | None) -> str:
    path = Path(unquote(urlsplit(url).path)) if scheme == "file" else Path(url)
    if media_root is None:
        raise RejectedRecordError(
            RejectReason.FILE,
            f"stream {sid}: file sources are disabled: start the worker with --media-root DIR",
        )
    try:
        root = media_root.resolve()
        full = (root / path).resolve() if not path.is_absolute() else path.resolve()
    except (OSError, ValueError, RuntimeError) as exc:
        raise RejectedRecordError(
            RejectReason.FILE,
            f"stream {sid}: file path {cut(repr(str(path)), 120)} is invalid"
            f" ({type(exc).__name__}): fix the path",
        ) from None
    if not full.is_relative_to(root):
        raise RejectedRecordError(
            RejectReason.FILE,
            f"stream {sid}: file {cut(str(path), 200)} is outside the media root {root}:"
            " put it under --media-root",
        )
    return str(full)


def check_record(
    key: str | bytes,
    value: bytes | None,
    media_root: Path | None,
    hosts: HostPolicy | None = None,
) -> tuple[str, StreamRecord | None, str | None]:
    """Decode and validate one record on its own: (stream id, record, URL to open), or
    (stream id, None, None) for a tombstone. Every problem, whatever its exception type, is a
    ``RejectedRecordError`` with a reason; nothing else is raised."""
    try:
        sid = decode_key(key)
        if value is None:
            return sid, None, None
        rec = StreamRecord.from_bytes(sid, value)
        return sid, rec, validate_record(rec, media_root, hosts)
    except RejectedRecordError:
        raise
    except Exception as exc:
        raise RejectedRecordError(
            RejectReason.INTERNAL,
            f"control record '{shown_key(key)}': cannot be checked ({type(exc).__name__})",
        ) from None


@dataclass(frozen=True)
class Rejection:
    """A control record a worker refused, with the reason (logged, counted, shown)."""

    stream_id: str  # the key, cut short
    reason: str  # a RejectReason value
    detail: str = ""  # the one-line message
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.stream_id,
            "reason": self.reason,
            "detail": self.detail,
            "at": round(self.at, 3),
        }


class Rejections:
    """Bounded memory of rejected records: the latest reason per key (at most
    ``REMEMBERED_KEYS`` keys, the oldest forgotten first) and the most recent rejections."""

    def __init__(self, recent: int = RECENT_REJECTIONS, keys: int = REMEMBERED_KEYS) -> None:
        self._lock = threading.Lock()
        self._recent: deque[Rejection] = deque(maxlen=recent)
        self._by_key: OrderedDict[str, Rejection] = OrderedDict()
        self._keys = keys
        self.total = 0

    def add(self, key: str | bytes, reason: RejectReason, detail: str) -> Rejection:
        rej = Rejection(shown_key(key), reason.value, cut(detail, SHOWN_VALUE_CHARS))
        with self._lock:
            self.total += 1
            self._recent.append(rej)
            self._by_key.pop(rej.stream_id, None)
            self._by_key[rej.stream_id] = rej
            while len(self._by_key) > self._keys:
                self._by_key.popitem(last=False)
        return rej

    def clear(self, key: str) -> None:
        """``key`` has a valid record or a tombstone now."""
        with self._lock:
            self._by_key.pop(shown_key(key), None)

    def recent(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.as_dict() for r in self._recent]

    def __getitem__(self, key: str) -> str:
        with self._lock:
            return self._by_key[shown_key(key)].detail

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str | bytes):
            return False
        with self._lock:
            return shown_key(key) in self._by_key

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_key)

    def current(self, last: int = RECENT_REJECTIONS) -> list[dict[str, Any]]:
        """The ``last`` keys whose latest record was refused, with the reason (oldest first)."""
        with self._lock:
            return [r.as_dict() for r in list(self._by_key.values())[-last:]]


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
        self.rejections = Rejections()

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
        """The current streams: the whole topic from the beginning, latest record per key.
        Records that do not decode are left out; ``rejections`` holds them afterwards."""
        out: dict[str, StreamRecord] = {}
        self.rejections = Rejections()
        for key, value, _part in self.iter_records(idle_s, timeout_s):
            try:  # the media root is each worker's own: here any path passes ("/")
                sid, rec, _url = check_record(key, value, media_root=Path("/"))
            except RejectedRecordError as exc:
                self.rejections.add(key, exc.reason, str(exc))
                out.pop(key.decode("utf-8", errors="replace"), None)
                continue
            self.rejections.clear(sid)
            if rec is None:
                out.pop(sid, None)
            else:
                out[sid] = rec
        return out

    def iter_records(
        self, idle_s: float, timeout_s: float
    ) -> Iterator[tuple[bytes, bytes | None, int]]:
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
                            yield r.key, r.value, r.partition
                if batch:
                    quiet_since = time.monotonic()
                caught_up = all(consumer.position(tp) >= ends[tp] for tp in tps)
                if caught_up and time.monotonic() - quiet_since >= idle_s:
                    return
        finally:
            consumer.close()
