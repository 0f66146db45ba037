"""Sinks: JSONL/stdout/build_sink units, then Kafka and Redis against real servers
(tansu broker, redis-server), and the ``sessions show`` / ``tail`` commands."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from pipeline.cli.main import main
from pipeline.core import events as ev
from pipeline.core.config import KafkaSettings, RedisSettings
from pipeline.core.errors import ConfigError, SinkError
from pipeline.sinks import build_sink
from tests.servers import RedisServer, free_port
from tests.test_events import CTX, make_result


def frames_of_events(
    stream: str, n: int, faces: int = 3, session: str = "sess"
) -> list[list[dict[str, Any]]]:
    ctx = ev.EventContext(
        CTX.worker_id, session, CTX.detector, CTX.classifier, CTX.backend, CTX.precision
    )
    return [
        ev.face_events(make_result(stream, i, list(range(1, faces + 1)), seed=i), ctx)
        for i in range(n)
    ]


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- units


def test_build_sink_unknown_spec_lists_forms() -> None:
    with pytest.raises(ConfigError, match="jsonl:PATH, stdout, kafka, redis"):
        build_sink("parquet:x", KafkaSettings(), RedisSettings())


def test_build_sink_kafka_without_bootstrap_is_config_error() -> None:
    with pytest.raises(ConfigError, match="--kafka"):
        build_sink("kafka", KafkaSettings(), RedisSettings())


def test_jsonl_sink_truncates_and_writes_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "e.jsonl"
    batches = frames_of_events("a", 4)
    for _ in range(2):  # a second run replaces the first
        sink = build_sink(f"jsonl:{path}", KafkaSettings(), RedisSettings())
        for b in batches:
            sink.write(b)
        sink.close()
    lines = path.read_bytes().splitlines()
    assert lines == [ev.encode(e) for b in batches for e in b]


def test_jsonl_sink_unwritable_path_is_sink_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SinkError, match="file"):
        build_sink(f"jsonl:{blocker}/e.jsonl", KafkaSettings(), RedisSettings())


def test_stdout_sink_prints_compact_lines(capsys: pytest.CaptureFixture[str]) -> None:
    sink = build_sink("stdout", KafkaSettings(), RedisSettings())
    batch = frames_of_events("a", 1)[0]
    sink.write(batch)
    sink.close()
    assert capsys.readouterr().out.splitlines() == [ev.encode(e).decode() for e in batch]


# ----------------------------------------------------------------------------- kafka


def _consume(bootstrap: str, topic: str, expect: int, timeout_s: float = 15.0) -> list[Any]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        consumer_timeout_ms=1000,
    )
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got.extend(consumer)
    finally:
        consumer.close()
    return got


@pytest.mark.integration
def test_kafka_sink_round_trip_preserves_order_per_key(kafka_broker: Any) -> None:
    topic = _name("order")
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, topic=topic, partitions=3)
    sink = build_sink("kafka", settings, RedisSettings())
    sent: dict[bytes, list[bytes]] = defaultdict(list)
    streams = [frames_of_events(s, 50) for s in ("cam-a", "cam-b", "cam-c")]
    for i in range(50):  # interleave the streams, as a worker does
        for frames in streams:
            sink.write(frames[i])
            for e in frames[i]:
                sent[e["stream_id"].encode()].append(ev.encode(e))
    sink.flush(10)
    sink.close()
    msgs = _consume(kafka_broker.bootstrap, topic, 450)
    got: dict[bytes, list[bytes]] = defaultdict(list)
    partition_of: dict[bytes, set[int]] = defaultdict(set)
    for m in msgs:
        got[m.key].append(m.value)
        partition_of[m.key].add(m.partition)
    assert got == sent
    assert all(len(p) == 1 for p in partition_of.values())
    for values in got.values():
        ev.validate(json.loads(values[0]))


@pytest.mark.integration
def test_kafka_sink_creates_topic_with_partitions(kafka_broker: Any) -> None:
    from kafka import KafkaAdminClient

    topic = _name("parts")
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, topic=topic, partitions=4)
    sink = build_sink("kafka", settings, RedisSettings())
    sink.close()
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        (desc,) = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(desc["partitions"]) == 4
    # An existing topic is kept as it is.
    again = build_sink("kafka", settings.model_copy(update={"partitions": 2}), RedisSettings())
    assert getattr(again, "partitions", None) == 4
    again.close()


@pytest.mark.integration
def test_kafka_sink_unreachable_broker_fails_fast_naming_address() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(SinkError) as info:
        build_sink("kafka", KafkaSettings(bootstrap=f"127.0.0.1:{port}"), RedisSettings())
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "--kafka" in msg and "\n" not in msg


@pytest.mark.integration
def test_kafka_sink_flush_raises_when_broker_is_gone() -> None:
    from tests.servers import KafkaBroker

    with KafkaBroker() as broker:
        settings = KafkaSettings(
            bootstrap=broker.bootstrap, topic="gone", partitions=1, request_timeout_ms=1000
        )
        sink = build_sink("kafka", settings, RedisSettings())
        sink.write(frames_of_events("a", 1)[0])
        sink.flush(10)
        broker.stop()
        sink.write(frames_of_events("a", 2)[1])
        with pytest.raises(SinkError, match=broker.bootstrap):
            sink.flush(3)
        sink.close()


# ----------------------------------------------------------------------------- redis


def _client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


@pytest.mark.integration
def test_redis_sink_aggregates_match_events(redis_server: Any) -> None:
    from pipeline.sinks.redis_agg import read_session, read_tracks

    session = _name("agg")
    batches = frames_of_events("cam-a", 30, session=session) + frames_of_events(
        "cam-b", 10, 2, session
    )
    sink = build_sink("redis", KafkaSettings(), RedisSettings(url=redis_server.url))
    for b in batches:
        sink.write(b)
    sink.flush()
    faces = [e for b in batches for e in b]
    agg = read_session(_client(redis_server.url), "es", session)
    labels = Counter(e["emotion"]["label"] for e in faces)
    assert agg["faces"] == len(faces) == 110
    assert agg["frames"] == 40 and agg["tracks"] == 5
    assert agg["emotions"] == dict(labels)
    assert agg["dominant"] == max(labels, key=lambda k: labels[k])
    assert agg["streams"] == ["cam-a", "cam-b"]
    assert agg["first_ts"] == min(e["timestamp"] for e in faces)
    assert agg["last_ts"] == max(e["timestamp"] for e in faces)
    assert sum(agg["mean_probs"].values()) == pytest.approx(1, abs=1e-3)
    tracks = read_tracks(_client(redis_server.url), "es", session)
    assert [(t["stream_id"], t["faces"]) for t in tracks][:1] == [("cam-a", 30)]
    assert tracks[0]["dwell_s"] == pytest.approx(29 / 25, abs=0.002)
    sink.close()


@pytest.mark.integration
def test_redis_sink_replay_leaves_totals_unchanged(redis_server: Any) -> None:
    from pipeline.sinks.redis_agg import read_session, read_tracks

    session = _name("replay")
    batches = frames_of_events("cam", 20, session=session)
    settings = RedisSettings(url=redis_server.url, ttl_s=600)
    sink = build_sink("redis", KafkaSettings(), settings)
    for b in batches[:12]:
        sink.write(b)
    sink.flush()
    client = _client(redis_server.url)
    partial = read_session(client, "es", session)
    # A crash after frame 11, then the whole source again from a fresh worker.
    again = build_sink("redis", KafkaSettings(), settings)
    for b in batches:
        again.write(b)
    again.flush()
    full = read_session(client, "es", session)
    assert partial["faces"] == 36 and full["faces"] == 60 and full["frames"] == 20
    tracks = read_tracks(client, "es", session)
    for b in batches:  # and once more, in one big batch
        again.write(b)
    again.write([e for b in batches for e in b])
    again.flush()
    assert read_session(client, "es", session) == full
    assert read_tracks(client, "es", session) == tracks
    assert 0 < client.ttl(f"es:session:{session}") <= 600
    sink.close()
    again.close()


@pytest.mark.integration
def test_redis_sink_unreachable_names_redacted_url() -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    t0 = time.monotonic()
    with pytest.raises(SinkError) as info:
        build_sink("redis", KafkaSettings(), RedisSettings(url=url))
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "hunter2" not in msg and "--redis" in msg


@pytest.mark.integration
def test_redis_sink_password_from_settings() -> None:
    with RedisServer(password="s3cret") as server:
        with pytest.raises(SinkError, match="ES_REDIS_PASSWORD") as info:
            build_sink("redis", KafkaSettings(), RedisSettings(url=server.url))
        assert "s3cret" not in str(info.value)
        settings = RedisSettings(url=server.url, password=SecretStr("s3cret"))
        sink = build_sink("redis", KafkaSettings(), settings)
        sink.write(frames_of_events("a", 1)[0])
        sink.flush()
        sink.close()


# ----------------------------------------------------------------------------- commands


@pytest.mark.integration
def test_cli_sessions_show_json_and_table(
    redis_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _name("cli")
    sink = build_sink("redis", KafkaSettings(), RedisSettings(url=redis_server.url))
    batches = frames_of_events("cam", 5, session=session)
    for b in batches:
        sink.write(b)
    sink.close()
    assert main(["-q", "sessions", "show", session, "--redis", redis_server.url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    faces = [e for b in batches for e in b]
    assert data["faces"] == 15 and data["frames"] == 5 and data["tracks"] == 3
    assert data["emotions"] == dict(Counter(e["emotion"]["label"] for e in faces))
    assert data["first_ts"] == faces[0]["timestamp"] and data["last_ts"] == faces[-1]["timestamp"]
    assert main(["-q", "sessions", "show", session, "--redis", redis_server.url, "--tracks"]) == 0
    table = capsys.readouterr().out
    assert "faces     15" in table and "track cam:1" in table


@pytest.mark.integration
def test_cli_sessions_show_unreachable_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["-q", "sessions", "show", "x", "--redis", f"redis://127.0.0.1:{port}/0"]) != 0
    err = capsys.readouterr().err
    assert str(port) in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_cli_tail_max_prints_events(kafka_broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    topic = _name("tail")
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, topic=topic, partitions=1)
    sink = build_sink("kafka", settings, RedisSettings())
    batches = frames_of_events("cam", 4)
    for b in batches:
        sink.write(b)
    sink.close()
    argv = ["-q", "tail", "--kafka", kafka_broker.bootstrap, "--topic", topic]
    assert main([*argv, "--from-beginning", "--max", "5", "--idle-timeout", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [ev.encode(e).decode() for b in batches for e in b][:5]


@pytest.mark.integration
def test_cli_tail_unreachable_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main(["-q", "tail", "--kafka", f"127.0.0.1:{port}", "--max", "1"]) != 0
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.integration
def test_redis_sink_retries_frames_after_outage() -> None:
    from pipeline.sinks.redis_agg import read_session

    batches = frames_of_events("cam", 6)
    server = RedisServer()
    port = server.port
    try:
        sink = build_sink("redis", KafkaSettings(), RedisSettings(url=server.url))
        for b in batches[:2]:
            sink.write(b)
        server.stop()
        with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
            sink.write(batches[2])
        server = RedisServer(port=port)  # back, but empty: only the held frames remain
        for b in batches[3:]:
            sink.write(b)
        sink.flush()
        agg = read_session(_client(server.url), "es", "sess")
        assert agg["frames"] == 4 and agg["faces"] == 12
        sink.close()
    finally:
        server.stop()
