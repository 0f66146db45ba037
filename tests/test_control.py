"""Control plane: stream records, validation of what a record may open, partition mapping,
the group runner's reaction to records and rebalances (fake stream host), and the same
against a real Kafka-protocol broker (compacted topic, tombstones, a two-member group)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.control.group import Assignor, GroupRunner, GroupSettings
from pipeline.control.health import HealthServer
from pipeline.control.metrics import Metrics
from pipeline.control.streams import (
    ControlClient,
    StreamRecord,
    ensure_control_topic,
    partition_for,
    redact_url,
    validate_record,
)
from pipeline.core.config import KafkaSettings, SourceSettings
from pipeline.core.errors import ConfigError
from tests.servers import wait_until

# --------------------------------------------------------------------------- records


def _rec(**kw: Any) -> StreamRecord:
    base: dict[str, Any] = {"stream_id": "cam1", "url": "rtsp://cam/1"}
    return StreamRecord(**{**base, **kw})


def test_record_roundtrip_keeps_fields() -> None:
    rec = _rec(session_id="s", every=3, loop=True, realtime=True, max_frames=9)
    again = StreamRecord.from_bytes("cam1", rec.to_bytes())
    assert again == rec
    assert json.loads(rec.to_bytes())["schema"] == "emotion-stream.stream/v1"


def test_record_key_mismatch_rejected() -> None:
    with pytest.raises(ConfigError, match="differs from its key"):
        StreamRecord.from_bytes("other", _rec().to_bytes())


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b'{"stream_id": "cam1"}',
        b'{"stream_id": "cam1", "url": "x", "shell": "rm"}',
        b"[]",
    ],
)
def test_record_invalid_bytes_rejected(value: bytes) -> None:
    with pytest.raises(ConfigError, match="control record 'cam1'"):
        StreamRecord.from_bytes("cam1", value)


def test_record_bad_stream_id_rejected() -> None:
    with pytest.raises(ValueError):
        _rec(stream_id="../etc")


def test_record_source_settings_override_base() -> None:
    s = _rec(every=4, loop=True).source_settings(SourceSettings(queue_size=3))
    assert (s.every, s.loop, s.queue_size) == (4, True, 3)


# --------------------------------------------------------------------------- validation


def test_validate_file_under_media_root_accepted(tmp_path: Path) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"x")
    assert validate_record(_rec(url=f"file://{clip}"), tmp_path) == str(clip)
    assert validate_record(_rec(url="a.mp4"), tmp_path) == str(clip)
    assert validate_record(_rec(url=str(clip)), tmp_path) == str(clip)


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "/etc/passwd", "../../etc/passwd", "file://../x"]
)
def test_validate_file_outside_media_root_rejected(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="outside the media root"):
        validate_record(_rec(url=url), tmp_path / "media")


def test_validate_symlink_escape_rejected(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "link.mp4").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="outside the media root"):
        validate_record(_rec(url="link.mp4"), root)


def test_validate_file_without_media_root_rejected() -> None:
    with pytest.raises(ConfigError, match="--media-root"):
        validate_record(_rec(url="/tmp/a.mp4"), None)


@pytest.mark.parametrize(
    "url", ["concat:/etc/passwd|/x", "ftp://h/x", "pipe:0", "data:video/mp4;base64,AA"]
)
def test_validate_scheme_not_allowed(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        validate_record(_rec(url=url), tmp_path)


def test_validate_network_url_never_expands_env_refs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM_PASS", "pw")
    with pytest.raises(ConfigError, match=r"never expanded.*source\.credentials"):
        validate_record(_rec(url="rtsp://bob:${CAM_PASS}@h/1"), None)


def test_redact_url_hides_credentials() -> None:
    assert "pw" not in redact_url("rtsp://u:pw@h:554/x")
    assert redact_url("file:///media/a.mp4") == "file:///media/a.mp4"


def test_partition_for_matches_java_murmur2_vectors() -> None:
    """Kafka's own UtilsTest vectors: the Java producer puts a key where kafka-python does."""
    java = {
        "21": -973932308,
        "foobar": -790332482,
        "a-little-bit-long-string": -985981536,
        "abc": 479470107,
    }
    for key, h in java.items():
        for n in (1, 6, 12, 7):
            assert partition_for(key, n) == (h & 0x7FFFFFFF) % n, (key, n)


