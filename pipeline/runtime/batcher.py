"""Cross-stream micro-batching of aligned face crops in front of one emotion engine.

Every stream thread calls ``submit(crops)`` and gets a ``Future`` of its probabilities.
One owner thread drives the engine: it takes the oldest submission, waits at most
``max_wait_ms`` (counted from that submission) for others to fill the batch up to
``max_batch`` faces, runs one ``infer`` and hands each submission its own rows, in order.

- A submission larger than ``max_batch`` is split into chunks and reassembled in order.
- The queue is bounded: ``submit`` blocks when it is full (backpressure); nothing is dropped.
- An engine exception fails the futures of that batch only; the next batch runs normally.
- ``enabled=False`` runs each submission alone (the comparison point for batching).
- ``close()`` drains: every submission accepted before it gets its result.
- Early dispatch: when every thread that submitted within the last ``active_window_s`` already
  has a submission in the batch, nobody else is coming (stream threads wait for their result
  before submitting again), so the batch runs without waiting out ``max_wait_ms``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.base import Engine
from pipeline.runtime.stats import BatcherStats

logger = logging.getLogger(__name__)

Probs = npt.NDArray[np.float32]


@dataclass
class _Job:
    """One ``submit`` call: its future and the results of its chunks."""

    future: Future[Probs]
    parts: list[Probs | None]
    remaining: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def part_done(self, index: int, probs: Probs) -> None:
        with self.lock:
            self.parts[index] = probs
            self.remaining -= 1
            last = self.remaining == 0
        if last:
            done = [p for p in self.parts if p is not None]
            _settle(self.future, result=np.concatenate(done, axis=0))

    def fail(self, exc: BaseException) -> None:
        _settle(self.future, exc=exc)


@dataclass(frozen=True, slots=True)
class _Item:
    """One chunk (at most ``max_batch`` faces) of one job."""

    job: _Job
    index: int
    crops: npt.NDArray[np.uint8]
    submitted: float
    thread: int


_STOP = object()


def _settle(
    fut: Future[Probs], result: Probs | None = None, exc: BaseException | None = None
) -> None:
    """Resolve a future once; a future that is already done (e.g. failed, cancelled) stays so."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        elif result is not None:
            fut.set_result(result)
    except InvalidStateError:
        pass


class MicroBatcher:
    """Coalesce face crops from many streams into engine batches (see module docstring)."""

    def __init__(
        self,
        engine: Engine,
        max_batch: int,
        max_wait_ms: float,
        enabled: bool = True,
        queue_size: int = 256,
        active_window_s: float = 1.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.enabled = enabled
        self.active_window_s = active_window_s
        self._submitters: dict[int, float] = {}  # thread id -> last submit time
        self._early = 0
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._cond = threading.Condition()
        self._closed = False
        self._submitting = 0
        self._thread: threading.Thread | None = None
        self._n_classes = len(engine.input_spec.classes)
        self._stats_lock = threading.Lock()
        self._batches = 0
        self._faces = 0
        self._max_seen = 0
        self._items = 0
        self._wait_s = 0.0
        self._infer_s = 0.0
        self._errors = 0

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Start the owner thread (``submit`` also starts it)."""
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="micro-batcher", daemon=True
                )
                self._thread.start()

    def submit(self, crops: npt.NDArray[np.uint8]) -> Future[Probs]:
        """Queue ``crops`` (n, H, W) uint8; the future holds probabilities (n, classes)."""
        fut: Future[Probs] = Future()
        n = len(crops)
        if n == 0:
            with self._cond:
                if self._closed:
                    raise RuntimeError("MicroBatcher is closed: submit before close()")
            fut.set_result(np.zeros((0, self._n_classes), np.float32))
            return fut
        if self._thread is None:
            self.start()
        chunks = [crops[i : i + self.max_batch] for i in range(0, n, self.max_batch)]
        job = _Job(fut, [None] * len(chunks), len(chunks))
        with self._cond:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed: submit before close()")
            self._submitting += 1
            now = time.monotonic()
            tid = threading.get_ident()
            self._submitters[tid] = now
        try:
            for i, chunk in enumerate(chunks):
                self._q.put(_Item(job, i, chunk, now, tid))  # blocks when full: backpressure
        finally:
            with self._cond:
                self._submitting -= 1
                self._cond.notify_all()
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting work, finish everything already submitted, stop the thread."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._submitting:
                self._cond.wait()
        if self._thread is None:
            return
        self._q.put(_STOP)
        self._thread.join(timeout)

    def stats(self) -> BatcherStats:
        with self._stats_lock:
            b = self._batches
            return BatcherStats(
                enabled=self.enabled,
                max_batch=self.max_batch,
                batches=b,
                faces=self._faces,
                mean_batch=round(self._faces / b, 3) if b else 0.0,
                max_seen=self._max_seen,
                wait_ms_mean=round(1000 * self._wait_s / self._items, 3) if self._items else 0.0,
                infer_ms_mean=round(1000 * self._infer_s / b, 3) if b else 0.0,
                errors=self._errors,
                early_dispatch=self._early,
            )

    # ------------------------------------------------------------------ owner thread
    def _loop(self) -> None:
        pending: Any = None
        while True:
            first = pending if pending is not None else self._q.get()
            pending = None
            if first is _STOP:
                return
            batch, pending, stop = self._collect(first)
            self._run(batch)
            if stop:
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], Any, bool]:
        """Gather items after ``first`` until the batch is full or its wait is over."""
        batch = [first]
        if not self.enabled:
            return batch, None, False
        n = len(first.crops)
        deadline = first.submitted + self.max_wait_s
        while n < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining > 0 and self._q.empty() and self._all_submitters_in(batch):
                self._early += 1
                break
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, None, True
            if n + len(item.crops) > self.max_batch:
                return batch, item, False
            batch.append(item)
            n += len(item.crops)
        return batch, None, False

    def _all_submitters_in(self, batch: list[_Item]) -> bool:
        """True when every recently active submitting thread already waits in ``batch``."""
        now = time.monotonic()
        with self._cond:
            stale = [t for t, seen in self._submitters.items() if now - seen > self.active_window_s]
            for t in stale:
                del self._submitters[t]
            active = set(self._submitters)
        return active <= {it.thread for it in batch}

    def _run(self, batch: list[_Item]) -> None:
        t0 = time.monotonic()
        x = (
            batch[0].crops
            if len(batch) == 1
            else np.concatenate([it.crops for it in batch], axis=0)
        )
        try:
            probs = self.engine.infer(x)
            if len(probs) != len(x):
                raise RuntimeError(
                    f"engine {self.engine.name} returned {len(probs)} rows for {len(x)} faces"
                )
        except Exception as exc:
            logger.warning("emotion engine failed on a batch of %d faces: %s", len(x), exc)
            for it in batch:
                it.job.fail(exc)
            self._account(batch, len(x), t0, failed=True)
            return
        self._account(batch, len(x), t0, failed=False)
        start = 0
        for it in batch:
            k = len(it.crops)
            it.job.part_done(it.index, probs[start : start + k])
            start += k

    def _account(self, batch: list[_Item], n: int, t0: float, failed: bool) -> None:
        t1 = time.monotonic()
        with self._stats_lock:
            self._batches += 1
            self._faces += n
            self._max_seen = max(self._max_seen, n)
            self._items += len(batch)
            self._wait_s += sum(t0 - it.submitted for it in batch)
            self._infer_s += t1 - t0
            self._errors += int(failed)
