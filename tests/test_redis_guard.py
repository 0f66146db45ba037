"""The Redis aggregation script checks its keys' types before it writes anything: a frame that
cannot apply is rejected (counted, one line), never retried for ever, and the replay guard does
not move, so the same frames apply once the key is fixed. Against a real redis-server."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest

from pipeline.core.config import DeliverySettings, RedisSettings
from pipeline.sinks.redis_agg import RedisAggregateSink, read_session
from tests.test_sinks import frames_of_events

pytestmark = pytest.mark.integration


def _session() -> str:
    return f"guard-{uuid.uuid4().hex[:8]}"


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


@pytest.mark.parametrize(
    "suffix, command", [(":tracks", "SET"), ("", "RPUSH"), (":hwm", "SADD"), (":minutes", "SET")]
)
def test_redis_script_wrong_key_type_rejects_frame_and_keeps_guard(
    redis_server: Any, suffix: str, command: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session()
    client = _client(redis_server.url)
    key = f"es:session:{session}{suffix}"
    client.execute_command(command, key, "x")  # a key of another type than the script writes
    batches = frames_of_events("cam", 3, session=session)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.sinks.redis_agg"):
            for b in batches:
                sink.write(b)
            sink.flush()  # no error: rejected frames are not retried
        assert sink.take_rejected() == 9 and sink.take_rejected() == 0
        assert sink.rejected_events == 9 and sink.applied_faces == 0
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and key in warnings[0].getMessage()
        assert "\n" not in warnings[0].getMessage() and warnings[0].exc_info is None
        # nothing was written: no guard, no counts
        others = {f"es:session:{session}{s}" for s in ("", ":tracks", ":hwm", ":minutes")} - {key}
        assert not any(client.exists(k) for k in others)
        client.delete(key)
        for b in batches:  # the same frames apply once the key is fixed
            sink.write(b)
        sink.flush()
        agg = read_session(client, "es", session)
        assert agg["frames"] == 3 and agg["faces"] == 9
    finally:
        sink.close()
        client.close()


def test_redis_sink_rejects_events_whose_ids_break_the_rule(redis_server: Any) -> None:
    session = _session()
    client = _client(redis_server.url)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    try:
        sink.write(frames_of_events("cam", 2, session=session)[0])
        for bad in frames_of_events("cam", 2, session=f"{session}:tracks"):
            sink.write(bad)  # an old event from before the id rule
        sink.flush()
        assert sink.take_rejected() == 6
        assert client.type(f"es:session:{session}:tracks") == b"set"
        assert not client.exists(f"es:session:{session}:tracks:hwm")
    finally:
        sink.close()
        client.close()


def test_publisher_counts_redis_rejections_per_sink(redis_server: Any, tmp_path: Any) -> None:
    from pipeline.control.metrics import Metrics
    from pipeline.runtime.eventlog import EventLog
    from pipeline.runtime.publisher import Publisher
    from pipeline.runtime.stats import WorkerStats

    session = _session()
    client = _client(redis_server.url)
    client.set(f"es:session:{session}", "not a hash")
    settings = DeliverySettings(retry_initial_s=0.05)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    pub = Publisher(EventLog(tmp_path, settings), [sink], settings=settings)
    pub.start()
    try:
        for b in frames_of_events("cam", 4, session=session):
            pub.put(b)
        pub.flush(10)  # caught up: rejected frames do not hold the sink back
        stats = pub.stats().sinks[sink.name]
        assert stats["rejected"] == 12 and stats["failures"] == 0 and stats["pending"] == 0
        text = Metrics(lambda: WorkerStats("w", sinks=pub.stats().sinks)).render().decode()
        assert f'emotion_stream_sink_rejected_events_total{{sink="{sink.name}"}} 12.0' in text
    finally:
        pub.close(5)
        client.close()


def test_redis_script_error_on_non_integer_field_rejects_frame_not_retried(
    redis_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis error the script raises mid-frame (HINCRBY on a field that is not an integer)
    can never apply: the frame is rejected with Redis's first line, counted, and not retried."""
    session = _session()
    client = _client(redis_server.url)
    client.hset(f"es:session:{session}", "frames", "many")  # HINCRBY frames fails
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.sinks.redis_agg"):
            for b in frames_of_events("cam", 2, session=session):
                sink.write(b)
            sink.flush()  # no error: nothing is left to retry
        assert sink.take_rejected() == 6 and sink.rejected_events == 6
        assert sink.applied_faces == 0
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "not an integer" in warnings[0]
        assert "\n" not in warnings[0]
    finally:
        sink.close()
        client.close()