# --------------------------------------------------------------------------- group runner (fake host)


class FakeHost:
    """Records add/remove calls (the real Worker is exercised in test_scaleout)."""

    def __init__(self) -> None:
        self.running: dict[str, Any] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def add_stream(
        self,
        spec: Any,
        source_settings: SourceSettings | None = None,
        session_id: str | None = None,
    ) -> None:
        with self.lock:
            assert spec.stream_id not in self.running
            self.running[spec.stream_id] = (spec, source_settings, session_id)
            self.log.append(("add", spec.stream_id))

    def remove_stream(self, stream_id: str, reason: str = "removed", timeout: float = 30.0) -> None:
        with self.lock:
            self.running.pop(stream_id, None)
            self.log.append(("remove", stream_id))

    def stream_ids(self) -> list[str]:
        with self.lock:
            return list(self.running)


@dataclass(frozen=True)
class FakeSpec:
    url: str
    stream_id: str


def _runner(
    host: FakeHost, media_root: Path | None = None, bootstrap: str = "127.0.0.1:1", **gs: Any
) -> GroupRunner:
    return GroupRunner(
        host,
        KafkaSettings(bootstrap=bootstrap, control_topic=gs.pop("topic", "emotion-streams")),
        GroupSettings(**gs),
        "w-test",
        media_root,
        SourceSettings(),
        Metrics(),
        make_spec=FakeSpec,
    )


def test_runner_starts_updates_and_tombstones() -> None:
    host = FakeHost()
    r = _runner(host)
    r._on_assigned({0, 1})
    r.apply_one("cam1", _rec().to_bytes(), 0)
    r.apply_one("cam1", _rec().to_bytes(), 0)  # same spec: nothing happens
    assert host.log == [("add", "cam1")]
    r.apply_one("cam1", _rec(every=2).to_bytes(), 0)  # changed: restart with the new spec
    assert host.log[-2:] == [("remove", "cam1"), ("add", "cam1")]
    assert host.running["cam1"][1].every == 2
    r.apply_one("cam1", None, 0)
    assert host.running == {} and host.log[-1] == ("remove", "cam1")


def test_runner_rejects_file_outside_media_root_with_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    host = FakeHost()
    r = _runner(host, media_root=tmp_path)
    r._on_assigned({0})
    with caplog.at_level(logging.WARNING, logger="pipeline.control.group"):
        r.apply_one("evil", _rec(stream_id="evil", url="file:///etc/passwd").to_bytes(), 0)
    assert host.running == {}
    assert "outside the media root" in r.rejected["evil"]
    assert any("rejected" in m and "outside the media root" in m for m in caplog.messages)


def test_runner_revoke_stops_only_streams_of_revoked_partitions() -> None:
    host = FakeHost()
    r = _runner(host)
    r._on_assigned({0, 1})
    r.apply_one("a", _rec(stream_id="a").to_bytes(), 0)
    r.apply_one("b", _rec(stream_id="b").to_bytes(), 1)
    r._on_revoked({1}, "rebalance")
    assert sorted(host.running) == ["a"]
    ok, detail = r.ready()
    assert ok and detail["partitions"] == [0] and detail["streams"] == ["a"]


def test_runner_ignores_records_of_unassigned_partitions() -> None:
    @dataclass
    class Rec:
        key: bytes | None
        value: bytes | None
        partition: int

    host = FakeHost()
    r = _runner(host)
    r._on_assigned({0})
    r.apply(
        [Rec(b"a", _rec(stream_id="a").to_bytes(), 0), Rec(b"b", _rec(stream_id="b").to_bytes(), 5)]
    )
    r.apply(
        [Rec(b"a", None, 0), Rec(b"a", _rec(stream_id="a", every=5).to_bytes(), 0)]
    )  # latest wins
    assert list(host.running) == ["a"] and host.running["a"][1].every == 5


