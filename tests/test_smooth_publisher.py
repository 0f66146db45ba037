from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.config import DeliverySettings
from pipeline.core.errors import SinkError
from pipeline.core.types import Emotions, Faces
from pipeline.runtime.eventlog import EventLog
from pipeline.runtime.publisher import Publisher
from pipeline.stages.smooth import EmaSmoother


def test_smoother_ema_per_track() -> None:
    sm = EmaSmoother(0.5)
    faces = Faces.create([[0, 0, 1, 1], [2, 2, 3, 3]], [1, 1], np.zeros((2, 5, 2)), [7, 8])
    p1 = np.eye(7, dtype=np.float32)[[0, 3]]
    p2 = np.eye(7, dtype=np.float32)[[1, 3]]
    sm.update(faces, Emotions(p1))
    out = sm.update(faces, Emotions(p2)).probs
    np.testing.assert_allclose(out[0, :2], [0.5, 0.5])
    np.testing.assert_allclose(out[1, 3], 1.0)
    sm.forget([7])
    out = sm.update(faces.select([0]), Emotions(p1[:1])).probs
    np.testing.assert_allclose(out[0, 0], 1.0)


class _ListSink:
    def __init__(self, name: str = "list", fail_write: bool = False) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.flushes = 0
        self.closed = False
        self.fail_write = fail_write
        self.gate = threading.Event()
        self.gate.set()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.gate.wait()
        if self.fail_write:
            raise RuntimeError("boom")
        self.events.extend(events)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True


_FAST = DeliverySettings(retry_initial_s=0.01, retry_max_s=0.05, drain_timeout_s=5.0)


def _log(tmp_path: Path) -> EventLog:
    return EventLog(tmp_path / "log", _FAST)


def test_publisher_close_drains_everything_in_order(tmp_path: Path) -> None:
    sink = _ListSink()
    sink.gate.clear()
    pub = Publisher(_log(tmp_path), [sink])
    pub.start()
    feeder = threading.Thread(target=lambda: [pub.put([{"i": i}]) for i in range(50)])
    feeder.start()
    sink.gate.set()
    feeder.join()
    pub.close()
    assert [e["i"] for e in sink.events] == list(range(50))
    assert sink.closed and sink.flushes >= 1
    assert pub.stats().sinks["list"]["delivered"] == 50


def test_publisher_failing_sink_does_not_stop_others(tmp_path: Path) -> None:
    bad, good = _ListSink("bad", fail_write=True), _ListSink("good")
    pub = Publisher(_log(tmp_path), [bad, good])
    pub.start()
    pub.put([{"a": 1}])
    with pytest.raises(SinkError, match="bad"):
        pub.flush(timeout=0.5)
    assert good.events == [{"a": 1}]
    st = pub.stats().sinks
    assert st["bad"]["pending"] == 1 and st["bad"]["retried"] >= 1 and st["bad"]["down"]
    assert st["good"]["pending"] == 0
    with pytest.raises(SinkError, match="bad: 1"):
        pub.close(timeout=0.2)


def test_publisher_restart_replays_what_a_sink_missed(tmp_path: Path) -> None:
    pub = Publisher(_log(tmp_path), [_ListSink("kafka", fail_write=True)])
    pub.start()
    for i in range(5):
        pub.put([{"i": i}, {"i": i, "face": 2}])
    with pytest.raises(SinkError):
        pub.close(timeout=0.2)
    healthy = _ListSink("kafka")
    again = Publisher(_log(tmp_path), [healthy])
    again.start()
    again.close()
    assert [e["i"] for e in healthy.events] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_publisher_rebuilds_a_failed_sink(tmp_path: Path) -> None:
    first = _ListSink("redis", fail_write=True)
    second = _ListSink("redis")
    pub = Publisher(_log(tmp_path), [first], rebuild={"redis": lambda: second})
    pub.start()
    pub.put([{"a": 1}])
    pub.flush(timeout=5)
    assert first.closed and second.events == [{"a": 1}]
    assert pub.stats().sinks["redis"]["outages_s"]
    pub.close()


class _FlakySink(_ListSink):
    """Fails its first ``fails`` writes (``boom 1``, ``boom 2``, ...), then delivers."""

    def __init__(self, fails: int) -> None:
        super().__init__("flaky")
        self.fails = fails
        self.attempts = 0

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.attempts += 1
        if self.attempts <= self.fails:
            raise RuntimeError(f"boom {self.attempts}\nsecond line")
        super().write(events)


def test_publisher_counts_every_retry_and_measures_the_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = _FlakySink(fails=3)
    pub = Publisher(_log(tmp_path), [sink])
    pub.put([{"i": 0}, {"i": 1}, {"i": 2}])  # stored before the thread starts: one batch
    with caplog.at_level("INFO", logger="pipeline.runtime.publisher"):
        pub.start()
        pub.flush(timeout=5)
    st = pub.stats().sinks["flaky"]
    assert sink.attempts == 4 and [e["i"] for e in sink.events] == [0, 1, 2]
    assert st["retried"] == 9 and st["failures"] == 3  # 3 events, 3 failed attempts
    assert st["delivered"] == 3 and st["pending"] == 0 and not st["down"]
    # one outage, at least as long as the backoff between the attempts (0.01 + 0.02 + 0.04 s)
    assert len(st["outages_s"]) == 1 and 0.07 <= st["outages_s"][0] < 5
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "sink flaky: delivery failed (boom 1); events wait in the event log and are retried"
    ]
    infos = [r.getMessage() for r in caplog.records if "delivering again" in r.getMessage()]
    assert len(infos) == 1 and infos[0].startswith("sink flaky: delivering again after ")
    pub.close()
