"""The worker: many streams in one process, sharing one detector, one emotion engine behind
a cross-stream micro-batcher, and one publisher that owns the sinks."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.core import events as ev
from pipeline.core.config import KafkaSettings, RedisSettings, SourceSettings, WorkerSettings
from pipeline.core.errors import ConfigError
from pipeline.runtime.publisher import Publisher
from pipeline.runtime.stream import StreamParts, StreamRunner
from pipeline.sinks.base import Sink

logger = logging.getLogger(__name__)


class Worker:
    """Runs streams; ``add_stream``/``remove_stream`` may be called at any time."""

    def __init__(self, settings: WorkerSettings, parts: StreamParts, ctx: ev.EventContext) -> None:
        self.settings = settings
        self._parts = parts
        self._ctx = ctx
        self._streams: dict[str, StreamRunner] = {}
        self._finished: list[StreamRunner] = []
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    @property
    def ctx(self) -> ev.EventContext:
        return self._ctx

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
        self._finished.append(runner)
        self.flush()

    def flush(self) -> None:
        self._parts.publisher.flush()

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

    def failed_streams(self) -> dict[str, str]:
        with self._lock:
            runners = list(self._streams.values()) + self._finished
        return {r.stream_id: r.error for r in runners if r.error}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            runners = list(self._streams.values())
        pub = self._parts.publisher.stats()
        return {
            "worker_id": self.settings.worker_id,
            "streams": {r.stream_id: r.stats() for r in runners},
            "batcher": self._parts.batcher.stats(),
            "detect_batcher": self._parts.detect_stats(),
            "events": pub.events,
            "sink_errors": pub.sink_errors,
        }

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
        self._parts.publisher.close()
        self._parts.engine_close()


def load_parts(settings: WorkerSettings, sinks: list[Sink]) -> tuple[StreamParts, ev.EventContext]:
    """Load the detector and emotion engine (warm), build the batchers and publisher."""
    from pipeline.runtime.batcher import MicroBatcher
    from pipeline.runtime.detect_batcher import DetectBatcher
    from pipeline.runtime.threads import plan_threads, tune_malloc
    from pipeline.stages.detect import FaceDetector

    tune_malloc()
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
        publisher=Publisher(sinks),
        crop_size=spec.height,
        tracker=settings.tracker,
        smoothing_alpha=settings.emotion.smoothing_alpha,
        engine_close=close,
        interval=settings.interval,
        detect=detect_batcher.detect,
        detect_stats=detect_batcher.stats,
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
    """Everything a worker needs, from settings: sinks first (so an unreachable Kafka or Redis
    fails before models load), then models."""
    from pipeline.sinks import build_sink

    if models_dir is not None:
        settings = with_models_dir(settings, models_dir)
    sinks = [build_sink(s, kafka, redis) for s in sink_specs]
    try:
        parts, ctx = load_parts(settings, sinks)
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return Worker(settings, parts, ctx)


def with_models_dir(settings: WorkerSettings, models_dir: Path) -> WorkerSettings:
    """Point the detector folder and a relative default emotion model at ``models_dir``."""
    emotion = settings.emotion
    if not emotion.model.is_absolute() and emotion.model.parent == Path("models"):
        emotion = emotion.model_copy(update={"model": models_dir / emotion.model.name})
    detector = settings.detector.model_copy(update={"model_dir": models_dir})
    return settings.model_copy(update={"detector": detector, "emotion": emotion})
