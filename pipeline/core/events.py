"""The v1 event contract: building, encoding and validating events.

Three event types share one schema (``pipeline/schema/face-v1.json``, documented in
``pipeline/schema/EVENTS.md``): ``face`` (one per detected face per processed frame),
``track_end`` (a track left the view) and ``stream_end`` (a stream stopped).

Event ids are UUIDv5, derived only from what identifies the event in the media
(stream id, frame number, track id), so running the same file again with the same stream
id yields the same ids, and consumers can de-duplicate replays by id. Live sources add their
capture epoch (capture start in ms, see ``Frame.epoch``) to every id, so a restarted or moved
live stream never repeats an id; files have epoch 0, which leaves their ids as they were.
"""

from __future__ import annotations

import functools
import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import numpy as np

from pipeline.core.types import EMOTIONS, FrameResult

if TYPE_CHECKING:
    from pipeline.core.types import TrackSummary

SCHEMA_ID = "emotion-stream.face/v1"
SCHEMA_RESOURCE = "schema/face-v1.json"

#: UUIDv5 namespaces, one per event type, so ids of different types never collide.
NS_FACE = uuid.UUID("6f1c2b9e-6c57-5b7a-9d0c-3a1f4e2d8b01")
NS_TRACK_END = uuid.UUID("6f1c2b9e-6c57-5b7a-9d0c-3a1f4e2d8b02")
NS_STREAM_END = uuid.UUID("6f1c2b9e-6c57-5b7a-9d0c-3a1f4e2d8b03")

#: Tolerance on the sum of ``emotion.probs``: 7 values rounded to 4 decimals are off by at
#: most 7 * 0.00005 = 0.00035 in total.
PROBS_SUM_TOLERANCE = 1e-3

_PX = 1  # decimals of pixel coordinates (boxes, landmarks): 0.1 px
_SCORE = 4  # decimals of scores
_PROB = 4  # decimals of probabilities


class FrameSize(TypedDict):
    width: int
    height: int


class EmotionField(TypedDict):
    label: str
    score: float
    probs: dict[str, float]


class SmoothedField(TypedDict):
    label: str
    score: float


class ModelField(TypedDict):
    detector: str
    classifier: str
    backend: str
    precision: str


class _Epoch(TypedDict, total=False):
    """Optional in every v1 event: the capture epoch (absent: 0)."""

    epoch: int


class FaceEvent(_Epoch):
    """One detected face of one processed frame (``$defs/face`` in the schema)."""

    schema: str
    type: Literal["face"]
    event_id: str
    timestamp: str
    pts: float | None
    frame_num: int
    stream_id: str
    session_id: str
    worker_id: str
    frame: FrameSize
    track_id: int
    bbox: list[float]
    det_score: float
    detected: bool
    landmarks: list[list[float]]
    emotion: EmotionField
    smoothed: SmoothedField
    model: ModelField
    latency_ms: float


class Thumbnail(TypedDict):
    """A track's best aligned face as a small JPEG (``track_end.thumbnail``)."""

    jpeg_base64: str
    width: int
    height: int
    det_score: float
    frame_num: int


class _TrackEndOptional(_Epoch, total=False):
    thumbnail: Thumbnail


class TrackEndEvent(_TrackEndOptional):
    """A track ended: it left the view, or its stream ended (``$defs/track_end``)."""

    schema: str
    type: Literal["track_end"]
    event_id: str
    timestamp: str
    stream_id: str
    session_id: str
    worker_id: str
    track_id: int
    first_frame: int
    last_frame: int
    first_timestamp: str
    last_timestamp: str
    first_pts: float | None
    last_pts: float | None
    dwell_s: float
    faces: int
    emotions: dict[str, int]
    dominant: str | None


class StreamEndEvent(_Epoch):
    """A stream stopped (``$defs/stream_end``)."""

    schema: str
    type: Literal["stream_end"]
    event_id: str
    timestamp: str
    stream_id: str
    session_id: str
    worker_id: str
    frames: int
    reason: str
    error: str | None


#: Any v1 event; ``type`` tells which.
Event = FaceEvent | TrackEndEvent | StreamEndEvent

#: event type -> its record, kept equal to the schema's ``$defs`` by tests/test_events.py.
EVENT_RECORDS: dict[str, type] = {
    "face": FaceEvent,
    "track_end": TrackEndEvent,
    "stream_end": StreamEndEvent,
}


