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
