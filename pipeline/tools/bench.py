"""``emotion-stream bench``: the whole pipeline on a clip, against bare PyAV decoding of the
same clip in the same run. Prints frames/s, faces/s, decode->publish latency p50/p99, CPU
and peak memory."""

from __future__ import annotations

import logging
import resource
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
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
            st = self.worker.stats()["streams"].values()
            done = sum(s["processed"] for s in st)
            faces = sum(s["faces"] for s in st)
            print(f"bench: {done} frames, {faces} faces processed", file=sys.stderr)


def run_bench(
    source: str, settings: WorkerSettings, models_dir: Path, streams: int = 1
) -> dict[str, Any]:
    """One run of ``streams`` copies of ``source``: throughput, latency, CPU, RSS, stages."""
    from pipeline.media.sources import parse_source
    from pipeline.runtime.worker import Worker, load_parts, with_models_dir

    settings = with_models_dir(settings, models_dir)
    base = parse_source(source)
    decode = bare_decode_fps(base.url if "://" in source else source, settings.source.max_frames)
    sink = CountingSink()
    parts, ctx = load_parts(settings, [sink])
    worker = Worker(settings, parts, ctx)
    proc = psutil.Process()
    cpu0 = proc.cpu_times()
    progress = _Progress(worker)
    threads_cpu = ThreadCpu()
    threads_cpu.start()
    t0 = time.perf_counter()
    progress.start()
    for i in range(streams):
        worker.add_stream(replace(base, stream_id=f"{base.stream_id}-{i}"))
    worker.wait(threading.Event())
    elapsed = time.perf_counter() - t0
    stats = worker.stats()
    lat = np.asarray(parts.publisher.stats().latency_ms or [0.0])
    split = threads_cpu.split()
    worker.stop("eof")
    progress.halt.set()
    threads_cpu.halt.set()
    cpu1 = proc.cpu_times()
    st = stats["streams"].values()
    frames = sum(s["processed"] for s in st)
    decoded = sum(s["decoded"] for s in st)
    faces = sum(s["faces"] for s in st)
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
        "batcher": stats["batcher"],
        "detect_batcher": stats.get("detect_batcher", {}),
        "interval": settings.interval.model_dump(mode="json"),
        "realtime": settings.source.realtime,
        "stages_ms_per_frame": stage_split(list(st), frames),
        "cpu_s_by_stage": split,
        "cpu_ms_per_frame": round(
            1000 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / max(frames, 1), 2
        ),
    }


def stage_split(streams: list[dict[str, Any]], frames: int) -> dict[str, float]:
    """Mean wall milliseconds per processed frame on the stream threads, by stage."""
    if not frames:
        return {}
    total = {k: 0.0 for k in ("locate", "flow", "classify")}
    detected = 0
    for s in streams:
        n = s["processed"]
        total["locate"] += s["detect_ms_mean"] * n
        total["flow"] += s.get("flow_ms_mean", 0.0) * n
        total["classify"] += s["infer_ms_mean"] * n
        detected += s.get("detected_frames", n)
    return {
        "detect (frames it ran on, averaged over all)": round(
            (total["locate"] - total["flow"]) / frames, 2
        ),
        "flow carry": round(total["flow"] / frames, 2),
        "align + classify (wait for the batcher)": round(total["classify"] / frames, 2),
        "detected_share": round(detected / frames, 3),
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
