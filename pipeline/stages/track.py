"""Per-stream face tracking, ByteTrack-style.

Each processed frame: predict every live track forward (constant velocity on box centre and
size), associate high-score detections by IoU (greedy, best IoU first), then let low-score detections
extend the tracks still unmatched, and start new tracks only from unmatched high-score
detections. A track unmatched for ``max_age_frames`` processed frames ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pipeline.core.config import TrackerSettings
from pipeline.core.types import Faces

logger = logging.getLogger(__name__)


def iou_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Pairwise IoU of boxes a (n,4) and b (m,4), xyxy."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return (inter / np.maximum(union, 1e-6)).astype(np.float32)


def greedy_pairs(iou: npt.NDArray[np.float32], min_iou: float) -> list[tuple[int, int]]:
    """One-to-one (row, col) pairs, highest IoU first, each at least ``min_iou``. For faces
    (boxes that rarely overlap) this is the Hungarian assignment, without importing
    scipy.optimize (about 15 MB of RSS in every worker)."""
    rows, cols = np.nonzero(iou >= min_iou)
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in order.tolist():
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return sorted(pairs)


@dataclass
class _Track:
    track_id: int
    box: npt.NDArray[np.float32]
    velocity: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(4, np.float32))
    misses: int = 0
    hits: int = 1

    def predicted(self) -> npt.NDArray[np.float32]:
        return self.box + self.velocity * float(self.misses + 1)

    def update(self, box: npt.NDArray[np.float32]) -> None:
        step = (box - self.box) / float(self.misses + 1)
        self.velocity = 0.6 * self.velocity + 0.4 * step
        self.box = box.astype(np.float32)
        self.misses = 0
        self.hits += 1


def _match(
    tracks: list[_Track], boxes: npt.NDArray[np.float32], min_iou: float
) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Greedy matching on IoU; returns (pairs (track_idx, det_idx), free tracks, free dets)."""
    if not tracks or len(boxes) == 0:
        return [], list(range(len(tracks))), list(range(len(boxes)))
    pred = np.stack([t.predicted() for t in tracks]).astype(np.float32)
    pairs = greedy_pairs(iou_matrix(pred, boxes), min_iou)
    used_t = {p[0] for p in pairs}
    used_d = {p[1] for p in pairs}
    free_t = [i for i in range(len(tracks)) if i not in used_t]
    free_d = [j for j in range(len(boxes)) if j not in used_d]
    return pairs, free_t, free_d


class Tracker:
    """Assigns stable ``track_id``s to the faces of one stream. Not thread-safe: one per stream."""

    def __init__(self, settings: TrackerSettings) -> None:
        self._s = settings
        self._tracks: list[_Track] = []
        self._next_id = 1

    @property
    def live_ids(self) -> list[int]:
        return [t.track_id for t in self._tracks]

    def lost_boxes(self) -> npt.NDArray[np.float32]:
        """(n, 4) boxes where the lost live tracks are predicted on the next frame."""
        lost = [t.predicted() for t in self._tracks if t.misses > 0]
        return np.asarray(lost, np.float32).reshape(-1, 4)

    def update(self, faces: Faces) -> tuple[Faces, list[int]]:
        """Return the faces with track ids (faces below ``low_threshold`` dropped) and the ids
        of tracks that ended on this frame."""
        keep = np.flatnonzero(faces.score >= self._s.low_threshold)
        faces = faces.select(keep)
        ids = np.full(len(faces), -1, np.int64)
        high = np.flatnonzero(faces.score >= self._s.high_threshold)
        low = np.flatnonzero(faces.score < self._s.high_threshold)

        pairs, free_t, free_high = _match(self._tracks, faces.xyxy[high], self._s.match_iou)
        for ti, di in pairs:
            self._tracks[ti].update(faces.xyxy[high[di]])
            ids[high[di]] = self._tracks[ti].track_id
        rest = [self._tracks[i] for i in free_t]
        pairs_low, free_t2, _ = _match(rest, faces.xyxy[low], self._s.match_iou)
        for ti, di in pairs_low:
            rest[ti].update(faces.xyxy[low[di]])
            ids[low[di]] = rest[ti].track_id
        for t in (rest[i] for i in free_t2):
            t.misses += 1
        for di in free_high:
            track = _Track(self._next_id, faces.xyxy[high[di]].copy())
            self._next_id += 1
            self._tracks.append(track)
            ids[high[di]] = track.track_id
        ended = [t.track_id for t in self._tracks if t.misses > self._s.max_age_frames]
        self._tracks = [t for t in self._tracks if t.misses <= self._s.max_age_frames]
        matched = ids >= 0
        return faces.select(np.flatnonzero(matched)).with_track_ids(ids[matched]), ended

    def carry(self, track_ids: npt.NDArray[np.int64], boxes: npt.NDArray[np.float32]) -> list[int]:
        """A frame without detection: tracks in ``track_ids`` moved to ``boxes`` (by optical
        flow); every other live track misses this frame. Returns the ids of tracks that ended."""
        moved = {int(t): b for t, b in zip(track_ids.tolist(), boxes, strict=True)}
        for t in self._tracks:
            box = moved.get(t.track_id)
            if box is None:
                t.misses += 1
            else:
                t.update(np.asarray(box, np.float32))
        ended = [t.track_id for t in self._tracks if t.misses > self._s.max_age_frames]
        self._tracks = [t for t in self._tracks if t.misses <= self._s.max_age_frames]
        return ended

    def end_all(self) -> list[int]:
        """End every live track (stream end); returns their ids."""
        ended = self.live_ids
        self._tracks = []
        return ended
