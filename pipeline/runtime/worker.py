"""The worker: many streams in one process, sharing one detector, one emotion engine behind
a cross-stream micro-batcher, and one publisher: the worker's durable event log (one folder per
worker id) read by one delivery thread per sink."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.core import events as ev
from pipeline.core.config import (
    EmotionSettings,
    KafkaSettings,
    RedisSettings,
    SourceSettings,
    WorkerSettings,
)
from pipeline.core.errors import ConfigError, SinkError
from pipeline.runtime.eventlog import EventLog, open_log
from pipeline.runtime.publisher import Publisher, SinkFactory
from pipeline.runtime.stats import WorkerStats
from pipeline.runtime.stream import StreamParts, StreamRunner
from pipeline.sinks.base import Sink

logger = logging.getLogger(__name__)

#: Errors of removed streams kept for ``failed_streams`` (oldest forgotten first).
MAX_REMEMBERED_ERRORS = 256


class Worker:
    """Runs streams; ``add_stream``/``remove_stream`` may be called at any time."""

    def __init__(self, settings: WorkerSettings, parts: StreamParts, ctx: ev.EventContext) -> None:
        self.settings = settings
        self._parts = parts
        self._ctx = ctx
        self._streams: dict[str, StreamRunner] = {}
        # removed streams leave only their error line behind, never their runner (memory stays
        # flat under churn)
        self._removed_errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    @property
    def ctx(self) -> ev.EventContext:
        return self._ctx

    def set_observer(self, observer: Any) -> None:
        """Show every stream started from now on to ``observer`` (a ``FrameObserver``)."""
        self._parts = replace(self._parts, observer=observer)

    def start(self) -> None:
        if not self._started:
            self._parts.batcher.start()
            self._parts.publisher.start()
            self._started = True

    def add_stream(
        self,
        spec: Any,
        source_settings: SourceSettings | None = None,
        session_id: str | None = None,
    ) -> None:
        """Start a stream (a ``pipeline.media.sources.SourceSpec``). Its errors stay its own."""
        from pipeline.media.sources import VideoSource

        self.start()
        with self._lock:
            if spec.stream_id in self._streams:
                raise ConfigError(
                    f"stream id {spec.stream_id!r} is already running: give each source its own id"
                )
            ctx = self._ctx if session_id is None else replace(self._ctx, session_id=session_id)
            source = VideoSource(spec, source_settings or self.settings.source)
            runner = StreamRunner(spec, source, self._parts, ctx)
            self._streams[spec.stream_id] = runner
        logger.info("stream %s: starting %s", spec.stream_id, spec.display)
        runner.start()

    def remove_stream(self, stream_id: str, reason: str = "removed", timeout: float = 30.0) -> None:
        """Stop a stream; returns once its track_end/stream_end events are queued and the sinks
        have flushed everything queued before them."""
        with self._lock:
            runner = self._streams.pop(stream_id, None)
        if runner is None:
            return
        runner.stop(reason)
        if not runner.join(timeout):
            logger.warning("stream %s: did not stop within %.0f s", stream_id, timeout)
        if runner.error:
            with self._lock:
                self._removed_errors.pop(stream_id, None)
                self._removed_errors[stream_id] = runner.error
                while len(self._removed_errors) > MAX_REMEMBERED_ERRORS:
                    del self._removed_errors[next(iter(self._removed_errors))]
        try:
            self.flush(self.settings.delivery.drain_timeout_s)
        except SinkError as exc:  # accepted events are in the log; delivery goes on
            logger.warning("stream %s removed before every sink caught up: %s", stream_id, exc)

    def flush(self, timeout: float | None = 60.0) -> None:
        self._parts.publisher.flush(timeout)

    def stream_ids(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def wait(self, stop: threading.Event, poll_s: float = 0.2) -> None:
        """Block until every stream has ended by itself, or ``stop`` is set."""
        while not stop.is_set():
            with self._lock:
                runners = list(self._streams.values())
            if all(r.done for r in runners):
                return
            time.sleep(poll_s)

    def stream_states(self) -> dict[str, dict[str, Any]]:
        """stream id -> {state, reason} (connecting, running, reconnecting, failed, ended)."""
        with self._lock:
            runners = list(self._streams.values())
        out = {}
        for r in runners:
            st = r.stats()
            out[r.stream_id] = {"state": st.state, "reason": st.state_reason}
        return out

    def failed_streams(self) -> dict[str, str]:
        with self._lock:
            out = dict(self._removed_errors)
            runners = list(self._streams.values())
        out.update({r.stream_id: r.error for r in runners if r.error})
        return out

    def stats(self) -> WorkerStats:
        with self._lock:
            runners = list(self._streams.values())
        pub = self._parts.publisher.stats()
        return WorkerStats(
            worker_id=self.settings.worker_id,
            streams={r.stream_id: r.stats() for r in runners},
            batcher=self._parts.batcher.stats(),
            events=pub.events,
            sink_errors=dict.fromkeys(self._parts.publisher.sink_names, 0) | pub.sink_errors,
            latency_ms=latency_quantiles(pub.latency_ms[-2000:]),
            sinks=pub.sinks,
            detect_batcher=self._parts.detect_stats(),
        )

    def sinks_behind(self, max_age_s: float = 5.0) -> dict[str, dict[str, Any]]:
        """Sinks that are failing or whose oldest undelivered event is older than
        ``max_age_s``: their pending count, oldest age and last error (for /readyz)."""
        out = {}
        for name, d in self._parts.publisher.stats().sinks.items():
            if d["down"] or d["oldest_pending_age_s"] > max_age_s:
                out[name] = {k: d[k] for k in ("pending", "oldest_pending_age_s", "last_error")}
        return out

    def stop(self, reason: str = "shutdown", timeout: float = 30.0) -> None:
        """Stop every stream, then drain the publisher and flush every sink (raises SinkError
        if something accepted could not be delivered)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            runners = list(self._streams.values())
        for r in runners:
            if not r.done:
                r.stop(reason)
        for r in runners:
            r.join(timeout)
        self._parts.batcher.close()
        try:
            self._parts.publisher.close()
        finally:
            self._parts.engine_close()


