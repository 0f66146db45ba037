"""``emotion-stream bench-log``: the event log's cost. Appends frames of realistic face events
(6 per frame, about 1 KB each) under each fsync policy, then drains them through one sink
cursor (read, decode, commit, trim), and reports events/s for both."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.core.config import DeliverySettings, FsyncPolicy
from pipeline.runtime.eventlog import EventLog


def face_event(frame: int, track: int) -> dict[str, Any]:
    """A face event of the real shape and size (values are placeholders)."""
    probs = dict.fromkeys(("angry", "disgust", "fear", "sad", "surprise", "neutral"), 0.01)
    return {
        "schema": "emotion-stream.face/v1",
        "type": "face",
        "event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{frame}/{track}")),
        "timestamp": "2026-12-01T20:40:53.664Z",
        "pts": frame / 25,
        "frame_num": frame,
        "stream_id": "bench",
        "session_id": "default",
        "worker_id": "worker-0",
        "frame": {"width": 960, "height": 540},
        "track_id": track,
        "bbox": [348.6000061035156, 219.89999389648438, 430.8999938964844, 329.1000061035156],
        "det_score": 0.9998,
        "landmarks": [
            [369.0, 260.5],
            [408.0, 269.0],
            [380.3, 288.8],
            [361.4, 296.8],
            [396.5, 303.9],
        ],
        "emotion": {"label": "happy", "score": 0.94, "probs": {**probs, "happy": 0.94}},
        "smoothed": {"label": "happy", "score": 0.94},
        "model": {
            "detector": "scrfd",
            "classifier": "mini_xception",
            "backend": "ort",
            "precision": "fp32",
        },
        "latency_ms": 12.5,
    }


def bench_policy(fsync: FsyncPolicy, frames: int, batch_rows: int = 256) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="es-logbench-"))
    try:
        log = EventLog(folder, DeliverySettings(fsync=fsync))
        log.attach("sink")
        batches = [[face_event(f, t) for t in range(6)] for f in range(frames)]
        t0 = time.perf_counter()
        for events in batches:
            log.append(events, None)
        append_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cursor, drained = 0, 0
        while rows := log.read(cursor, batch_rows):
            drained += sum(len(r.events) for r in rows)
            cursor = rows[-1].seq
            log.commit("sink", cursor)
        drain_s = time.perf_counter() - t0
        log.close()
        n = frames * 6
        return {
            "fsync": fsync.value,
            "events": n,
            "append_events_per_s": round(n / append_s),
            "append_frames_per_s": round(frames / append_s),
            "drain_events_per_s": round(drained / drain_s),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_logbench(frames: int) -> list[dict[str, Any]]:
    return [bench_policy(p, frames) for p in FsyncPolicy]
