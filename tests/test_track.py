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


def test_greedy_pairs_best_iou_first_one_to_one() -> None:
    from pipeline.stages.track import greedy_pairs

    iou = np.array([[0.9, 0.5], [0.8, 0.0]], np.float32)
    # (0,0) wins; (1,0) and (0,1) would reuse a row or a column already taken
    assert greedy_pairs(iou, 0.3) == [(0, 0)]
    iou = np.array([[0.4, 0.7], [0.6, 0.0]], np.float32)
    assert greedy_pairs(iou, 0.3) == [(0, 1), (1, 0)]
    assert greedy_pairs(np.array([[0.5]], np.float32), 0.5) == [(0, 0)]  # the bound counts
    assert greedy_pairs(np.array([[0.5]], np.float32), 0.75) == []


def test_iou_matrix_empty_side_gives_empty_matrix() -> None:
    a = np.zeros((0, 4), np.float32)
    b = np.array([[0, 0, 10, 10]], np.float32)
    assert iou_matrix(a, b).shape == (0, 1) and iou_matrix(b, a).shape == (1, 0)
    assert iou_matrix(b, a).dtype == np.float32


def test_tracker_velocity_carries_fast_face_across_a_missed_frame() -> None:
    """A 40 px face speeding up to 30 px per frame: its box one frame on barely overlaps, so
    only the constant-velocity prediction (per frame, also across the missed frame) keeps its
    id."""
    tracker = Tracker(TrackerSettings(max_age_frames=5))
    x = 0
    for speed in (10, 15, 20, 25, 30, 30, 30, 30, 30, 30, 30, 30):  # speeds up to 30 px
        out, _ = tracker.update(_faces([[x, 0, x + 40, 40]], [0.9]))
        assert out.track_id.tolist() == [1], f"lost the track at x={x}"
        x += speed
    assert len(tracker.lost_boxes()) == 0  # every track matched: none lost
    tracker.update(Faces.empty())  # missed one frame
    lost = tracker.lost_boxes()  # predicted two steps (~60 px) on from the last box
    assert lost.shape == (1, 4) and abs(float(lost[0, 0]) - (x - 30 + 60)) < 2.0
    x += 30
    for _ in range(3):  # found again 60 px on, then keeps moving 30 px per frame
        out, _ = tracker.update(_faces([[x, 0, x + 40, 40]], [0.9]))
        assert out.track_id.tolist() == [1], f"lost the track at x={x}"
        x += 30
    assert len(tracker.lost_boxes()) == 0


def test_tracker_thresholds_are_inclusive() -> None:
    tracker = Tracker(TrackerSettings(high_threshold=0.5, low_threshold=0.25))
    out, _ = tracker.update(_faces([[0, 0, 50, 50]], [0.5]))  # exactly high: starts a track
    assert out.track_id.tolist() == [1]
    out, _ = tracker.update(_faces([[1, 0, 51, 50]], [0.25]))  # exactly low: extends it
    assert out.track_id.tolist() == [1]


def test_tracker_carry_ages_unmoved_tracks_and_ends_after_max_age() -> None:
    tracker = Tracker(TrackerSettings(max_age_frames=3))
    tracker.update(_faces([[0, 0, 50, 50], [100, 0, 150, 50]], [0.9, 0.9]))
    moved = np.array([[2, 0, 52, 50]], np.float32)
    ended = [tracker.carry(np.array([1]), moved) for _ in range(4)]
    assert ended == [[], [], [], [2]]  # track 2 missed 4 frames: ended once, on the 4th
    assert tracker.live_ids == [1]
    np.testing.assert_allclose(tracker.lost_boxes(), np.zeros((0, 4)))


def test_tracker_matched_track_is_not_aged_when_another_is_missed() -> None:
    tracker = Tracker(TrackerSettings(max_age_frames=1))
    tracker.update(_faces([[0, 0, 50, 50], [200, 0, 250, 50]], [0.9, 0.9]))
    for _ in range(3):  # only the second face is seen: the first ages out, the second stays
        out, _ = tracker.update(_faces([[200, 0, 250, 50]], [0.9]))
        assert out.track_id.tolist() == [2]
    assert tracker.live_ids == [2] and len(tracker.lost_boxes()) == 0
