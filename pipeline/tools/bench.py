"""``emotion-stream bench``: the whole pipeline on a clip, against bare PyAV decoding of the
same clip in the same run. Prints frames/s, faces/s, decode->publish latency p50/p99, CPU
and peak memory."""

from __future__ import annotations

import logging
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pipeline.core.config import WorkerSettings

logger = logging.getLogger(__name__)


class CountingSink:
    """Encodes every event (as a real sink would) and counts them; keeps nothing."""

    name = "bench"

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        from pipeline.core.events import encode

        for e in events:
            self.bytes += len(encode(e))
        self.events += len(events)

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self) -> None:
        return None


def bare_decode_fps(path: str, max_frames: int | None = None) -> dict[str, float]:
    """Frames/s of PyAV decoding to BGR with no processing (thread_type AUTO)."""
    import av

    t0 = time.perf_counter()
    n = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frame.to_ndarray(format="bgr24")
            n += 1
            if max_frames is not None and n >= max_frames:
                break
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": round(dt, 3), "frames_per_s": round(n / max(dt, 1e-9), 1)}


class _Progress(threading.Thread):
    def __init__(self, worker: Any) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(2.0):
            st = self.worker.stats()
            print(f"bench: {st.processed} frames, {st.faces} faces processed", file=sys.stderr)


class _Watcher(threading.Thread):
    """One MJPEG viewer of the web view: reads ``preview.mjpg`` until halted."""

    def __init__(self, url: str, halt: threading.Event) -> None:
        super().__init__(daemon=True, name="bench-watcher")
        self.url, self.halt, self.bytes = url, halt, 0

    def run(self) -> None:
        import urllib.error
        import urllib.request

        while not self.halt.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    while not self.halt.is_set():
                        chunk = r.read1(65536)
                        if not chunk:
                            break
                        self.bytes += len(chunk)
            except (OSError, urllib.error.URLError):
                self.halt.wait(0.2)  # the stream has no frame yet (503), or it ended


@dataclass
class _BenchView:
    view: Any
    watchers: list[_Watcher]
    halt: threading.Event = field(default_factory=threading.Event)

    def start_watching(self) -> None:
        for w in self.watchers:
            w.start()

    def result(self, per_stream: int) -> dict[str, Any]:
        self.halt.set()
        hub, view_settings = self.view.ctx.hub, self.view.ctx.settings
        out = {
            "url": self.view.url,
            "watchers_per_stream": per_stream,
            "frames_encoded": hub.encoded_frames,
            "encode_ms_mean": round(1000 * hub.encode_s / max(hub.encoded_frames, 1), 2),
            "encode_s_total": round(hub.encode_s, 3),
            "mjpeg_bytes": sum(w.bytes for w in self.watchers),
            "preview_fps": view_settings.preview_fps,
            "blur_faces": view_settings.blur_faces,
        }
        self.view.close()
        return out


def _start_view(
    worker: Any, settings: WorkerSettings, ids: list[str], watchers: int
) -> _BenchView | None:
    """The web view on ``settings.view.http`` with ``watchers`` viewers per stream."""
    if not settings.view.http:
        return None
    from pipeline.control.web import start_view

    view = start_view(worker, settings.view)
    bench_view = _BenchView(view, [])
    bench_view.watchers = [
        _Watcher(f"{view.url}streams/{sid}/preview.mjpg", bench_view.halt)
        for sid in ids
        for _ in range(watchers)
    ]
    return bench_view


def run_bench(
    source: str, settings: WorkerSettings, models_dir: Path, streams: int = 1, watchers: int = 0
) -> dict[str, Any]:
    from pipeline.media.sources import parse_source
    from pipeline.runtime.eventlog import EventLog
    from pipeline.runtime.worker import Worker, load_parts, with_models_dir

    settings = with_models_dir(settings, models_dir)
    base = parse_source(source)
    decode = bare_decode_fps(base.url if "://" in source else source, settings.source.max_frames)
    sink = CountingSink()
    log = EventLog(Path(tempfile.mkdtemp(prefix="es-bench-log-")), settings.delivery)
    parts, ctx = load_parts(settings, [sink], log)
    worker = Worker(settings, parts, ctx)
    ids = [f"{base.stream_id}-{i}" for i in range(streams)]
    view = _start_view(worker, settings, ids, watchers)
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    progress = _Progress(worker)
    t0 = time.perf_counter()
    progress.start()
    for sid in ids:
        worker.add_stream(replace(base, stream_id=sid))
    if view is not None:
        view.start_watching()
    worker.wait(threading.Event())
    elapsed = time.perf_counter() - t0
    stats = worker.stats()
    lat = np.asarray(parts.publisher.stats().latency_ms or [0.0])
    view_result = view.result(watchers) if view is not None else None
    worker.stop("eof")
    shutil.rmtree(log.folder, ignore_errors=True)
    progress.halt.set()
    cpu1 = proc.cpu_times()
    frames, decoded, faces = stats.processed, stats.decoded, stats.faces
    fps = frames / elapsed
    return {
        "source": base.display,
        "streams": streams,
        "batching": settings.batch.enabled,
        "max_batch": settings.batch.max_batch,
        "backend": ctx.backend,
        "precision": ctx.precision,
        "detector": ctx.detector,
        "classifier": ctx.classifier,
        "frames_decoded": decoded,
        "frames_processed": frames,
        "faces": faces,
        "events": sink.events,
        "seconds": round(elapsed, 3),
        "frames_per_s": round(fps, 2),
        "faces_per_s": round(faces / elapsed, 2),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 2),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 2),
        "cpu_percent": round(
            100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / elapsed, 1
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "decode_only": decode,
        "ratio_to_decode": round(fps / streams / max(decode["frames_per_s"], 1e-9), 4),
        "batcher": None if stats.batcher is None else stats.batcher.as_dict(),
        "view": view_result,
    }
