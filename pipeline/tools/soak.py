"""``emotion-stream soak``: N live-paced streams for a given time through Kafka, Redis and a
JSONL file, while broker and Redis outages are injected on loopback servers this command
starts itself (tansu with S3 storage on a local moto server when ``moto`` is installed,
so a broker restart keeps its data; redis-server with an append-only file).

It reports, as JSON: events accepted, delivered per sink, lost per sink (accepted ids
missing from Kafka, faces missing from the Redis totals: must be 0), each outage with how
long its sink was down as the worker measured it (``sink_down_s``; null: the fault never
made the sink fail, so it proved nothing) and, for a sink that was down, its recovery time
(from the end of the outage until the sink has no event older than 2 s pending), and the
worker's RSS over time.
"""

from __future__ import annotations

import enum
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from pipeline.core.config import KafkaSettings, RedisSettings, WorkerSettings
from pipeline.tools.loopback import KafkaServer, RedisProc, S3Server, Server

logger = logging.getLogger(__name__)

TOPIC = "soak-events"
SESSION = "soak"


class Fault(enum.StrEnum):
    """The outages injected, in turn."""

    KAFKA_PAUSE = "kafka_pause"
    REDIS_PAUSE = "redis_pause"
    KAFKA_RESTART = "kafka_restart"
    REDIS_RESTART = "redis_restart"


@dataclass(frozen=True)
class SoakPlan:
    streams: int = 2
    seconds: float = 150.0
    outage_s: float = 20.0
    every: int = 5
    faults: tuple[Fault, ...] = tuple(Fault)
    #: keep broker data on a local S3 server (moto) so the broker can be restarted; False:
    #: memory storage, no broker restart (tansu reads back slowly from S3 after a restart)
    persistent_broker: bool = True


@dataclass
class Outage:
    fault: Fault
    start_s: float
    end_s: float = 0.0
    #: the sink's outages the worker recorded for this fault, summed; None: never down
    sink_down_s: float | None = None
    recovery_s: float | None = None


@dataclass
class Servers:
    kafka: KafkaServer
    redis: RedisProc
    s3: S3Server | None
    extra: list[Server] = field(default_factory=list)

    def sink_of(self, fault: Fault) -> tuple[Server, str]:
        if fault in (Fault.KAFKA_PAUSE, Fault.KAFKA_RESTART):
            return self.kafka, f"kafka:{TOPIC}"
        return self.redis, "redis:" + self.redis.url

    def close(self) -> None:
        for s in (self.kafka, self.redis, self.s3):
            if s is not None:
                s.close()


def start_servers(persistent: bool = True) -> Servers:
    s3 = None
    try:
        if persistent:
            s3 = S3Server()
            s3.start()
    except Exception as exc:  # no moto: memory storage, and no broker restarts
        logger.warning("no local S3 (%s): the broker keeps data in memory", exc)
        s3 = None
    return Servers(KafkaServer(s3), RedisProc(keep=True), s3)


def inject(servers: Servers, fault: Fault, outage_s: float, stop: threading.Event) -> None:
    server, _ = servers.sink_of(fault)
    if fault in (Fault.KAFKA_PAUSE, Fault.REDIS_PAUSE):
        server.pause()
        stop.wait(outage_s)
        server.resume()
    else:
        server.stop()
        stop.wait(outage_s)
        server.start()


def _recovered(worker: Any, sink: str) -> bool:
    d = worker.stats().sinks.get(sink, {})
    return not d.get("down", True) and d.get("oldest_pending_age_s", 1e9) < 2.0


def _sink_outages(worker: Any, sink: str) -> list[float]:
    return list(worker.stats().sinks.get(sink, {}).get("outages_s", []))


def run_faults(
    worker: Any, servers: Servers, plan: SoakPlan, stop: threading.Event, t0: float
) -> list[Outage]:
    """Inject each fault in turn, evenly spread over the soak; measure recovery."""
    faults = [f for f in plan.faults if servers.s3 is not None or f is not Fault.KAFKA_RESTART]
    gap = plan.seconds / (len(faults) + 1)
    outages = []
    for i, fault in enumerate(faults):
        if stop.wait(max(t0 + gap * (i + 1) - plan.outage_s / 2 - time.monotonic(), 0)):
            break
        outage = Outage(fault, round(time.monotonic() - t0, 1))
        _, sink = servers.sink_of(fault)
        known = len(_sink_outages(worker, sink))
        logger.warning("soak: %s for %.0f s", fault.value, plan.outage_s)
        inject(servers, fault, plan.outage_s, stop)
        end = time.monotonic()
        outage.end_s = round(end - t0, 1)
        while not stop.is_set() and not _recovered(worker, sink):
            time.sleep(0.2)
        down = _sink_outages(worker, sink)[known:]  # recorded when the sink delivers again
        outage.sink_down_s = round(sum(down), 2) if down else None
        if not stop.is_set() and down:  # recovery means something only for a sink that was down
            outage.recovery_s = round(time.monotonic() - end, 2)
        outages.append(outage)
    return outages


