"""Redis sink: per-session and per-track emotion aggregates, updated by one Lua script
(``pipeline/lua/aggregate.lua``) per frame, atomically and idempotently.

Keys (``P`` = key prefix, ``S`` = session id):

- ``P:session:S``           hash: faces, frames, tracks, e:<label> counts, p:<label> probability
                            sums, first_ts_ms, last_ts_ms, dominant
- ``P:session:S:tracks``    set of ``stream:track`` seen in the session
- ``P:session:S:hwm``       hash: stream scope -> last applied frame_num (the replay guard)
- ``P:session:S:minutes``   hash: ``<minute start epoch s>:<label>`` -> faces (the chart)
- ``P:track:S:STREAM:T``    hash: the session's fields for one track, plus stream,
                            first_frame, last_frame (dwell = last_ts - first_ts)

A stream scope is the stream id for files (epoch 0) and ``STREAM@EPOCH`` for a live capture,
so a restarted or moved live stream (new epoch, frame_num from 0) gets its own high-water mark
and its own track keys instead of being skipped as a replay.

Every key touched gets the idle TTL again. A frame whose frame_num is not above its stream's
high-water mark is skipped, so replaying events (after a crash, or a whole file again with the
same stream id and session) leaves every total unchanged.

Session and stream ids follow the one id rule (``pipeline.core.ids``: no ``:``), so no two
sessions share a key. The script checks every key's type before it writes anything and writes
the high-water mark last: a frame it cannot apply (a key of another type, written by someone
else) changes nothing and is rejected, like an event whose ids break the rule: one warning per
session, counted (``take_rejected`` -> ``emotion_stream_sink_rejected_events``), not retried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from pipeline.core.config import RedisSettings
from pipeline.core.errors import ConfigError, SinkError
from pipeline.core.events import parse_rfc3339, rfc3339
from pipeline.core.ids import id_problem, shown
from pipeline.core.redact import redact_url
from pipeline.core.types import EMOTIONS

logger = logging.getLogger(__name__)

#: Frames kept for a retry while Redis is unreachable; older ones are counted as lost.
MAX_PENDING_FRAMES = 10000


def load_script() -> str:
    return resources.files("pipeline").joinpath("lua/aggregate.lua").read_text(encoding="utf-8")


def session_key(prefix: str, session: str) -> str:
    return f"{prefix}:session:{session}"


def minutes_key(prefix: str, session: str) -> str:
    return f"{session_key(prefix, session)}:minutes"


def track_key(prefix: str, session: str, stream_id: str, track_id: int | str) -> str:
    return f"{prefix}:track:{session}:{stream_id}:{track_id}"


def connect(
    url: str, password: str | None = None, timeout_s: float = 3.0, socket_timeout_s: float = 10.0
) -> Any:
    """A redis-py client that answered PING, or SinkError naming the (redacted) URL. Each
    command waits at most ``socket_timeout_s`` (a hung server), without silent retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            password=password,
            socket_connect_timeout=timeout_s,
            socket_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as exc:
        raise ConfigError(
            f"Redis URL {shown} is invalid ({exc}): use redis://HOST:PORT/DB"
        ) from exc
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise SinkError(
            f"Redis at {shown} rejected the credentials: set ES_REDIS_PASSWORD or "
            "ES_REDIS_PASSWORD_FILE"
        ) from exc
    except redis.RedisError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "NOAUTH" in detail or "AUTH" in detail:
            raise SinkError(
                f"Redis at {shown} needs a password: set ES_REDIS_PASSWORD or ES_REDIS_PASSWORD_FILE"
            ) from exc
        raise SinkError(
            f"Redis at {shown} is unreachable ({detail}): start redis-server or pass the right "
            "--redis URL"
        ) from exc
    return client


def _ms(timestamp: str) -> int:
    return round(parse_rfc3339(timestamp) * 1000)


def stream_scope(stream_id: str, epoch: int) -> str:
    """The replay-guard and track-key scope of one capture: the stream id for files (epoch 0),
    ``STREAM@EPOCH`` for a live capture (stream ids cannot hold ``@``)."""
    return f"{stream_id}@{epoch}" if epoch else stream_id


def split_scope(scope: str) -> tuple[str, int]:
    """Inverse of ``stream_scope``: (stream id, epoch)."""
    stream, _, epoch = scope.partition("@")
    return stream, int(epoch) if epoch.isdigit() else 0


