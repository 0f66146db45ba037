"""MicroBatcher: coalescing across threads, split/reassemble order, errors, close, backpressure."""

from __future__ import annotations

import threading
import time

import numpy as np
import numpy.typing as npt
import pytest

from engines.base import Engine, InputSpec
from pipeline.runtime.batcher import MicroBatcher

SPEC = InputSpec(channels=1, height=8, width=8, mean=0.0, std=1.0)


class RecordingEngine(Engine):
    """A test double: probs encode each crop's first pixel, so results can be traced to inputs."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    @property
    def input_spec(self) -> InputSpec:
        return SPEC

    def infer(self, crops: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.threads.add(threading.current_thread().name)
        self.batch_sizes.append(len(crops))
        if self.delay_s:
            time.sleep(self.delay_s)
        marks = crops[:, 0, 0].astype(np.int64)
        if self.fail_on is not None and (marks == self.fail_on).any():
            raise RuntimeError("engine failed")
        out = np.zeros((len(crops), 7), np.float32)
        out[:, 0] = marks
        return out

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        raise NotImplementedError


def crops_of(*marks: int) -> npt.NDArray[np.uint8]:
    c = np.zeros((len(marks), 8, 8), np.uint8)
    c[:, 0, 0] = marks
    return c


def test_batcher_concurrent_submitters_coalesce_into_batches() -> None:
    engine = RecordingEngine(delay_s=0.002)
    b = MicroBatcher(engine, max_batch=32, max_wait_ms=20)
    b.start()
    results: dict[int, np.ndarray] = {}

    def stream(k: int) -> None:
        for i in range(10):
            mark = (k * 10 + i) % 250
            results[k * 10 + i] = b.submit(crops_of(mark, mark)).result(timeout=10)

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.close()
    s = b.stats()
    assert s.faces == 160
    assert s.mean_batch > 2, s
    assert max(engine.batch_sizes) <= 32
    assert engine.threads == {"micro-batcher"}
    for key, probs in results.items():
        assert probs.shape == (2, 7)
        assert (probs[:, 0] == key % 250).all()


def test_batcher_disabled_runs_each_submission_alone() -> None:
    engine = RecordingEngine()
    b = MicroBatcher(engine, max_batch=32, max_wait_ms=50, enabled=False)
    futs = [b.submit(crops_of(i, i, i)) for i in range(5)]
    for i, f in enumerate(futs):
        assert (f.result(timeout=5)[:, 0] == i).all()
    b.close()
    assert engine.batch_sizes == [3] * 5
    assert b.stats().mean_batch == 3


def test_batcher_large_submission_split_and_reassembled_in_order() -> None:
    engine = RecordingEngine()
    b = MicroBatcher(engine, max_batch=4, max_wait_ms=1)
    marks = list(range(11))
    probs = b.submit(crops_of(*marks)).result(timeout=5)
    b.close()
    assert probs[:, 0].tolist() == marks
    assert max(engine.batch_sizes) <= 4
    assert sum(engine.batch_sizes) == 11


def test_batcher_engine_error_fails_only_that_batch() -> None:
    engine = RecordingEngine(fail_on=99)
    b = MicroBatcher(engine, max_batch=8, max_wait_ms=0, enabled=False)
    bad = b.submit(crops_of(99))
    good = b.submit(crops_of(1, 2))
    with pytest.raises(RuntimeError, match="engine failed"):
        bad.result(timeout=5)
    assert good.result(timeout=5)[:, 0].tolist() == [1, 2]
    b.close()
    assert b.stats().errors == 1


def test_batcher_close_drains_pending_submissions() -> None:
    engine = RecordingEngine(delay_s=0.01)
    b = MicroBatcher(engine, max_batch=2, max_wait_ms=0)
    futs = [b.submit(crops_of(i)) for i in range(20)]
    b.close()
    assert all(f.done() for f in futs)
    assert [int(f.result()[0, 0]) for f in futs] == list(range(20))


def test_batcher_submit_after_close_raises() -> None:
    b = MicroBatcher(RecordingEngine(), max_batch=2, max_wait_ms=0)
    b.submit(crops_of(1)).result(timeout=5)
    b.close()
    with pytest.raises(RuntimeError, match="closed"):
        b.submit(crops_of(1))


def test_batcher_empty_submission_resolves_immediately() -> None:
    b = MicroBatcher(RecordingEngine(), max_batch=2, max_wait_ms=0)
    assert b.submit(np.zeros((0, 8, 8), np.uint8)).result(timeout=1).shape == (0, 7)
    b.close()


def test_batcher_full_queue_blocks_submitter_until_space() -> None:
    engine = RecordingEngine(delay_s=0.05)
    b = MicroBatcher(engine, max_batch=1, max_wait_ms=0, queue_size=1)
    futs = [b.submit(crops_of(i)) for i in range(2)]  # one running, one queued
    t0 = time.monotonic()
    futs.append(b.submit(crops_of(2)))  # must wait for room: backpressure, not a drop
    assert time.monotonic() - t0 > 0.02
    b.close()
    assert [int(f.result()[0, 0]) for f in futs] == [0, 1, 2]


def test_batcher_waits_at_most_max_wait_for_other_active_streams() -> None:
    b = MicroBatcher(RecordingEngine(), max_batch=64, max_wait_ms=50)
    other = threading.Thread(target=lambda: b.submit(crops_of(2)).result(timeout=5))
    other.start()
    other.join()  # another stream is active and may submit again: the batch waits for it
    t0 = time.monotonic()
    b.submit(crops_of(1)).result(timeout=5)
    took = time.monotonic() - t0
    b.close()
    assert 0.04 < took < 1.0


def test_batcher_dispatches_early_when_all_active_streams_are_in() -> None:
    b = MicroBatcher(RecordingEngine(), max_batch=64, max_wait_ms=500)
    t0 = time.monotonic()
    for i in range(3):
        b.submit(crops_of(i)).result(timeout=5)
    took = time.monotonic() - t0
    b.close()
    assert took < 0.4  # 3 x 500 ms if it waited out max_wait_ms
    assert b.stats().early_dispatch >= 2
