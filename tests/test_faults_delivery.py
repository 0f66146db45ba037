"""Delivery under faults, with real servers: a tansu broker (memory or S3 storage on a local
moto server), a real redis-server, and the worker as a real ``emotion-stream run`` process
fed live-paced (``--realtime --loop``). Outages are shortened, but each one outlasts the
producer's timeouts (set through ES_KAFKA_* / ES_REDIS_*), so every fault really bites."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.tools.loopback import KafkaServer, RedisProc, S3Server
from tests.delivery_check import assert_ids_in_kafka, jsonl_ids, topic_ids
from tests.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Producer timeouts the outages below outlast (request 2 s -> delivery timeout about 4 s).
FAST_ENV = {
    "ES_KAFKA_REQUEST_TIMEOUT_MS": "2000",
    "ES_KAFKA_MAX_BLOCK_MS": "2000",
    "ES_REDIS_SOCKET_TIMEOUT_S": "1",
}
OUTAGE_S = 10.0
TOPIC = "faults"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        server.start()
    except Exception as exc:
        pytest.fail(f"local S3 (moto) did not start: {exc}", pytrace=False)
    yield server
    server.close()


class Run:
    """One ``emotion-stream run`` process on the sample clip, paced like a camera."""

    def __init__(self, tmp: Path, clip: Path, models: Path, seconds: float, *sinks: str) -> None:
        self.jsonl = tmp / "events.jsonl"
        cmd = [sys.executable, "-m", "pipeline", "-q", "run", str(clip), "--models", str(models)]
        cmd += ["--realtime", "--loop", "--every", "5", "--max-frames", str(int(25 * seconds))]
        cmd += ["--stream-id", "cam1", "--worker-id", "w1", "--log-dir", str(tmp / "log")]
        cmd += ["--topic", TOPIC, "--partitions", "2", "--session", "s1", "--json"]
        cmd += ["--sink", f"jsonl:{self.jsonl}", *sinks]
        env = {**os.environ, **FAST_ENV, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    def wait_events(self, n: int, timeout: float = 90.0) -> None:
        wait_until(lambda: len(jsonl_ids(self.jsonl)) >= n, timeout, lambda: f"{n} events")

    def finish(self, timeout: float = 240.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err[-3000:]
        return dict(json.loads(out))

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)


def face_events(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["type"] == "face":
            out[e["event_id"]] = e
    return out


def assert_all_in_kafka(accepted: list[str], bootstrap: str) -> Counter[str]:
    return assert_ids_in_kafka(accepted, bootstrap, TOPIC)


def redis_session(url: str) -> dict[str, Any]:
    import redis

    from pipeline.sinks.redis_agg import read_session

    client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2)
    try:
        return dict(read_session(client, "es", "s1"))
    finally:
        client.close()


def redis_faces(url: str) -> int:
    return int(redis_session(url)["faces"])


def assert_clean(sink: dict[str, Any]) -> None:
    """Everything accepted reached the sink: nothing pending, nothing dropped or rejected."""
    assert (sink["pending"], sink["dropped"], sink["rejected"]) == (0, 0, 0), sink


def test_faults_broker_paused_loses_nothing(
    tmp_path: Path, sample_clip: Path, models_dir: Path
) -> None:
    with KafkaServer() as broker:
        run = Run(tmp_path, sample_clip, models_dir, 30, "--kafka", broker.bootstrap)
        run.wait_events(20)
        broker.pause()
        time.sleep(OUTAGE_S)
        broker.resume()
        summary = run.finish()
        accepted = jsonl_ids(run.jsonl)
        in_kafka = assert_all_in_kafka(accepted, broker.bootstrap)
    kafka = summary["sinks"][f"kafka:{TOPIC}"]
    assert kafka["retried"] > 0 and kafka["outages_s"], kafka  # the pause really bit
    assert_clean(kafka)
    assert set(in_kafka) == set(accepted)


def test_faults_broker_restart_with_persistent_storage_loses_nothing(
    tmp_path: Path, sample_clip: Path, models_dir: Path, s3: S3Server
) -> None:
    with KafkaServer(s3) as broker:
        run = Run(tmp_path, sample_clip, models_dir, 25, "--kafka", broker.bootstrap)
        run.wait_events(20)
        broker.stop()
        time.sleep(OUTAGE_S / 2)
        broker.start()
        summary = run.finish()
        accepted = jsonl_ids(run.jsonl)
        assert_all_in_kafka(accepted, broker.bootstrap)
    kafka = summary["sinks"][f"kafka:{TOPIC}"]
    assert kafka["retried"] > 0 and kafka["outages_s"], kafka  # the restart really bit
    assert_clean(kafka)


def test_faults_worker_kill9_while_broker_down_replays_the_log(
    tmp_path: Path, sample_clip: Path, models_dir: Path, s3: S3Server
) -> None:
    with KafkaServer(s3) as broker:
        first = Run(tmp_path, sample_clip, models_dir, 60, "--kafka", broker.bootstrap)
        first.wait_events(20)
        broker.stop()
        n = len(jsonl_ids(first.jsonl))
        first.wait_events(n + 30)  # accepted while the broker is down
        first.kill9()
        accepted_first = jsonl_ids(first.jsonl)
        broker.start()
        second = Run(tmp_path, sample_clip, models_dir, 2, "--kafka", broker.bootstrap)
        summary = second.finish()
        accepted = accepted_first + jsonl_ids(second.jsonl)
        assert_all_in_kafka(accepted, broker.bootstrap)
    assert summary["sinks"][f"kafka:{TOPIC}"]["delivered"] > summary["events"]  # the replay


def test_faults_redis_hung_then_stopped_kafka_flows_and_totals_exact(
    tmp_path: Path, sample_clip: Path, models_dir: Path
) -> None:
    with KafkaServer() as broker, RedisProc() as redis_proc:
        sinks = ("--kafka", broker.bootstrap, "--redis", redis_proc.url)
        run = Run(tmp_path, sample_clip, models_dir, 40, *sinks)
        run.wait_events(20)
        # the production rate, all sinks up: events per second into the (local) JSONL file
        t0, n0 = time.monotonic(), len(jsonl_ids(run.jsonl))
        time.sleep(4.0)
        rate = (len(jsonl_ids(run.jsonl)) - n0) / (time.monotonic() - t0)
        redis_proc.pause()
        # Kafka's distinct ids at the start and the end of the hang
        t1, kafka1 = time.monotonic(), len(topic_ids(broker.bootstrap, TOPIC))
        time.sleep(OUTAGE_S)
        t2, kafka2 = time.monotonic(), len(topic_ids(broker.bootstrap, TOPIC))
        redis_proc.resume()
        expected = rate * (t2 - t1)
        print(f"while Redis hung: {kafka2 - kafka1} new ids in Kafka, {expected:.0f} expected")
        assert rate >= 3, f"only {rate:.1f} events/s before the hang"
        assert kafka2 - kafka1 >= 0.7 * expected, (
            f"Kafka got {kafka2 - kafka1} new ids while Redis hung; "
            f"{expected:.0f} expected at {rate:.1f} events/s"
        )
        # Redis catches up on the hang's backlog before it is stopped: two separate outages
        backlog = len(face_events(run.jsonl))
        wait_until(lambda: redis_faces(redis_proc.url) >= backlog, 60, lambda: "Redis backlog")
        redis_proc.stop()
        time.sleep(OUTAGE_S)
        redis_proc.start()
        summary = run.finish()
        faces = face_events(run.jsonl)
        assert_all_in_kafka(jsonl_ids(run.jsonl), broker.bootstrap)
        agg = redis_session(redis_proc.url)
    kafka, red = summary["sinks"][f"kafka:{TOPIC}"], summary["sinks"]["redis:" + redis_proc.url]
    # Redis was down twice (hung, stopped), each time for most of the outage; Kafka never
    assert len(red["outages_s"]) >= 2 and red["retried"] > 0, red
    assert sorted(red["outages_s"])[-2] >= OUTAGE_S / 2, red
    assert kafka["outages_s"] == [] and kafka["retried"] == 0, kafka
    assert_clean(kafka)
    assert_clean(red)
    assert agg["faces"] == len(faces)
    assert agg["emotions"] == dict(Counter(e["emotion"]["label"] for e in faces.values()))
