"""Session-scoped real servers (pytest plugin listed in tests/conftest.py).

``kafka_broker``: a tansu Kafka-protocol broker (``.bootstrap`` "127.0.0.1:P", ``.restart()``).
``redis_server``: a real redis-server (``.url`` "redis://127.0.0.1:P/0", ``.port``).
A missing binary fails the tests that need it, with the fix (`make system`) in the message.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.errors import EmotionStreamError
from tests.servers import KafkaBroker, RedisServer


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    try:
        broker = KafkaBroker()
    except (RuntimeError, EmotionStreamError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except (RuntimeError, EmotionStreamError) as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()
