"""Typed snapshots of what a worker has done: one stream, the micro-batcher, the whole worker.

Read by the run summary (``pipeline.cli.run``), the benchmark (``pipeline.tools.bench``) and
the Prometheus collector (``pipeline.control.metrics``) by attribute, not by string key;
``as_dict()`` gives the JSON form.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StreamStats:
    """One stream since it started."""

    stream_id: str
    url: str
    session_id: str
    decoded: int
    dropped: int
    reconnects: int
    decode_errors: int
    epoch: int
    state: str
    state_reason: str | None
    processed: int
    faces: int
    tracks: int
    emotions: dict[str, int]
    fps: float
    faces_per_s: float
    detect_ms_mean: float
    infer_ms_mean: float
    done: bool
    end_reason: str
    error: str | None
    #: mean optical-flow time per processed frame (ms) and frames the detector ran on
    flow_ms_mean: float = 0.0
    detected_frames: int = 0
    #: detection frames whose faces were asked for ahead (look-ahead), not waited for
    detected_ahead: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """The shared cross-stream micro-batcher since the worker started."""

    enabled: bool
    max_batch: int
    batches: int
    faces: int
    mean_batch: float
    max_seen: int
    wait_ms_mean: float
    infer_ms_mean: float
    errors: int
    early_dispatch: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """The worker: its live streams, the batcher, events handed to the sinks, sink errors."""

    worker_id: str
    streams: dict[str, StreamStats] = field(default_factory=dict)
    batcher: BatcherStats | None = None
    events: int = 0
    sink_errors: dict[str, int] = field(default_factory=dict)
    #: decode -> publish latency quantiles of recent events ("p50", "p99"), ms
    latency_ms: dict[str, float] = field(default_factory=dict)
    #: sink name -> its delivery figures (pending, oldest_pending_age_s, delivered, retried,
    #: dropped, down, last_error), from the event log's per-sink cursors
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the cross-stream detector batcher: calls, frames, mean batch
    detect_batcher: dict[str, Any] = field(default_factory=dict)

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.streams.values())

    @property
    def decoded(self) -> int:
        return sum(s.decoded for s in self.streams.values())

    @property
    def faces(self) -> int:
        return sum(s.faces for s in self.streams.values())

    @property
    def tracks(self) -> int:
        return sum(s.tracks for s in self.streams.values())

    def emotions(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for s in self.streams.values():
            total.update(s.emotions)
        return total

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
