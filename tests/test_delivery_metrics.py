"""Per-sink delivery figures on /metrics, from a real publisher over a real event log."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.control.metrics import Metrics
from pipeline.core.config import DeliverySettings
from pipeline.core.errors import SinkError
from pipeline.runtime.eventlog import EventLog
from pipeline.runtime.publisher import Publisher
from pipeline.runtime.stats import WorkerStats


class _DownSink:
    name = "kafka:events"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        raise ConnectionError("broker down")

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_metrics_per_sink_pending_and_retried(tmp_path: Path) -> None:
    log = EventLog(tmp_path, DeliverySettings(retry_initial_s=0.01, retry_max_s=0.02))
    pub = Publisher(log, [_DownSink()])
    pub.start()
    pub.put([{"event_id": "a"}, {"event_id": "b"}])
    with pytest.raises(SinkError):
        pub.flush(timeout=0.3)
    text = Metrics(lambda: WorkerStats("w", sinks=pub.stats().sinks)).render().decode()
    assert 'emotion_stream_sink_pending_events{sink="kafka:events"} 2.0' in text
    assert 'emotion_stream_sink_delivered_events_total{sink="kafka:events"} 0.0' in text
    retried = re.search(
        r'emotion_stream_sink_retried_events_total\{sink="kafka:events"\} (\S+)', text
    )
    assert retried, text
    # both events failed more than once in 0.3 s of 0.01-0.02 s backoff: the counter moved
    assert float(retried.group(1)) >= 4, retried.group(0)
    assert "emotion_stream_sink_oldest_pending_age_seconds" in text
    with pytest.raises(SinkError, match="kafka:events: 2"):
        pub.close(timeout=0.1)


def test_readyz_names_the_sinks_behind(tmp_path: Path) -> None:
    from pipeline.control.group import GroupRunner, GroupSettings
    from pipeline.core.config import KafkaSettings, SourceSettings, TrackerSettings, WorkerSettings
    from pipeline.core.events import EventContext
    from pipeline.runtime.stream import StreamParts
    from pipeline.runtime.worker import Worker

    log = EventLog(tmp_path, DeliverySettings(retry_initial_s=0.01, retry_max_s=0.02))
    pub = Publisher(log, [_DownSink()])
    parts = StreamParts(None, None, pub, 64, TrackerSettings(), 0.3)  # type: ignore[arg-type]
    worker = Worker(WorkerSettings(), parts, EventContext("w", "s", "d", "c", "b", "p"))
    pub.start()
    pub.put([{"event_id": "a"}])
    with pytest.raises(SinkError):
        pub.flush(timeout=0.3)
    group = GroupRunner(
        worker,
        KafkaSettings(bootstrap="127.0.0.1:9"),
        GroupSettings(),
        "w",
        None,
        SourceSettings(),
    )
    _, detail = group.ready()
    behind = detail["sinks_behind"]["kafka:events"]
    assert behind["pending"] == 1 and "broker down" in behind["last_error"]
    with pytest.raises(SinkError):
        pub.close(timeout=0.1)