def latency_quantiles(samples: list[float]) -> dict[str, float]:
    """Decode -> publish latency p50/p99 (ms) of the given recent samples; empty: none."""
    if not samples:
        return {}
    import numpy as np

    p50, p99 = np.percentile(np.asarray(samples), [50, 99]).tolist()
    return {"0.5": round(p50, 3), "0.99": round(p99, 3)}


def load_parts(
    settings: WorkerSettings,
    sinks: list[Sink],
    log: EventLog | None = None,
    rebuild: dict[str, SinkFactory] | None = None,
) -> tuple[StreamParts, ev.EventContext]:
    """Load the detector and emotion engine (warm), build the batcher and the publisher over
    the worker's event log (``settings.delivery``, one folder per worker id)."""
    from pipeline.runtime.batcher import MicroBatcher
    from pipeline.runtime.detect_batcher import DetectBatcher
    from pipeline.runtime.threads import plan_threads, single_thread_opencv, tune_malloc
    from pipeline.stages.detect import FaceDetector

    tune_malloc()
    single_thread_opencv()
    threads = plan_threads(settings.detector.threads, settings.emotion.threads)
    logger.info(
        "threads on %d cores: detector %d, emotion %d",
        threads.cores,
        threads.detector,
        threads.emotion,
    )
    detector = FaceDetector(settings.detector, threads=threads.detector)
    engine = _load_emotion_engine(settings, threads.emotion)
    spec = engine.input_spec
    batcher = MicroBatcher(
        engine, settings.batch.max_batch, settings.batch.max_wait_ms, enabled=settings.batch.enabled
    )
    detect_batcher = DetectBatcher(
        detector, settings.detector.max_batch, settings.detector.max_wait_ms
    )

    def close() -> None:
        detect_batcher.close()
        engine.close()

    parts = StreamParts(
        detector=detector,
        batcher=batcher,
        publisher=Publisher(
            log or open_log(settings.delivery.log_dir, settings.worker_id, settings.delivery),
            sinks,
            rebuild,
        ),
        crop=spec.crop,
        tracker=settings.tracker,
        smoothing_alpha=settings.emotion.smoothing_alpha,
        engine_close=close,
        interval=settings.interval,
        detect=detect_batcher.detect,
        detect_ahead=detect_batcher.submit,
        detect_stats=detect_batcher.stats,
        thumbnails=settings.track_thumbnails,
    )
    ctx = ev.EventContext(
        worker_id=settings.worker_id,
        session_id=settings.session_id,
        detector=detector.name,
        classifier=Path(settings.emotion.model).stem,
        backend=engine.name,
        precision=engine.precision,
    )
    return parts, ctx


