from __future__ import annotations

import numpy as np

from pipeline.core.config import TrackerSettings
from pipeline.core.types import Faces
from pipeline.stages.track import Tracker, iou_matrix


def _faces(boxes: list[list[float]], scores: list[float]) -> Faces:
    return Faces.create(boxes, scores, np.zeros((len(boxes), 5, 2)))


def test_iou_matrix_known_values() -> None:
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], atol=1e-6)


def test_tracker_moving_faces_keep_ids() -> None:
    tracker = Tracker(TrackerSettings())
    seen = []
    for k in range(20):
        f = _faces(
            [[10 + 3 * k, 10, 60 + 3 * k, 60], [200, 100 + 2 * k, 260, 160 + 2 * k]], [0.9, 0.85]
        )
        out, ended = tracker.update(f)
        assert ended == []
        seen.append(tuple(out.track_id.tolist()))
    assert set(seen) == {(1, 2)}


def test_tracker_order_swap_keeps_identity() -> None:
    tracker = Tracker(TrackerSettings())
    out1, _ = tracker.update(_faces([[0, 0, 50, 50], [100, 0, 150, 50]], [0.9, 0.9]))
    out2, _ = tracker.update(_faces([[101, 0, 151, 50], [1, 0, 51, 50]], [0.9, 0.9]))
    assert out1.track_id.tolist() == [1, 2]
    assert out2.track_id.tolist() == [2, 1]


def test_tracker_lost_track_ends_after_max_age() -> None:
    tracker = Tracker(TrackerSettings(max_age_frames=3))
    tracker.update(_faces([[0, 0, 50, 50]], [0.9]))
    ended_at = None
    for k in range(6):
        _, ended = tracker.update(Faces.empty())
        if ended:
            ended_at = k
            assert ended == [1]
            break
    assert ended_at == 3
    out, _ = tracker.update(_faces([[0, 0, 50, 50]], [0.9]))
    assert out.track_id.tolist() == [2]


def test_tracker_low_score_extends_but_never_starts() -> None:
    tracker = Tracker(TrackerSettings(high_threshold=0.6, low_threshold=0.3))
    out, _ = tracker.update(_faces([[0, 0, 50, 50]], [0.4]))
    assert len(out) == 0
    tracker.update(_faces([[0, 0, 50, 50]], [0.9]))
    out, _ = tracker.update(_faces([[2, 0, 52, 50]], [0.4]))
    assert out.track_id.tolist() == [1]


def test_tracker_end_all_returns_live_ids() -> None:
    tracker = Tracker(TrackerSettings())
    tracker.update(_faces([[0, 0, 50, 50], [100, 0, 150, 50]], [0.9, 0.9]))
    assert sorted(tracker.end_all()) == [1, 2]
    assert tracker.live_ids == []