def records(events: list[Event]) -> list[dict[str, Any]]:
    """The same events as plain JSON records, for sinks that take ``dict[str, Any]``."""
    return cast(list[dict[str, Any]], events)


@dataclass(frozen=True, slots=True)
class EventContext:
    """What every event of one stream carries besides the frame's own data."""

    worker_id: str
    session_id: str
    detector: str
    classifier: str
    backend: str
    precision: str

    def model(self) -> ModelField:
        return {
            "detector": self.detector,
            "classifier": self.classifier,
            "backend": self.backend,
            "precision": self.precision,
        }


def rfc3339(ts: float) -> str:
    """UNIX seconds -> RFC 3339 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    ms = math.floor(ts * 1000.0 + 0.5)
    dt = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """Inverse of ``rfc3339`` (UNIX seconds)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _epoch_suffix(epoch: int) -> str:
    """Epoch 0 (files) adds nothing, so file ids stay what they always were."""
    return f"\x1fe{epoch}" if epoch else ""


def face_event_id(
    stream_id: str, frame_num: int, track_id: int, index: int = 0, epoch: int = 0
) -> str:
    """Deterministic id of a face event; an untracked face (track id < 0) uses its index."""
    key = (
        f"{stream_id}\x1f{frame_num}\x1f{track_id}"
        if track_id >= 0
        else f"{stream_id}\x1f{frame_num}\x1fi{index}"
    )
    return str(uuid.uuid5(NS_FACE, key + _epoch_suffix(epoch)))


def track_end_event_id(stream_id: str, track_id: int, first_frame: int, epoch: int = 0) -> str:
    key = f"{stream_id}\x1f{track_id}\x1f{first_frame}" + _epoch_suffix(epoch)
    return str(uuid.uuid5(NS_TRACK_END, key))


def stream_end_event_id(stream_id: str, frames: int, epoch: int = 0) -> str:
    return str(uuid.uuid5(NS_STREAM_END, f"{stream_id}\x1f{frames}" + _epoch_suffix(epoch)))


def _probs_dict(row: list[float]) -> dict[str, float]:
    return {name: round(float(p), _PROB) for name, p in zip(EMOTIONS, row, strict=True)}


def _label(row: list[float]) -> tuple[str, float]:
    i = max(range(len(row)), key=row.__getitem__)
    return EMOTIONS[i], round(float(row[i]), _SCORE)


def _latency_ms(result: FrameResult, now: float) -> float:
    """Decode -> event built; capture wall clock when the frame carries no decode time."""
    start = result.frame.decoded_at or result.frame.wall_ts
    return round(max(0.0, (now - start) * 1000.0), 3)


def face_events(
    result: FrameResult, ctx: EventContext, now: float | None = None
) -> list[FaceEvent]:
    """One ``face`` event per face of a processed frame, in the faces' order."""
    frame, faces = result.frame, result.faces
    if not len(faces):
        return []
    now = time.time() if now is None else now
    # float64 before rounding, so that 12.3 stays 12.3 in JSON (not float32's 12.300000190734863)
    boxes = faces.xyxy.astype(np.float64).round(_PX).tolist()
    scores = faces.score.tolist()
    kps = faces.kps.astype(np.float64).round(_PX).tolist()
    tids = faces.track_id.tolist()
    probs = result.emotions.probs.tolist()
    smooth = result.smoothed.probs.tolist()
    timestamp = rfc3339(frame.wall_ts)
    pts = None if frame.pts is None else round(float(frame.pts), 6)
    latency = _latency_ms(result, now)
    out = []
    for i, tid in enumerate(tids):
        label, score = _label(probs[i])
        s_label, s_score = _label(smooth[i])
        event: FaceEvent = {
            "schema": SCHEMA_ID,
            "type": "face",
            "event_id": face_event_id(frame.stream_id, frame.frame_num, int(tid), i, frame.epoch),
            "timestamp": timestamp,
            "pts": pts,
            "frame_num": frame.frame_num,
            "epoch": frame.epoch,
            "stream_id": frame.stream_id,
            "session_id": ctx.session_id,
            "worker_id": ctx.worker_id,
            "frame": {"width": frame.width, "height": frame.height},
            "track_id": int(tid),
            "bbox": [float(v) for v in boxes[i]],
            "det_score": round(float(scores[i]), _SCORE),
            "detected": True if result.detected is None else bool(result.detected[i]),
            "landmarks": [[float(x), float(y)] for x, y in kps[i]],
            "emotion": {"label": label, "score": score, "probs": _probs_dict(probs[i])},
            "smoothed": {"label": s_label, "score": s_score},
            "model": ctx.model(),
            "latency_ms": latency,
        }
        out.append(event)
    return out