def test_redis_script_transient_error_keeps_frames_and_retries_them(redis_server: Any) -> None:
    """An error that may pass (Redis out of memory) is not a rejection: the frames stay pending,
    flush names the error in one line, and they apply once Redis accepts writes again."""
    from pipeline.core.errors import SinkError

    session = _session()
    client = _client(redis_server.url)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    batches = frames_of_events("cam", 2, session=session)
    client.config_set("maxmemory", 1)  # every write now fails with OOM
    try:
        for b in batches:
            try:
                sink.write(b)
            except SinkError:
                pass  # write tries to drain; the frames stay pending
        with pytest.raises(
            SinkError, match=r"2 frames not applied yet \(command not allowed when used memory"
        ) as err:
            sink.flush()
        assert "\n" not in str(err.value) and sink.take_rejected() == 0
        client.config_set("maxmemory", 0)
        sink.flush()
        agg = read_session(client, "es", session)
        assert agg["frames"] == 2 and agg["faces"] == 6 and sink.applied_faces == 6
        assert sink.rejected_events == 0
    finally:
        client.config_set("maxmemory", 0)
        sink.close()
        client.close()


def test_redis_read_tracks_frames_epoch_and_unwritten_session_reads_zeros(
    redis_server: Any,
) -> None:
    from pipeline.sinks.redis_agg import read_tracks

    session = _session()
    client = _client(redis_server.url)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    try:
        batches = frames_of_events("cam", 6, faces=2, session=session)
        for b in batches[2:]:  # frames 2..5
            sink.write(b)
        sink.flush()
        tracks = read_tracks(client, "es", session)
        got = [(t["stream_id"], t["epoch"], t["track_id"]) for t in tracks]
        assert got == [("cam", 0, 1), ("cam", 0, 2)]
        assert all(t["first_frame"] == 2 and t["last_frame"] == 5 for t in tracks)
        assert all(t["faces"] == 4 and t["dwell_s"] == pytest.approx(3 / 25) for t in tracks)
        empty = read_session(client, "es", f"{session}-never")
        assert empty["faces"] == empty["frames"] == empty["tracks"] == 0
        assert empty["emotions"] == {} and empty["streams"] == [] and empty["dominant"] is None
        assert empty["first_ts"] is None and empty["last_ts"] is None
        assert empty["duration_s"] == 0.0 and set(empty["mean_probs"].values()) == {0.0}
        assert read_tracks(client, "es", f"{session}-never") == []
    finally:
        sink.close()
        client.close()


def test_redis_sink_rejects_a_bad_stream_id_and_applies_the_good_frames(
    redis_server: Any,
) -> None:
    session = _session()
    client = _client(redis_server.url)
    sink = RedisAggregateSink(RedisSettings(url=redis_server.url))
    try:
        bad = frames_of_events("cam:1", 1, session=session)[0]  # ':' breaks the id rule
        good = frames_of_events("cam", 2, session=session)
        sink.write(bad + good[0])  # one batch: the bad frame must not stop the good one
        sink.write(good[1])
        sink.flush()
        assert sink.take_rejected() == 3 and sink.applied_faces == 6
        agg = read_session(client, "es", session)
        assert agg["frames"] == 2 and agg["streams"] == ["cam"]
    finally:
        sink.close()
        client.close()