# --------------------------------------------------------------------------- health and metrics


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_health_endpoints_and_metrics_per_stream() -> None:
    from pipeline.runtime.stats import BatcherStats, StreamStats, WorkerStats

    cam1 = StreamStats(
        stream_id="cam1",
        url="rtsp://cam/1",
        session_id="s1",
        decoded=10,
        dropped=2,
        reconnects=1,
        decode_errors=0,
        epoch=0,
        state="running",
        state_reason=None,
        processed=5,
        faces=7,
        tracks=1,
        emotions={"happy": 7},
        fps=2.5,
        faces_per_s=3.5,
        detect_ms_mean=1.0,
        infer_ms_mean=1.0,
        done=False,
        end_reason="running",
        error=None,
    )
    batcher = BatcherStats(True, 32, 2, 7, 3.5, 4, 1.0, 1.0, 0, 0)
    stats = WorkerStats("w", {"cam1": cam1}, batcher, events=12, sink_errors={"kafka": 1})
    metrics = Metrics(lambda: stats)
    ready = {"ok": False}
    srv = HealthServer(
        "127.0.0.1", 0, lambda: (True, {}), lambda: (ready["ok"], {}), metrics.render
    ).start()
    try:
        base = f"http://127.0.0.1:{srv.port}"
        assert _get(base + "/healthz")[0] == 200
        assert _get(base + "/readyz")[0] == 503
        ready["ok"] = True
        assert _get(base + "/readyz")[0] == 200
        assert _get(base + "/nope")[0] == 404
        code, body = _get(base + "/metrics")
        text = body.decode()
        assert code == 200
        assert 'emotion_stream_stream_frames_dropped_total{stream="cam1"} 2.0' in text
        assert 'emotion_stream_stream_reconnects_total{stream="cam1"} 1.0' in text
        assert "emotion_stream_assigned_streams 1.0" in text
        assert "emotion_stream_batcher_mean_batch 3.5" in text
        assert 'emotion_stream_sink_errors_total{sink="kafka"} 1.0' in text
        assert "emotion_stream_events_total 12.0" in text
    finally:
        srv.close()


# --------------------------------------------------------------------------- real broker


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _topic(tag: str) -> str:
    return f"ctl-{tag}-{os.getpid()}-{time.monotonic_ns() % 10**6}"


@pytest.mark.integration
def test_cli_add_list_remove_on_compacted_topic(kafka_broker: Any) -> None:
    topic = _topic("cli")
    common = [
        "--kafka",
        kafka_broker.bootstrap,
        "--control-topic",
        topic,
        "--control-partitions",
        "6",
    ]
    r = _cli("streams", "add", "cam1", "rtsp://admin:hunter2@cam/1", "--session", "s1", *common)
    assert r.returncode == 0, r.stderr
    assert "hunter2" not in r.stdout + r.stderr and "credentials in clear" in r.stderr
    assert f"partition {partition_for('cam1', 6)} of 6" in r.stdout
    assert (
        _cli(
            "streams", "add", "cam2", "file:///media/a.mp4", "--loop", "--every", "2", *common
        ).returncode
        == 0
    )
    assert (
        _cli("streams", "add", "cam2", "file:///media/b.mp4", *common).returncode == 0
    )  # replaces
    rows = {
        row["stream_id"]: row
        for row in json.loads(_cli("streams", "list", "--json", *common).stdout)
    }
    assert set(rows) == {"cam1", "cam2"}
    assert rows["cam2"]["url"] == "file:///media/b.mp4" and rows["cam2"]["loop"] is False
    assert rows["cam1"]["url"] == "rtsp://***:***@cam/1" and rows["cam1"]["session_id"] == "s1"
    assert rows["cam1"]["partition"] == partition_for("cam1", 6)
    r = _cli("streams", "remove", "cam1", *common)
    assert r.returncode == 0 and f"partition {partition_for('cam1', 6)}" in r.stdout
    rows = {
        row["stream_id"]: row
        for row in json.loads(_cli("streams", "list", "--json", *common).stdout)
    }
    assert set(rows) == {"cam2"}
    bad = _cli("streams", "add", "x", "concat:/etc/passwd", *common)
    assert bad.returncode != 0 and "not allowed" in bad.stderr


