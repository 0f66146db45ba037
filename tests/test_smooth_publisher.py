from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pipeline.core.errors import SinkError
from pipeline.core.types import Emotions, Faces
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
    name = "list"

    def __init__(self, fail_write: bool = False, fail_flush: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.flushes = 0
        self.closed = False
        self.fail_write = fail_write
        self.fail_flush = fail_flush
        self.gate = threading.Event()
        self.gate.set()

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        self.gate.wait()
        if self.fail_write:
            raise RuntimeError("boom")
        self.events.extend(events)

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        if self.fail_flush:
            raise RuntimeError("not acked")

    def close(self) -> None:
        self.closed = True


def test_publisher_close_drains_everything_in_order() -> None:
    sink = _ListSink()
    sink.gate.clear()
    pub = Publisher([sink], queue_size=4)
    pub.start()
    feeder = threading.Thread(target=lambda: [pub.put([{"i": i}]) for i in range(50)])
    feeder.start()
    sink.gate.set()
    feeder.join()
    pub.close()
    assert [e["i"] for e in sink.events] == list(range(50))
    assert sink.closed and sink.flushes >= 1


def test_publisher_failing_sink_does_not_stop_others() -> None:
    bad, good = _ListSink(fail_write=True), _ListSink()
    pub = Publisher([bad, good])
    pub.start()
    pub.put([{"a": 1}])
    pub.flush()
    assert good.events == [{"a": 1}]
    assert pub.stats().sink_errors == {"list": 1}
    pub.close()


def test_publisher_flush_failure_raises_sink_error() -> None:
    pub = Publisher([_ListSink(fail_flush=True)])
    pub.start()
    pub.put([{"a": 1}])
    with pytest.raises(SinkError, match="not acked"):
        pub.flush()
    with pytest.raises(SinkError):
        pub.close()
