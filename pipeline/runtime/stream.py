"""One stream's processing thread: frames from its source -> detect -> track -> align ->
classify (through the shared cross-stream batcher) -> smooth -> events to the publisher."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pipeline.core import events as ev
from pipeline.core.config import IntervalSettings, TrackerSettings
from pipeline.core.types import (
    EMOTIONS,
    CropSpec,
    Emotions,
    Faces,
    Frame,
    FrameResult,
    Pixels,
    TrackSummary,
)
from pipeline.runtime.stats import StreamStats
from pipeline.stages.align import align_faces
from pipeline.stages.motion import IntervalTracker, Step
from pipeline.stages.smooth import EmaSmoother
from pipeline.stages.thumbnail import BestFaces
from pipeline.stages.track import Tracker

if TYPE_CHECKING:
    from pipeline.media.sources import SourceSpec, VideoSource
    from pipeline.runtime.batcher import MicroBatcher
    from pipeline.runtime.publisher import Publisher
    from pipeline.stages.detect import FaceDetector

logger = logging.getLogger(__name__)

#: Frames a stream keeps in flight in the emotion batcher: while the engine classifies frame
#: t, the stream thread tracks and aligns t+1 and t+2 instead of waiting (events still leave
#: in frame order).
IN_FLIGHT = 2
#: Queued frames a stream looks at ahead of the one it works on (peeked, not taken: nothing is
#: held back or waited for): the one the detection interval falls on is sent to the detector
#: at once, so detection runs while this thread tracks the frames before it.
LOOK_AHEAD = 8


@dataclass
class StreamCounters:
    processed: int = 0
    faces: int = 0
    tracks: int = 0
    started_at: float = field(default_factory=time.time)
    infer_ms: float = 0.0
    detect_ms: float = 0.0
    flow_ms: float = 0.0
    detected_frames: int = 0
    detected_ahead: int = 0
    labels: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class StreamParts:
    """The shared, thread-safe parts every stream uses."""

    detector: FaceDetector
    batcher: MicroBatcher
    publisher: Publisher
    crop: CropSpec
    tracker: TrackerSettings
    smoothing_alpha: float
    engine_close: Callable[[], None] = lambda: None
    #: Detection interval (default: detect every frame) and the (cross-stream batched)
    #: detect call; None calls ``detector.detect`` directly.
    interval: IntervalSettings = field(default_factory=lambda: IntervalSettings(every=1))
    detect: Callable[[Any], Any] | None = None
    #: Asks the detector for a frame's faces without waiting (``DetectBatcher.submit``);
    #: None: no look-ahead, every detection waits.
    detect_ahead: Callable[[Pixels], Future[Faces]] | None = None
    detect_stats: Callable[[], dict[str, Any]] = dict
    #: Best-face JPEG thumbnails on track_end events (``--track-thumbnails``).
    thumbnails: bool = False
    #: Optional watcher of published results (the web view): ``offer`` must not block.
    observer: FrameObserver | None = None


def _ready(future: Future[Any] | None) -> bool:
    return future is None or future.done()


class FrameObserver(Protocol):
    """Sees each processed frame after its events are queued; keeps at most the latest."""

    def offer(self, result: FrameResult) -> None: ...


class StreamRunner:
    """Runs one stream on its own thread until its source ends or ``stop()`` is called."""

    def __init__(
        self, spec: SourceSpec, source: VideoSource, parts: StreamParts, ctx: ev.EventContext
    ) -> None:
        self.spec = spec
        self.source = source
        self.ctx = ctx
        self._p = parts
        self._tracker = Tracker(parts.tracker)
        self._interval = IntervalTracker(parts.interval, self._tracker)
        self._pending: deque[tuple[Frame, Step, Future[Any] | None, float, float]] = deque()
        self._early: dict[int, Future[Faces]] = {}  # frame_num -> detection asked ahead
        self._smoother = EmaSmoother(parts.smoothing_alpha)
        self._tracks: dict[int, TrackSummary] = {}
        self._best = BestFaces() if parts.thumbnails else None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._last_frame: Frame | None = None
        self._epoch = 0  # capture epoch of the frames processed last (0: files)
        self.counters = StreamCounters()
        self.error: str | None = None
        self.end_reason = "running"
        self._thread = threading.Thread(
            target=self._run, name=f"stream-{spec.stream_id}", daemon=True
        )

    @property
    def stream_id(self) -> str:
        return self.spec.stream_id

    def start(self) -> None:
        self.source.start()
        self._thread.start()

    def stop(self, reason: str = "stopped") -> None:
        self.end_reason = reason
        self._stop.set()
        self.source.stop()

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def state(self) -> str:
        """connecting, running, reconnecting, failed (see ``error``) or ended."""
        if self.error:
            return "failed"
        if self.done:
            return "ended"
        return str(self.source.state)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # one stream's failure never takes the worker down
            self.error = f"stream {self.stream_id}: processing failed: {exc}"
            logger.exception("stream %s: processing failed", self.stream_id)
            self.source.stop()
        finally:
            try:
                self._finish()
            finally:
                self._release()
                self._done.set()

    def _release(self) -> None:
        """Drop what a stopped stream holds (its last frame, tracker state); counters stay."""
        self._last_frame = None
        self._pending.clear()
        self._early.clear()
        self._tracker = Tracker(self._p.tracker)
        self._interval = IntervalTracker(self._p.interval, self._tracker)
        self._smoother = EmaSmoother(self._p.smoothing_alpha)
        self._tracks.clear()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # With a frame in flight, do not wait for the next one before publishing it.
            frame = self.source.get(timeout=0.2 if not self._pending else 0.0)
            if frame is None:
                self.complete_pending()
                if self.source.ended:
                    break
                continue
            self.process(frame)
            self._look_ahead()
        self.complete_pending()
        if self.source.error is not None and self.error is None:
            self.error = str(self.source.error)
        if self.end_reason == "running":
            self.end_reason = "error" if self.error else "eof"

    def process(self, frame: Frame) -> FrameResult | None:
        """Locate and align this frame's faces and hand them to the emotion batcher, then
        finish the oldest frame in flight once more than ``IN_FLIGHT`` are (the emotion engine
        classifies on its thread while this thread works on the next frames). Returns the
        frame finished, if any."""
        if frame.epoch != self._epoch:
            self.complete_pending()  # the old capture's last frames, before its tracks end
            self._new_capture(frame.epoch)
        t0 = time.perf_counter()
        early = self._early.pop(frame.frame_num, None)
        step = self._interval.step(
            frame.picture,
            self._p.detect or self._p.detector.detect,
            early.result if early is not None else None,
        )
        self.counters.detected_ahead += bool(step.reason) and early is not None
        t1 = time.perf_counter()
        future: Future[Any] | None = None
        if len(step.faces):
            crops = align_faces(frame.picture, step.faces, self._p.crop)
            if self._best is not None:
                self._best.update(step.faces.track_id, step.faces.score, crops, frame.frame_num)
            future = self._p.batcher.submit(crops)
        self._pending.append((frame, step, future, (t1 - t0) * 1000, time.perf_counter()))
        done = None
        while len(self._pending) > IN_FLIGHT or (
            len(self._pending) > 1 and _ready(self._pending[0][2])
        ):
            done = self._complete(*self._pending.popleft())
        return done

    def _look_ahead(self) -> None:
        """Send the queued frame the detection interval falls on (if it is queued already) to
        the detector now; ``process`` collects its faces when it gets there."""
        if self._p.detect_ahead is None:
            return
        due = self._interval.due_in()
        if due is None or due >= LOOK_AHEAD:
            return
        ahead = self.source.peek(due + 1)
        if len(ahead) <= due:
            return
        frame = ahead[due]
        if frame.epoch == self._epoch and frame.frame_num not in self._early:
            if len(self._early) >= LOOK_AHEAD:  # frames dropped before they were reached
                self._early.clear()
            self._early[frame.frame_num] = self._p.detect_ahead(frame.picture)

    def complete_pending(self) -> FrameResult | None:
        """Wait for every in-flight frame's emotions, then smooth, account and publish them
        in order; returns the last one."""
        done = None
        while self._pending:
            done = self._complete(*self._pending.popleft())
        return done

    def _complete(
        self, frame: Frame, step: Step, future: Future[Any] | None, locate_ms: float, t1: float
    ) -> FrameResult:
        faces, ended = step.faces, list(step.ended)
        probs = np.zeros((0, len(EMOTIONS)), np.float32) if future is None else future.result()
        t2 = time.perf_counter()
        emotions = Emotions(np.asarray(probs, np.float32))
        smoothed = self._smoother.update(faces, emotions)
        result = FrameResult(frame, faces, emotions, smoothed, tuple(ended), step.detected)
        self._account(result, locate_ms, (t2 - t1) * 1000)
        self.counters.flow_ms += step.flow_ms
        self.counters.detected_frames += int(bool(step.reason))
        out: list[ev.Event] = [*ev.face_events(result, self.ctx)]
        out += self._track_end_events(ended)
        self._p.publisher.put(ev.records(out), frame.decoded_at)
        if self._p.observer is not None:
            self._p.observer.offer(result)
        self._last_frame = frame
        return result

    def _new_capture(self, epoch: int) -> None:
        """A live source reconnected (new capture epoch): the old capture's tracks end, so no
        track (or its Redis key) spans two captures."""
        ended = self._interval.end_all()
        if ended:
            self._p.publisher.put(ev.records(self._track_end_events(ended)), None)
        self._epoch = epoch
        self._early.clear()

    def _account(self, result: FrameResult, detect_ms: float, infer_ms: float) -> None:
        c = self.counters
        c.processed += 1
        c.faces += len(result.faces)
        c.detect_ms += detect_ms
        c.infer_ms += infer_ms
        labels = result.emotions.labels()
        c.labels.update(labels)
        for tid, label in zip(result.faces.track_id.tolist(), labels, strict=True):
            summary = self._tracks.get(tid)
            if summary is None:
                f = result.frame
                summary = TrackSummary(f.frame_num, f.frame_num, f.wall_ts, f.wall_ts, f.pts, f.pts)
                self._tracks[tid] = summary
                c.tracks += 1
            summary.add(result.frame, label)

    def _track_end_events(self, ended: list[int] | tuple[int, ...]) -> list[ev.Event]:
        self._smoother.forget(list(ended))
        out: list[ev.Event] = []
        for tid in ended:
            summary = self._tracks.pop(tid, None)
            thumb = self._best.pop(tid) if self._best is not None else None
            if summary is not None:
                end = ev.track_end_event(self.stream_id, tid, summary, self.ctx, self._epoch)
                if thumb is not None:
                    end["thumbnail"] = thumb
                out.append(end)
        return out

    def _finish(self) -> None:
        try:
            self.complete_pending()  # after an error: publish the frame still in flight
        except Exception:
            logger.exception("stream %s: the frame in flight could not be finished", self.stream_id)
        out = self._track_end_events(self._interval.end_all())
        frames = self.source.stats().decoded
        out.append(
            ev.stream_end_event(
                self.stream_id, frames, self.end_reason, self.ctx, self.error, epoch=self._epoch
            )
        )
        self._p.publisher.put(ev.records(out), None)

    def stats(self) -> StreamStats:
        c = self.counters
        src = self.source.stats()
        elapsed = max(time.time() - c.started_at, 1e-6)
        return StreamStats(
            stream_id=self.stream_id,
            url=self.spec.display,
            session_id=self.ctx.session_id,
            decoded=src.decoded,
            dropped=src.dropped,
            reconnects=src.reconnects,
            decode_errors=src.decode_errors,
            epoch=src.epoch,
            state=self.state,
            state_reason=self.error if self.error else src.reason,
            processed=c.processed,
            faces=c.faces,
            tracks=c.tracks,
            emotions=dict(c.labels),
            fps=c.processed / elapsed,
            faces_per_s=c.faces / elapsed,
            detect_ms_mean=c.detect_ms / max(c.processed, 1),
            infer_ms_mean=c.infer_ms / max(c.processed, 1),
            done=self.done,
            end_reason=self.end_reason,
            error=self.error,
            flow_ms_mean=c.flow_ms / max(c.processed, 1),
            detected_frames=c.detected_frames,
            detected_ahead=c.detected_ahead,
        )