@pytest.mark.integration
def test_control_topic_created_compacted_with_partitions(
    kafka_broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """We ask for ``cleanup.policy=compact`` (checked on the request the broker receives) and
    the broker keeps the partition count. Where the broker reports topic configs (Apache Kafka
    does), the policy must read ``compact``; tansu answers DescribeConfigs with an empty map
    (measured: ``{'topic': {NAME: {}}}``), so there the request is what can be checked."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    sent: list[Any] = []
    create = KafkaAdminClient.create_topics

    def spy(self: Any, new_topics: list[Any], *a: Any, **kw: Any) -> Any:
        sent.extend(new_topics)
        return create(self, new_topics, *a, **kw)

    monkeypatch.setattr(KafkaAdminClient, "create_topics", spy)
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, control_topic=_topic("cfg"))
    assert ensure_control_topic(kafka, 5) == 5
    assert ensure_control_topic(kafka, 9) == 5  # existing topic kept
    assert [t.topic_configs for t in sent] == [{"cleanup.policy": "compact"}] * 2
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        res = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, kafka.control_topic)]
        )
        parts = admin.describe_topics([kafka.control_topic])[0]["partitions"]
    finally:
        admin.close()
    assert len(parts) == 5
    reported = dict(res["topic"][kafka.control_topic])
    if reported:  # a broker that reports configs must report the policy we asked for
        assert "compact" in str(reported["cleanup.policy"])


@pytest.mark.integration
def test_tombstone_and_latest_record_win_when_read_back(kafka_broker: Any) -> None:
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, control_topic=_topic("tomb"))
    ensure_control_topic(kafka, 3)
    client = ControlClient(kafka)
    for i in range(3):
        client.put(_rec(stream_id="a", every=i + 1))
    client.put(_rec(stream_id="b"))
    client.remove("b")
    client.put(_rec(stream_id="c"))
    got = client.read_all()
    assert sorted(got) == ["a", "c"] and got["a"].every == 3


@pytest.mark.integration
def test_control_topic_latest_record_per_key_is_last_in_its_partition(kafka_broker: Any) -> None:
    """What compaction and every reader rely on, read with a plain consumer (no de-duplication
    by key): all records of one key land in one partition, in write order, so the last record
    of a key is its latest value, and a removed key ends with a tombstone. A compacting broker
    may have dropped earlier records; the last one per key is the same either way."""
    from kafka import KafkaConsumer, TopicPartition

    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, control_topic=_topic("last"))
    ensure_control_topic(kafka, 3)
    client = ControlClient(kafka)
    for i in range(3):
        client.put(_rec(stream_id="a", every=i + 1))
    client.put(_rec(stream_id="b"))
    client.remove("b")
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker.bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(kafka.control_topic, p) for p in range(3)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        raw: list[Any] = []
        deadline = time.monotonic() + 15
        while len(raw) < 5 and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                raw.extend(recs)
    finally:
        consumer.close()
    by_key: dict[str, list[Any]] = {}
    for r in sorted(raw, key=lambda r: (r.partition, r.offset)):
        by_key.setdefault(r.key.decode(), []).append(r)
    assert {k: {r.partition for r in v} for k, v in by_key.items()} == {
        "a": {partition_for("a", 3)},
        "b": {partition_for("b", 3)},
    }
    everys = [json.loads(r.value)["every"] for r in by_key["a"]]
    assert everys == [1, 2, 3][-len(everys) :] and everys[-1] == 3
    assert by_key["b"][-1].value is None


@pytest.mark.integration
@pytest.mark.parametrize("assignor", list(Assignor))
def test_group_of_two_shares_streams_and_takes_over_on_leave(
    kafka_broker: Any, assignor: Assignor
) -> None:
    """Two runners (fake hosts) in one group: every stream on exactly one; when one leaves
    cleanly, the other runs all of them; a tombstone stops a stream on its owner."""
    topic = _topic("grp")
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, control_topic=topic)
    ensure_control_topic(kafka, 6)
    client = ControlClient(kafka)
    ids = [f"s{i}" for i in range(6)]
    for sid in ids:
        client.put(_rec(stream_id=sid))
    gs = {
        "group": f"g-{topic}",
        "session_timeout_ms": 3000,
        "heartbeat_interval_ms": 500,
        "topic": topic,
        "assignor": assignor,
        "max_poll_interval_ms": 6000,
    }
    hosts = [FakeHost(), FakeHost()]
    runners = [_runner(h, bootstrap=kafka_broker.bootstrap, **gs) for h in hosts]
    stops = [threading.Event(), threading.Event()]
    threads = [
        threading.Thread(target=r.run, args=(s,), daemon=True)
        for r, s in zip(runners, stops, strict=True)
    ]
    for t in threads:
        t.start()

    def owners() -> list[list[str]]:
        return [sorted(h.stream_ids()) for h in hosts]

    def shared() -> bool:
        """Every stream on exactly one runner, and both runners hold partitions."""
        a, b = owners()
        return sorted(a + b) == ids and all(r.assignments and r._assigned for r in runners)

    try:
        wait_until(shared, 30, lambda: f"both runners to share {ids} (now {owners()})")
        # the partitions decide: each runner runs exactly the streams that hash to its own
        for r, h in zip(runners, hosts, strict=True):
            assert sorted(h.stream_ids()) == sorted(
                s for s in ids if partition_for(s, 6) in r._assigned
            )
        client.remove("s0")
        wait_until(lambda: all("s0" not in o for o in owners()), 10, lambda: "tombstone to stop s0")
        busy = 0 if len(owners()[0]) >= len(owners()[1]) else 1
        other = 1 - busy
        stops[busy].set()
        threads[busy].join(20)
        assert hosts[busy].stream_ids() == []
        took = wait_until(
            lambda: owners()[other] == ids[1:],
            20,
            lambda: f"the other runner to take all streams (now {owners()})",
        )
        print(f"{assignor}: hand-over after a clean leave: {took:.2f} s")
    finally:
        for s in stops:
            s.set()
        for t in threads:
            t.join(20)


def test_worker_without_kafka_fails_with_one_line() -> None:
    r = _cli("worker", "--kafka", "", "--metrics-port", "-1", env={"ES_KAFKA_BOOTSTRAP": ""})
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")


def test_streams_list_unreachable_kafka_fails_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _cli("streams", "list", "--kafka", f"127.0.0.1:{port}")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "unreachable" in lines[0], (
        r.stderr
    )


def test_ensure_control_topic_asks_for_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """The create request itself (tansu does not report topic configs back)."""
    from pipeline.core import kafka_client

    created: list[Any] = []

    class FakeAdmin:
        def create_topics(self, topics: list[Any], **_kw: Any) -> None:
            created.extend(topics)

        def describe_topics(self, _names: list[str]) -> list[dict[str, Any]]:
            return [{"partitions": [{"partition": i} for i in range(created[0].num_partitions)]}]

        def close(self) -> None:
            pass

    monkeypatch.setattr(kafka_client, "make_admin", lambda _k, _t: FakeAdmin())
    n = ensure_control_topic(KafkaSettings(bootstrap="h:1", control_topic="ctl"), 7)
    assert n == 7 and created[0].name == "ctl"
    assert created[0].topic_configs == {"cleanup.policy": "compact"}