def track_end_event(
    stream_id: str, track_id: int, summary: TrackSummary, ctx: EventContext, epoch: int = 0
) -> TrackEndEvent:
    """A track left the view (or its stream ended): its span, dwell time and label counts.
    ``epoch`` is the capture epoch of the track's frames."""
    counts = {name: int(summary.labels.get(name, 0)) for name in EMOTIONS}
    dominant = max(EMOTIONS, key=lambda n: counts[n]) if summary.faces else None
    return {
        "schema": SCHEMA_ID,
        "type": "track_end",
        "event_id": track_end_event_id(stream_id, track_id, summary.first_frame, epoch),
        "timestamp": rfc3339(summary.last_ts),
        "epoch": epoch,
        "stream_id": stream_id,
        "session_id": ctx.session_id,
        "worker_id": ctx.worker_id,
        "track_id": int(track_id),
        "first_frame": summary.first_frame,
        "last_frame": summary.last_frame,
        "first_timestamp": rfc3339(summary.first_ts),
        "last_timestamp": rfc3339(summary.last_ts),
        "first_pts": None if summary.first_pts is None else round(float(summary.first_pts), 6),
        "last_pts": None if summary.last_pts is None else round(float(summary.last_pts), 6),
        "dwell_s": round(max(0.0, summary.last_ts - summary.first_ts), 3),
        "faces": summary.faces,
        "emotions": counts,
        "dominant": dominant,
    }


def stream_end_event(
    stream_id: str,
    frames: int,
    reason: str,
    ctx: EventContext,
    error: str | None = None,
    now: float | None = None,
    epoch: int = 0,
) -> StreamEndEvent:
    """A stream stopped: decoded frame count, why (eof, stopped, removed, error, ...);
    ``epoch`` is the last capture epoch of the stream (0 for files and never-opened sources)."""
    return {
        "schema": SCHEMA_ID,
        "type": "stream_end",
        "event_id": stream_end_event_id(stream_id, frames, epoch),
        "timestamp": rfc3339(time.time() if now is None else now),
        "epoch": epoch,
        "stream_id": stream_id,
        "session_id": ctx.session_id,
        "worker_id": ctx.worker_id,
        "frames": int(frames),
        "reason": reason,
        "error": error,
    }


def encode(event: Mapping[str, Any]) -> bytes:
    """Compact, deterministic UTF-8 JSON (key order as built; no NaN/Infinity)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode(data: bytes | str) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("an event must be a JSON object")
    return value


def load_schema() -> dict[str, Any]:
    """The published JSON Schema (2020-12) of the v1 events."""
    text = resources.files("pipeline").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


EVENT_TYPES = ("face", "track_end", "stream_end")


@functools.cache
def _validator(event_type: str | None) -> Any:
    """The whole schema, or (for a known type) its branch, so errors point at the field."""
    from jsonschema import Draft202012Validator

    schema = load_schema()
    Draft202012Validator.check_schema(schema)
    if event_type is not None:  # the branch with its local $refs inlined: about 2x faster
        defs = schema["$defs"]
        branch = _inline_refs(defs[event_type], defs)
        schema = {"$schema": schema["$schema"], **branch}
    return Draft202012Validator(schema)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace ``{"$ref": "#/$defs/NAME"}`` by the definition (the schema is not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def validate(event: Mapping[str, Any]) -> None:
    """Raise ValueError naming the path of the first problem if ``event`` breaks the contract."""
    from jsonschema.exceptions import best_match

    kind = event.get("type") if isinstance(event, Mapping) else None
    validator = _validator(kind if kind in EVENT_TYPES else None)
    error = best_match(validator.iter_errors(event))
    eid = event.get("event_id", "?") if isinstance(event, Mapping) else "?"
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise ValueError(f"event {eid}: {path}: {error.message}")
    if kind == "face":
        total = sum(event["emotion"]["probs"].values())
        if abs(total - 1.0) > PROBS_SUM_TOLERANCE:
            raise ValueError(f"event {eid}: emotion/probs: sum is {total:.6f}, not 1")