def sample_rss(stop: threading.Event, t0: float, out: list[tuple[float, float]]) -> None:
    proc = psutil.Process()
    while True:
        out.append((round(time.monotonic() - t0, 1), round(proc.memory_info().rss / 2**20, 1)))
        if stop.wait(5.0):
            return


def build(
    clip: Path, models: Path, plan: SoakPlan, servers: Servers, work: Path
) -> tuple[Any, list[Any]]:
    from pipeline.media.sources import parse_source
    from pipeline.runtime.worker import build_worker

    settings = WorkerSettings(worker_id="soak", session_id=SESSION)
    source = settings.source.model_copy(
        update={"realtime": True, "loop": True, "every": plan.every}
    )
    delivery = settings.delivery.model_copy(update={"log_dir": work / "log", "retry_max_s": 2.0})
    settings = settings.model_copy(update={"source": source, "delivery": delivery})
    kafka = KafkaSettings(
        bootstrap=servers.kafka.bootstrap,
        topic=TOPIC,
        partitions=2,
        request_timeout_ms=3000,
        max_block_ms=3000,
    )
    redis = RedisSettings(url=servers.redis.url, socket_timeout_s=1.0)
    sinks = ["kafka", "redis", f"jsonl:{work / 'events.jsonl'}"]
    worker = build_worker(settings, sinks, kafka, redis, models_dir=models)
    specs = [parse_source(str(clip), f"soak-{i}") for i in range(plan.streams)]
    return worker, specs


def verify(work: Path, servers: Servers) -> dict[str, Any]:
    """Accepted (the JSONL file, delivered first and locally) against Kafka and Redis."""
    import redis as redis_py
    from kafka import TopicPartition

    from pipeline.core.kafka_client import make_consumer
    from pipeline.sinks.redis_agg import read_session

    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    ids = {e["event_id"] for e in events}
    faces = {e["event_id"]: e for e in events if e["type"] == "face"}
    consumer = make_consumer(
        KafkaSettings(bootstrap=servers.kafka.bootstrap),
        TOPIC,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=500,  # tansu on S3 stalls on many short fetch waits
        consumer_timeout_ms=5000,
    )
    in_kafka: Counter[str] = Counter()
    deadline = time.monotonic() + 120
    while len(set(in_kafka) & ids) < len(ids) and time.monotonic() < deadline:
        for msg in consumer:
            in_kafka[json.loads(msg.value)["event_id"]] += 1
            if time.monotonic() > deadline:
                break
    parts = consumer.partitions_for_topic(TOPIC) or set()
    ends = consumer.end_offsets([TopicPartition(TOPIC, p) for p in parts]) if parts else {}
    consumer.close()
    client = redis_py.Redis.from_url(servers.redis.url, decode_responses=True)
    agg = read_session(client, "es", SESSION)
    client.close()
    return {
        "accepted_ids": len(ids),
        "kafka_messages": sum(in_kafka.values()),
        "kafka_end_offsets": sum(ends.values()),
        "kafka_duplicates": sum(in_kafka.values()) - len(in_kafka),
        "lost": {
            "kafka": len(ids - set(in_kafka)),
            "redis_faces": len(faces) - int(agg["faces"]),
        },
    }


def run_soak(clip: Path, models: Path, plan: SoakPlan) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="es-soak-"))
    servers = start_servers(plan.persistent_broker)
    try:
        worker, specs = build(clip, models, plan, servers, work)
        stop = threading.Event()
        rss: list[tuple[float, float]] = []
        t0 = time.monotonic()
        sampler = threading.Thread(target=sample_rss, args=(stop, t0, rss), daemon=True)
        sampler.start()
        for spec in specs:
            worker.add_stream(spec)
        timer = threading.Timer(plan.seconds, stop.set)
        timer.start()
        outages = run_faults(worker, servers, plan, stop, t0)
        stop.wait()
        worker.stop("soak over")
        stats = worker.stats()
        accepted, sinks = stats.events, stats.sinks
        result = {
            "streams": plan.streams,
            "seconds": plan.seconds,
            "outage_s": plan.outage_s,
            "broker_storage": "s3" if servers.s3 is not None else "memory",
            "events_accepted": accepted,
            "delivered": {n: d["delivered"] for n, d in sinks.items()},
            "retried": {n: d["retried"] for n, d in sinks.items()},
            "sink_outages_s": {n: d["outages_s"] for n, d in sinks.items()},
            "dropped": {n: d["dropped"] for n, d in sinks.items()},
            "pending_at_end": {n: d["pending"] for n, d in sinks.items()},
            **verify(work, servers),
            "outages": [o.__dict__ | {"fault": o.fault.value} for o in outages],
            "rss_mb": rss,
            "rss_mb_start_end": [rss[0][1], rss[-1][1]] if rss else [],
        }
        return result
    finally:
        servers.close()
        shutil.rmtree(work, ignore_errors=True)
