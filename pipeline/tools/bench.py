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
from pipeline.runtime.stats import StreamStats

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


#: Python thread name prefix -> stage, for the CPU split.
_STAGES = (
    ("source-", "decode"),
    ("stream-", "stream (detect call, flow, align)"),
    ("micro-batcher", "emotion engine"),
    ("detect-batcher", "detector (batched)"),
    ("publisher", "publish (encode + sinks)"),
)


class ThreadCpu(threading.Thread):
    """Samples per-thread CPU seconds (psutil) and attributes them to pipeline stages by the
    Python thread names; native threads (ONNX Runtime pools, FFmpeg decoder threads) are
    summed as "native pools". Threads that end are remembered at their last sample."""

    def __init__(self, interval_s: float = 0.25) -> None:
        super().__init__(daemon=True, name="bench-cpu")
        self.interval_s = interval_s
        self.halt = threading.Event()
        self._last: dict[int, tuple[str, float]] = {}
        self._base: dict[int, float] = {}
        self.sample()
        self._base = {tid: cpu for tid, (_, cpu) in self._last.items()}

    def sample(self) -> None:
        names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
        for th in psutil.Process().threads():
            name = self._last.get(th.id, ("", 0.0))[0] or names.get(th.id, "")
            self._last[th.id] = (name, th.user_time + th.system_time)

    def run(self) -> None:
        while not self.halt.wait(self.interval_s):
            self.sample()

    def split(self) -> dict[str, float]:
        self.sample()
        out: dict[str, float] = {}
        for tid, (name, cpu) in self._last.items():
            if name.startswith(("bench-", "MainThread")) or name == "":
                stage = "native pools (onnxruntime, ffmpeg)" if name == "" else "main"
            else:
                stage = next((st for p, st in _STAGES if name.startswith(p)), "other")
            out[stage] = out.get(stage, 0.0) + cpu - self._base.get(tid, 0.0)
        return {k: round(v, 3) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


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
                # The bench's own view on loopback (http://127.0.0.1:PORT/...), built here.
                with urllib.request.urlopen(self.url, timeout=5) as r:  # nosec B310
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

    need = len(ids) * watchers  # the bench's own watchers must fit under the cap
    view_settings = settings.view
    if need > view_settings.max_watchers:
        view_settings = view_settings.model_copy(update={"max_watchers": need})
    view = start_view(worker, view_settings, web=settings.web)
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
    """One run of ``streams`` copies of ``source``: throughput, latency, CPU, RSS, stages."""
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
    threads_cpu = ThreadCpu()
    threads_cpu.start()
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
    split = threads_cpu.split()
    worker.stop("eof")
    shutil.rmtree(log.folder, ignore_errors=True)
    progress.halt.set()
    threads_cpu.halt.set()
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
        "detect_batcher": stats.detect_batcher,
        "interval": settings.interval.model_dump(mode="json"),
        "realtime": settings.source.realtime,
        "stages_ms_per_frame": stage_split(list(stats.streams.values()), frames),
        "cpu_s_by_stage": split,
        "cpu_ms_per_frame": round(
            1000 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(frames, 1), 2
        ),
    }


def stage_split(streams: list[StreamStats], frames: int) -> dict[str, float]:
    """Mean wall milliseconds per processed frame on the stream threads, by stage."""
    if not frames:
        return {}
    total = {k: 0.0 for k in ("locate", "flow", "classify")}
    detected = ahead = 0
    for s in streams:
        n = s.processed
        total["locate"] += s.detect_ms_mean * n
        total["flow"] += s.flow_ms_mean * n
        total["classify"] += s.infer_ms_mean * n
        detected += s.detected_frames
        ahead += s.detected_ahead
    return {
        "detect (frames it ran on, averaged over all)": round(
            (total["locate"] - total["flow"]) / frames, 2
        ),
        "flow carry": round(total["flow"] / frames, 2),
        "align + classify (wait for the batcher)": round(total["classify"] / frames, 2),
        "detected_share": round(detected / frames, 3),
        "detected_ahead_share": round(ahead / max(detected, 1), 3),
    }


def run_curve(
    source: str, counts: list[int], extra_args: list[str], paced: tuple[bool, ...] = (False, True)
) -> list[dict[str, Any]]:
    """``bench`` for each stream count (and unpaced / live-paced), each in a fresh process so
    peak RSS belongs to that count alone."""
    import json
    import subprocess

    rows = []
    for realtime in paced:
        for n in counts:
            cmd = [sys.executable, "-m", "pipeline", "-q", "bench", source, "--streams", str(n)]
            cmd += ["--json", *extra_args] + (["--realtime"] if realtime else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise RuntimeError(f"bench --streams {n} failed: {out.stderr.strip()[-500:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "streams": n,
                    "paced": realtime,
                    "frames_per_s": r["frames_per_s"],
                    "faces_per_s": r["faces_per_s"],
                    "latency_ms_p50": r["latency_ms_p50"],
                    "latency_ms_p99": r["latency_ms_p99"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "cpu_percent": r["cpu_percent"],
                    "cpu_ms_per_frame": r["cpu_ms_per_frame"],
                    "mean_detect_batch": r["detect_batcher"].get("mean_batch", 0.0),
                }
            )
            print(f"bench: {rows[-1]}", file=sys.stderr)
    return rows


def render_curve(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| streams | paced | frames/s | faces/s | p50 ms | p99 ms | peak RSS MB | CPU % | CPU ms/frame | det batch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['streams']} | {'live' if r['paced'] else 'unpaced'} | {r['frames_per_s']:.1f} | "
            f"{r['faces_per_s']:.0f} | {r['latency_ms_p50']:.0f} | {r['latency_ms_p99']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['cpu_percent']:.0f} | {r['cpu_ms_per_frame']:.1f} | "
            f"{r['mean_detect_batch']:.2f} |"
        )
    return "\n".join(lines)
