"""Kafka clients built the same way everywhere (events sink, control topic, tail, tests):
security options from ``KafkaSettings`` (the SASL password is read when needed and never
logged), a fast reachability check that names the bootstrap address, topic creation."""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from pipeline.core.config import KafkaSettings
from pipeline.core.errors import ConfigError, SinkError

logger = logging.getLogger(__name__)

#: Seconds a TCP connect to one bootstrap address may take before it counts as unreachable.
CONNECT_TIMEOUT_S = 3.0


def bootstrap_list(kafka: KafkaSettings) -> list[str]:
    if not kafka.bootstrap:
        raise ConfigError("no Kafka bootstrap: pass --kafka HOST:PORT or set ES_KAFKA_BOOTSTRAP")
    servers = [s.strip() for s in kafka.bootstrap.split(",") if s.strip()]
    for s in servers:
        host, sep, port = s.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"Kafka bootstrap {s!r} is not HOST:PORT: pass --kafka HOST:PORT")
    return servers


def client_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and admin clients."""
    kw: dict[str, Any] = {
        "bootstrap_servers": bootstrap_list(kafka),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.sasl_mechanism:
        kw["sasl_mechanism"] = kafka.sasl_mechanism
        kw["sasl_plain_username"] = kafka.sasl_username
        kw["sasl_plain_password"] = kafka.password()
    if kafka.ssl_cafile is not None:
        kw["ssl_cafile"] = str(kafka.ssl_cafile)
    return kw


def unreachable(kafka: KafkaSettings, detail: str) -> SinkError:
    return SinkError(
        f"Kafka at {kafka.bootstrap} is unreachable ({detail}): start the broker or pass the "
        "right --kafka HOST:PORT (ES_KAFKA_BOOTSTRAP)"
    )


def check_reachable(kafka: KafkaSettings, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise SinkError within about ``timeout_s`` if no bootstrap address accepts TCP."""
    errors = []
    for server in bootstrap_list(kafka):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{server}: {exc.strerror or exc}")
    raise unreachable(kafka, "; ".join(errors))


def make_producer(kafka: KafkaSettings, **overrides: Any) -> Any:
    """A KafkaProducer with ``acks="all"``, bounded retries and in-flight window.

    Idempotence is off: after a broker restart an idempotent kafka-python producer fails for
    good. Consumers de-duplicate by ``event_id`` instead.
    """
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    check_reachable(kafka)
    linger = kafka.linger_ms
    config: dict[str, Any] = {
        **client_kwargs(kafka),
        "acks": "all",
        "retries": 10,
        "retry_backoff_ms": 200,
        "enable_idempotence": False,
        "max_in_flight_requests_per_connection": kafka.max_in_flight,
        "linger_ms": linger,
        "batch_size": kafka.batch_size,
        "request_timeout_ms": kafka.request_timeout_ms,
        "delivery_timeout_ms": 2 * kafka.request_timeout_ms + linger,
        "max_block_ms": kafka.max_block_ms,
        "reconnect_backoff_max_ms": 2000,
    }
    config.update(overrides)
    try:
        return KafkaProducer(**config)
    except KafkaError as exc:
        raise unreachable(kafka, type(exc).__name__) from exc


def make_admin(kafka: KafkaSettings, timeout_s: float = 15.0) -> Any:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    check_reachable(kafka)
    try:
        return KafkaAdminClient(**client_kwargs(kafka), request_timeout_ms=int(timeout_s * 1000))
    except KafkaError as exc:
        raise unreachable(kafka, type(exc).__name__) from exc


def make_consumer(kafka: KafkaSettings, *topics: str, **overrides: Any) -> Any:
    """A KafkaConsumer with low-latency fetches (a waiting fetch is not woken by new data,
    so ``fetch_max_wait_ms`` bounds end-to-end latency) and a short group session."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    check_reachable(kafka)
    config: dict[str, Any] = {
        **client_kwargs(kafka),
        "fetch_max_wait_ms": 50,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
    }
    config.update(overrides)
    try:
        return KafkaConsumer(*topics, **config)
    except KafkaError as exc:
        raise unreachable(kafka, type(exc).__name__) from exc


def ensure_topic(
    kafka: KafkaSettings,
    topic: str,
    partitions: int,
    replication: int = 1,
    config: dict[str, str] | None = None,
    timeout_s: float = 15.0,
) -> int:
    """Create ``topic`` if missing; returns its partition count (an existing topic keeps
    its own count, which may differ from ``partitions``)."""
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = make_admin(kafka, timeout_s)
    try:
        new = NewTopic(topic, partitions, replication, topic_configs=config or {})
        try:
            admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
            logger.info("created Kafka topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            raise SinkError(
                f"Kafka at {kafka.bootstrap}: cannot create topic {topic!r} ({exc}): "
                "create it by hand or grant the client CreateTopics"
            ) from exc
        return _wait_for_partitions(admin, topic, timeout_s)
    finally:
        admin.close()


def partition_count(kafka: KafkaSettings, topic: str) -> int:
    """Partitions of ``topic`` as the cluster metadata reports them; 0 if it does not exist."""
    consumer = make_consumer(kafka)
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def _wait_for_partitions(admin: Any, topic: str, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics([topic])
        parts = described[0].get("partitions") if described else None
        if parts:
            return len(parts)
        if time.monotonic() > deadline:
            raise SinkError(
                f"Kafka topic {topic!r} has no partitions after creation: check the broker"
            )
        time.sleep(0.1)