def _load_emotion_engine(settings: WorkerSettings, threads: int) -> Any:
    """The warm emotion engine; on ONNX Runtime with ``threads`` intra-op threads."""
    from engines.registry import load_engine, resolve_backend

    config = None
    model = Path(settings.emotion.model)
    if model.is_file() and resolve_backend(model, settings.emotion.backend)[0] == "onnxruntime":
        from engines.backends.onnxruntime import OnnxRuntimeConfig

        config = OnnxRuntimeConfig(intra_op_threads=threads, inter_op_threads=1)
    return load_engine(
        model,
        backend=settings.emotion.backend,
        precision=settings.emotion.precision,
        max_batch=settings.batch.max_batch,
        config=config,
    )


def build_worker(
    settings: WorkerSettings,
    sink_specs: list[str],
    kafka: KafkaSettings,
    redis: RedisSettings,
    models_dir: Path | None = None,
) -> Worker:
    """Everything a worker needs, from settings: the event log, sinks (so an unreachable Kafka
    or Redis fails before models load), then models. A file sink that delivered from this log
    before continues its file, so a resumed run appends what the log still holds."""
    from pipeline.sinks import build_sink, sink_name

    if models_dir is not None:
        settings = with_models_dir(settings, models_dir)
    log = open_log(settings.delivery.log_dir, settings.worker_id, settings.delivery)
    sinks: list[Sink] = []
    rebuild: dict[str, SinkFactory] = {}
    try:
        for spec in sink_specs:
            sink = build_sink(spec, kafka, redis, append=log.knows(sink_name(spec)))
            sinks.append(sink)
            rebuild[sink.name] = _factory(spec, kafka, redis)
        parts, ctx = load_parts(settings, sinks, log, rebuild)
    except BaseException:
        for s in sinks:
            s.close()
        log.close()
        raise
    return Worker(settings, parts, ctx)


def _factory(spec: str, kafka: KafkaSettings, redis: RedisSettings) -> SinkFactory:
    from pipeline.sinks import build_sink

    return lambda: build_sink(spec, kafka, redis, append=True)


def with_models_dir(settings: WorkerSettings, models_dir: Path) -> WorkerSettings:
    """Point the detector folder at ``models_dir``, and the emotion model too while it is the
    default one. A no-op when ``models_dir`` is already the detector folder, so settings the
    CLI built (``--models``, ``--config``, ``ES_*``) are never overwritten."""
    if Path(models_dir) == settings.detector.model_dir:
        return settings
    emotion = settings.emotion
    default = EmotionSettings.model_fields["model"].default
    if emotion.model in (default, settings.detector.model_dir / default.name):
        emotion = emotion.model_copy(update={"model": models_dir / default.name})
    detector = settings.detector.model_copy(update={"model_dir": models_dir})
    return settings.model_copy(update={"detector": detector, "emotion": emotion})