def frame_payloads(events: Sequence[dict[str, Any]]) -> list[tuple[str, str, int, dict[str, Any]]]:
    """Group face events by (session, stream scope, frame), keeping order: one script call each.
    Returns (session, stream scope, frame_num, payload) tuples; lifecycle events are skipped."""
    groups: dict[tuple[str, str, int], dict[str, Any]] = {}
    for e in events:
        if e.get("type") != "face":
            continue
        scope = stream_scope(e["stream_id"], int(e.get("epoch") or 0))
        key = (e["session_id"], scope, int(e["frame_num"]))
        payload = groups.get(key)
        if payload is None:
            payload = {"stream": key[1], "frame": key[2], "ts": _ms(e["timestamp"]), "faces": []}
            groups[key] = payload
        probs = e["emotion"]["probs"]
        payload["faces"].append(
            {
                "track": e["track_id"],
                "label": e["emotion"]["label"],
                "probs": [float(probs[name]) for name in EMOTIONS],
            }
        )
    return [(s, st, f, p) for (s, st, f), p in groups.items()]


#: Redis errors that a retry cannot cure: the frame is rejected (counted) instead of retried.
_PERMANENT_ERRORS = ("WRONGTYPE", "not an integer", "not a valid float")
#: Sessions whose first rejection was logged; cleared when it grows past this.
_MAX_WARNED = 1000

Item = tuple[str, str, int, dict[str, Any]]


class RedisAggregateSink:
    """Applies each frame's face events with one EVALSHA; one round trip per ``write``.

    A frame that can never apply (an id outside the id rule, a key of another type than the
    script writes, a field that is not a number) is rejected: one warning per session, counted
    in ``rejected_events`` (``take_rejected``), not retried; the replay guard does not move."""

    def __init__(self, settings: RedisSettings) -> None:
        if not settings.url:
            raise ConfigError("no Redis URL: pass --redis redis://HOST:PORT/DB or set ES_REDIS_URL")
        self.settings = settings
        self.prefix = settings.key_prefix
        self.name = f"redis:{redact_url(settings.url)}"
        self._client: Any = connect(
            settings.url, settings.secret(), socket_timeout_s=settings.socket_timeout_s
        )
        self._script = self._client.register_script(load_script())
        self._pending: list[Item] = []
        self._lost = 0
        self.applied_faces = 0
        self.rejected_events = 0
        self._unread_rejected = 0
        self._warned: set[str] = set()

    def _call_args(self, item: Item) -> tuple[list[str], list[Any]]:
        session, stream, _, payload = item
        base = session_key(self.prefix, session)
        keys = [base, f"{base}:tracks", f"{base}:hwm"]
        for face in payload["faces"]:
            keys.append(track_key(self.prefix, session, stream, face["track"]))
            face["track"] = f"{stream}:{face['track']}"
        keys.append(minutes_key(self.prefix, session))
        return keys, [json.dumps(payload, separators=(",", ":")), self.settings.ttl_s]

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        if self._client is None:
            raise SinkError(f"{self.name} is closed")
        for item in frame_payloads(events):
            faces = len(item[3]["faces"])
            problem = id_problem("session id", item[0]) or id_problem(
                "stream id", split_scope(item[1])[0]
            )
            if problem is not None:
                self._reject(item[0], item[1], item[2], faces, problem)
                continue
            self._pending.append((item[0], item[1], item[2], self._encode(item)))
        overflow = len(self._pending) - MAX_PENDING_FRAMES
        if overflow > 0:
            del self._pending[:overflow]
            self._lost += overflow
        self._drain()

    def _encode(self, item: Item) -> dict[str, Any]:
        keys, args = self._call_args(item)
        return {"keys": keys, "args": args, "faces": len(item[3]["faces"])}

    def _drain(self) -> None:
        if not self._pending:
            return
        import redis

        pipe = self._client.pipeline(transaction=False)
        for *_, call in self._pending:
            self._script(keys=call["keys"], args=call["args"], client=pipe)
        try:
            results = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise SinkError(
                f"Redis at {redact_url(self.settings.url or '')}: {len(self._pending)} frames not "
                f"applied yet ({exc}); they are retried on the next write"
            ) from exc
        self._settle(list(zip(self._pending, results, strict=True)))

    def _settle(self, outcomes: list[tuple[Item, Any]]) -> None:
        """Count applied frames, reject the ones that can never apply, keep the rest."""
        retry: list[Item] = []
        first_error: Exception | None = None
        for item, result in outcomes:
            session, stream, frame, call = item
            if isinstance(result, int):
                self.applied_faces += result
            elif isinstance(result, list):  # {"wrongtype", key, type}: nothing was written
                key, kind = (_text(v) for v in result[1:3])
                reason = f"key {key} is a {kind}, not what the aggregates need"
                self._reject(session, stream, frame, call["faces"], reason)
            elif isinstance(result, Exception) and _permanent(result):
                self._reject(session, stream, frame, call["faces"], _first_line(result))
            else:
                retry.append(item)
                first_error = first_error or _as_error(result)
        self._pending = retry
        if retry:
            raise SinkError(
                f"Redis at {redact_url(self.settings.url or '')}: {len(retry)} frames not "
                f"applied yet ({_first_line(first_error)}); they are retried on the next write"
            )

    def _reject(self, session: str, stream: str, frame: int, faces: int, reason: str) -> None:
        self.rejected_events += faces
        self._unread_rejected += faces
        if session in self._warned:
            logger.debug("redis sink: frame %d of %s rejected: %s", frame, stream, reason)
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add(session)
        logger.warning(
            "redis sink: frame %d of stream %s in session %s rejected (%s): not applied and "
            "not retried, the replay guard is unchanged; further rejections of this session are "
            "only counted (emotion_stream_sink_rejected_events)",
            frame,
            shown(stream),
            shown(session),
            reason,
        )

    def take_rejected(self) -> int:
        """Events rejected since the last call (the delivery thread adds them to its count)."""
        n, self._unread_rejected = self._unread_rejected, 0
        return n

    def flush(self, timeout: float | None = None) -> None:
        if self._client is None:
            return
        self._drain()
        if self._lost:
            lost, self._lost = self._lost, 0
            raise SinkError(
                f"Redis at {redact_url(self.settings.url or '')}: {lost} frames were dropped while "
                "it was unreachable: replay the source (replays are idempotent)"
            )

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _permanent(exc: Exception) -> bool:
    import redis

    text = str(exc)
    return isinstance(exc, redis.ResponseError) and any(p in text for p in _PERMANENT_ERRORS)


