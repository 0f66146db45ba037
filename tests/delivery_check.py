"""Read back what a real Kafka topic holds, to diff it against the ids a worker accepted
(its JSONL file, written locally and first): every fault test ends with that diff."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from pipeline.core.config import KafkaSettings
from pipeline.core.kafka_client import make_consumer


def jsonl_ids(*paths: Path) -> list[str]:
    """The event ids in JSONL files, in order (a line cut by kill -9 is skipped)."""
    ids = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                ids.append(json.loads(line)["event_id"])
            except ValueError:
                continue
    return ids


def topic_ids(
    bootstrap: str, topic: str, until: set[str] | None = None, timeout: float = 60.0
) -> Counter[str]:
    """Every event id (with repeats) in ``topic``: up to its end offsets as of this call (a
    snapshot, even while a worker still produces), or with ``until``, read until every id in
    it was seen or nothing new came for 3 s (tansu's end offsets can trail the last batch)."""
    from kafka import TopicPartition

    consumer = make_consumer(
        KafkaSettings(bootstrap=bootstrap),
        enable_auto_commit=False,
        fetch_max_wait_ms=500,  # tansu on S3 stalls on many short fetch waits
    )
    seen: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    try:
        parts: set[int] = set()
        while not parts and time.monotonic() < deadline:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        quiet_since = time.monotonic()

        def more() -> bool:
            if until is None:
                return any(consumer.position(tp) < ends[tp] for tp in tps)
            return not until <= set(seen) and time.monotonic() - quiet_since < 3.0

        while more():
            assert time.monotonic() < deadline, f"reading {topic} back took over {timeout:.0f} s"
            for records in consumer.poll(timeout_ms=500).values():
                quiet_since = time.monotonic()
                for msg in records:
                    if until is not None or msg.offset < ends[TopicPartition(topic, msg.partition)]:
                        seen[json.loads(msg.value)["event_id"]] += 1
    finally:
        consumer.close()
    return seen


def assert_ids_in_kafka(
    accepted: Iterable[str], bootstrap: str, topic: str, exact: bool = True
) -> Counter[str]:
    """Every accepted id is in ``topic`` (the worker has flushed: its run is over); ``exact``:
    and the topic holds no other id (it is this test's own)."""
    accepted = list(accepted)
    assert accepted, "no event accepted: the diff against Kafka would prove nothing"
    in_kafka = topic_ids(bootstrap, topic, until=set(accepted))
    missing = [i for i in dict.fromkeys(accepted) if i not in in_kafka]
    where = [accepted.index(m) for m in missing]
    assert not missing, (
        f"{len(missing)} of {len(set(accepted))} accepted events not in Kafka topic {topic} "
        f"(first/last missing at positions {where[:3]} {where[-3:]}; "
        f"{sum(in_kafka.values())} messages read)"
    )
    extra = set(in_kafka) - set(accepted)
    assert not exact or not extra, f"{len(extra)} ids in {topic} were never accepted"
    return in_kafka
