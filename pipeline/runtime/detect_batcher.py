"""Cross-stream batching of detector calls (the emotion micro-batcher's idea, for frames).

Stream threads call ``detect(image)`` and block for their faces, or ``submit(picture)`` and
collect them later (a stream looking ahead submits a frame it will reach in a few frames, so
the detector runs while the stream thread tracks the frames before it). One owner thread
takes the
oldest frame, waits at most ``max_wait_ms`` (from that frame's submission) for frames of
other streams due for detection at the same moment, up to ``max_batch``, and runs them
through one ``FaceDetector.detect_batch`` call (one ONNX Runtime run per detector canvas).
It dispatches early when every recently active stream thread already has a frame in the
batch. The queue is bounded (``detect`` blocks when it is full); a detector error fails only
the frames of that batch; ``close()`` finishes everything already submitted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.types import Faces, Pixels
from pipeline.stages.detect import FaceDetector

logger = logging.getLogger(__name__)

_STOP = object()


@dataclass(frozen=True, slots=True)
class _Item:
    picture: Pixels | npt.NDArray[np.uint8]  # converted to BGR on the batcher's thread
    future: Future[Faces]
    submitted: float
    thread: int


class DetectBatcher:
    """Batches ``detect`` calls of many stream threads into ``detect_batch`` calls."""

    def __init__(
        self,
        detector: FaceDetector,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int = 64,
        active_window_s: float = 1.0,
    ) -> None:
        self.detector = detector
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self.active_window_s = active_window_s
        self._q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._submitters: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._batches = 0
        self._frames = 0
        self._max_seen = 0
        self._run_s = 0.0

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._loop, name="detect-batcher", daemon=True
                )
                self._thread.start()

    def detect(self, image: npt.NDArray[np.uint8]) -> Faces:
        """Faces of ``image``, detected together with other streams' frames due now."""
        if self.max_batch == 1:
            return self.detector.detect(image)
        return self.submit(image).result()

    def submit(self, picture: Pixels | npt.NDArray[np.uint8]) -> Future[Faces]:
        """Queue a frame (``Pixels`` or a BGR image) for detection; its faces arrive in the
        future. Without batching (``max_batch`` 1) it still runs on the owner thread, so the
        caller can go on meanwhile."""
        self.start()
        fut: Future[Faces] = Future()
        now = time.monotonic()
        tid = threading.get_ident()
        with self._lock:
            if self._closed:
                raise RuntimeError("DetectBatcher is closed")
            self._submitters[tid] = now
        self._q.put(_Item(picture, fut, now, tid))
        return fut

    def close(self, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._q.put(_STOP)
            thread.join(timeout)

    def stats(self) -> dict[str, float | int]:
        b = self._batches
        return {
            "batches": b,
            "frames": self._frames,
            "mean_batch": round(self._frames / b, 3) if b else 0.0,
            "max_seen": self._max_seen,
            "run_ms_mean": round(1000 * self._run_s / b, 3) if b else 0.0,
            # faces beyond detector.max_faces in a frame, not tracked (lowest scores)
            "faces_capped": int(getattr(self.detector, "faces_capped", 0)),
        }

    def _loop(self) -> None:
        pending: Any = None
        while True:
            first = pending if pending is not None else self._q.get()
            if first is _STOP:
                return
            batch, pending = self._collect(first)
            self._run(batch)
            if pending is _STOP:
                return

    def _collect(self, first: _Item) -> tuple[list[_Item], Any]:
        batch = [first]
        deadline = first.submitted + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining > 0 and self._q.empty() and self._all_in(batch):
                break
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, _STOP
            batch.append(item)
        return batch, None

    def _all_in(self, batch: list[_Item]) -> bool:
        now = time.monotonic()
        with self._lock:
            for t in [
                t for t, seen in self._submitters.items() if now - seen > self.active_window_s
            ]:
                del self._submitters[t]
            active = set(self._submitters)
        return active <= {it.thread for it in batch}

    def _run(self, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            images = [p.bgr() if isinstance(p, Pixels) else p for p in (i.picture for i in batch)]
            results = self.detector.detect_batch(images)
        except Exception as exc:
            logger.warning("face detector failed on a batch of %d frames: %s", len(batch), exc)
            for it in batch:
                it.future.set_exception(exc)
            return
        self._batches += 1
        self._frames += len(batch)
        self._max_seen = max(self._max_seen, len(batch))
        self._run_s += time.perf_counter() - t0
        for it, faces in zip(batch, results, strict=True):
            it.future.set_result(faces)