def _as_error(result: Any) -> Exception:
    if isinstance(result, Exception):
        return result
    return SinkError(f"unexpected script result {_text(result)[:100]}")


def _floats(raw: dict[str, str], field: str) -> float:
    return float(raw.get(field, 0) or 0)


def _summary(raw: dict[str, str]) -> dict[str, Any]:
    faces = int(raw.get("faces", 0))
    counts = {n: int(raw.get(f"e:{n}", 0)) for n in EMOTIONS}
    first = raw.get("first_ts_ms")
    last = raw.get("last_ts_ms")
    out: dict[str, Any] = {
        "faces": faces,
        "emotions": {n: c for n, c in counts.items() if c > 0},
        "mean_probs": {
            n: round(_floats(raw, f"p:{n}") / faces, 6) if faces else 0.0 for n in EMOTIONS
        },
        "first_ts": rfc3339(int(first) / 1000) if first else None,
        "last_ts": rfc3339(int(last) / 1000) if last else None,
        "duration_s": round((int(last) - int(first)) / 1000, 3) if first and last else 0.0,
        "dominant": raw.get("dominant"),
    }
    return out


def _decode(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    def s(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    return {s(k): s(v) for k, v in raw.items()}


def read_session(client: Any, prefix: str, session: str) -> dict[str, Any]:
    """The aggregate of one session: faces, frames, tracks, streams, emotions (label ->
    face events with that label, only labels seen), mean_probs, first_ts/last_ts (RFC 3339),
    duration_s, dominant. A session never written reads as zeros."""
    base = session_key(prefix, session)
    raw = _decode(client.hgetall(base))
    streams = sorted({split_scope(k)[0] for k in _decode(client.hgetall(f"{base}:hwm"))})
    out = {"session": session, **_summary(raw)}
    out["frames"] = int(raw.get("frames", 0))
    out["tracks"] = int(raw.get("tracks", 0))
    out["streams"] = streams
    return out


def read_tracks(client: Any, prefix: str, session: str) -> list[dict[str, Any]]:
    """Per-track aggregates of a session (dwell_s = last - first timestamp), sorted."""
    members = sorted(
        m.decode() if isinstance(m, bytes) else m
        for m in client.smembers(f"{session_key(prefix, session)}:tracks")
    )
    out = []
    for member in members:
        scope, _, tid = member.rpartition(":")
        raw = _decode(client.hgetall(track_key(prefix, session, scope, tid)))
        if not raw:  # expired
            continue
        stream, epoch = split_scope(scope)
        item = {"stream_id": stream, "epoch": epoch, "track_id": int(tid), **_summary(raw)}
        item["first_frame"] = int(raw.get("first_frame", 0))
        item["last_frame"] = int(raw.get("last_frame", 0))
        item["dwell_s"] = item.pop("duration_s")
        out.append(item)
    return out


def read_minutes(client: Any, prefix: str, session: str) -> list[dict[str, Any]]:
    """The session's per-minute emotion counts, oldest first: ``{"t": minute start (epoch s),
    "minute": RFC 3339, "faces": n, "counts": {label: n for every label}}``."""
    raw = _decode(client.hgetall(minutes_key(prefix, session)))
    by_minute: dict[int, dict[str, int]] = {}
    for field, value in raw.items():
        minute, _, label = field.partition(":")
        if label in EMOTIONS and minute.isdigit():
            by_minute.setdefault(int(minute), dict.fromkeys(EMOTIONS, 0))[label] = int(value)
    return [
        {"t": t, "minute": rfc3339(t), "faces": sum(c.values()), "counts": c}
        for t, c in sorted(by_minute.items())
    ]
