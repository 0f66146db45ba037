"""Detection interval: faces carried by optical flow between detections (IntervalTracker)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from pipeline.core.config import IntervalMode, IntervalSettings, TrackerSettings
from pipeline.core.events import EventContext, face_events
from pipeline.core.types import Emotions, Faces, Frame, FrameResult
from pipeline.stages.motion import IntervalTracker
from pipeline.stages.track import Tracker, iou_matrix

SIZE = (480, 320)  # frame width, height
FACE = 96  # face patch side in pixels
#: landmarks inside the patch (fractions): eyes, nose, mouth corners
KPS = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]], np.float32)


@pytest.fixture(scope="module")
def face_patch(t1_image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """A real face from t1.jpg (the leftmost one), resized to FACE x FACE."""
    crop = t1_image[140:300, 90:230]
    return np.ascontiguousarray(cv2.resize(crop, (FACE, FACE), interpolation=cv2.INTER_AREA))


def _background(seed: int = 0) -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, (SIZE[1] // 8, SIZE[0] // 8, 3), np.uint8)
    return cv2.resize(noise, SIZE, interpolation=cv2.INTER_CUBIC)


class Scene:
    """Face patches at known positions per frame; a fake detector that reports exactly them."""

    def __init__(self, patch: npt.NDArray[np.uint8]) -> None:
        self.patch = patch
        self.bg = _background()
        self.calls: list[int] = []
        self.frame = 0
        self.places: dict[int, list[tuple[int, int]]] = {}

    def image(self, i: int) -> npt.NDArray[np.uint8]:
        self.frame = i
        img = self.bg.copy()
        for x, y in self.places.get(i, []):  # clipped at the frame's edges
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x + FACE, SIZE[0]), min(y + FACE, SIZE[1])
            if x1 > x0 and y1 > y0:
                img[y0:y1, x0:x1] = self.patch[y0 - y : y1 - y, x0 - x : x1 - x]
        return img

    def boxes(self, i: int) -> npt.NDArray[np.float32]:
        return np.array([[x, y, x + FACE, y + FACE] for x, y in self.places.get(i, [])], np.float32)

    def detect(self, image: npt.NDArray[np.uint8]) -> Faces:
        self.calls.append(self.frame)
        b = self.boxes(self.frame).reshape(-1, 4)
        kps = b[:, None, :2] + KPS[None] * FACE
        return Faces.create(b, np.full(len(b), 0.9), kps)


def _tracker(
    every: int, mode: IntervalMode = IntervalMode.FIXED, max_age: int = 15
) -> IntervalTracker:
    settings = IntervalSettings(every=every, mode=mode)
    return IntervalTracker(settings, Tracker(TrackerSettings(max_age_frames=max_age)))


def test_interval_tracker_keeps_id_and_box_on_moving_face_between_detections(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(40 + 6 * i, 60 + 3 * i)] for i in range(10)}
    it = _tracker(every=5)
    ids = set()
    for i in range(10):
        step = it.step(scene.image(i), scene.detect)
        assert len(step.faces) == 1, f"frame {i}: face not carried"
        ids.add(int(step.faces.track_id[0]))
        iou = float(iou_matrix(step.faces.xyxy, scene.boxes(i))[0, 0])
        assert iou > 0.85, f"frame {i}: carried box IoU {iou:.2f} with the true box"
        centre = step.faces.kps[0].mean(axis=0)
        true_centre = scene.boxes(i)[0, :2] + KPS.mean(axis=0) * FACE
        assert np.abs(centre - true_centre).max() < 3.0
    assert ids == {1}
    assert scene.calls == [0, 5]


def test_interval_tracker_finds_face_entering_between_detections_at_next_detection(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(30, 40)] + ([(300, 150)] if i >= 2 else []) for i in range(8)}
    it = _tracker(every=4)
    counts = []
    for i in range(8):
        step = it.step(scene.image(i), scene.detect)
        counts.append(len(step.faces))
        if i == 4:
            assert step.reason == "interval"
            assert sorted(step.faces.track_id.tolist()) == [1, 2]
    # the newcomer appears at frame 2, is not invented by flow, and is found at frame 4
    assert counts == [1, 1, 1, 1, 2, 2, 2, 2]


def test_interval_tracker_detected_flags_mark_detector_frames_only(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(50 + 2 * i, 50)] for i in range(7)}
    it = _tracker(every=3)
    flags = []
    for i in range(7):
        image = scene.image(i)
        step = it.step(image, scene.detect)
        flags.append(step.detected.tolist())
        probs = np.full((len(step.faces), 7), 1 / 7, np.float32)
        frame = Frame("cam", i, i / 25, 1e9 + i / 25, image, 1e9)
        result = FrameResult(frame, step.faces, Emotions(probs), Emotions(probs), (), step.detected)
        events = face_events(result, EventContext("w", "s", "det", "cls", "onnxruntime", "fp32"))
        assert [e["detected"] for e in events] == step.detected.tolist()
    assert flags == [[True], [False], [False], [True], [False], [False], [True]]


def test_interval_tracker_ends_track_that_flow_loses(face_patch: npt.NDArray[np.uint8]) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(100, 80)] for i in range(3)}  # the face vanishes at frame 3
    it = _tracker(every=10, mode=IntervalMode.AUTO, max_age=2)
    ended: list[int] = []
    steps = []
    for i in range(8):
        step = it.step(scene.image(i), scene.detect)
        steps.append(step)
        ended += step.ended
    assert len(steps[3].faces) == 0, "flow must not carry a face that is gone"
    assert steps[4].reason == "lost", "auto mode detects on the frame after flow lost a track"
    assert ended == [1]
    assert all(len(s.faces) == 0 for s in steps[3:])


def test_interval_tracker_face_leaving_frame_does_not_keep_detector_running(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    # slides out of the right edge by frame 5, then stays gone
    scene.places = {i: [(SIZE[0] - FACE - 10 + 30 * i, 100)] for i in range(5)}
    it = _tracker(every=30, mode=IntervalMode.AUTO, max_age=12)
    steps = [it.step(scene.image(i), scene.detect) for i in range(14)]
    # flow drops the face once it is less than half inside (frame 2): it really was lost ...
    assert [len(s.faces) for s in steps] == [1, 1] + [0] * 12
    # ... but it is predicted outside the frame, so the detector is not asked to look for it:
    # only the first frame detects (every=30), none of the 12 frames until the track ends
    assert [s.reason for s in steps] == ["first"] + [""] * 13
    assert scene.calls == [0]


def test_interval_tracker_hidden_face_looked_for_every_other_frame(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    # visible for 3 frames, hidden (mid-frame) for 6, back at the same place
    scene.places = {i: [(150, 100)] for i in list(range(3)) + list(range(9, 14))}
    it = _tracker(every=30, mode=IntervalMode.AUTO, max_age=12)
    steps = [it.step(scene.image(i), scene.detect) for i in range(14)]
    lost = [i for i, s in enumerate(steps) if s.reason == "lost"]
    assert lost and all(b - a == 2 for a, b in itertools.pairwise(lost)), lost
    back = [i for i, s in enumerate(steps) if i >= 9 and len(s.faces)]
    assert back and back[0] <= 10  # found again within a frame of its return
    assert {int(t) for s in steps for t in s.faces.track_id} == {1}  # same id


def test_interval_tracker_detection_asked_ahead_makes_a_detection_frame(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(60 + 4 * i, 80)] for i in range(8)}
    it = _tracker(every=4)
    assert it.due_in() is None  # nothing processed yet: the first frame detects anyway
    dues, reasons, waited = [], [], []

    def detect_now(img: npt.NDArray[np.uint8]) -> Faces:
        waited.append(scene.frame)
        return scene.detect(img)

    for i in range(8):
        dues.append(it.due_in())
        image = scene.image(i)
        # the runner asks ahead for the frame due_in() pointed at (here: the next one)
        ahead = (lambda img=image: scene.detect(img)) if dues[-1] == 0 else None
        step = it.step(image, detect_now, ahead)
        reasons.append(step.reason)
        assert step.detected.tolist() == [bool(step.reason)] * len(step.faces)
    assert dues == [None, 3, 2, 1, 0, 3, 2, 1]
    assert reasons == ["first", "", "", "", "interval", "", "", ""]
    assert waited == [0] and scene.calls == [0, 4]


def test_interval_tracker_auto_detects_on_scene_cut_and_uncertain_face(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    """Auto mode runs the detector early on a scene cut (the background changes) and on the
    frame after a carried face with a low detector score; fixed mode does neither. The
    detector gets this frame's image, and the counters add up."""
    for mode in (IntervalMode.AUTO, IntervalMode.FIXED):
        scene = Scene(face_patch)
        scene.places = {i: [(120, 90)] for i in range(9)}
        cut = _background(seed=7)
        images = [scene.image(i) for i in range(9)]
        for i in range(4, 9):  # a cut at frame 4: same face, another background
            images[i] = cut.copy()
            images[i][90 : 90 + FACE, 120 : 120 + FACE] = face_patch
        it = _tracker(every=30, mode=mode)
        steps = []
        for i, image in enumerate(images):
            scene.frame = i

            def detect(
                img: npt.NDArray[np.uint8], want: npt.NDArray[np.uint8] = image, s: Scene = scene
            ) -> Faces:
                assert np.array_equal(img, want), "the detector must get this frame"
                return s.detect(img)

            steps.append(it.step(image, detect))
        reasons = [s.reason for s in steps]
        if mode is IntervalMode.AUTO:
            assert reasons == ["first", "", "", "", "scene", "", "", "", ""], reasons
        else:
            assert reasons == ["first"] + [""] * 8, reasons
        assert it.detections == len(scene.calls) and it.carried == 9 - it.detections
        assert all(s.detect_ms == 0.0 and s.flow_ms > 0 for s in steps if not s.reason)

    # a face the detector was unsure of (score below uncertain_score) is detected again at once
    scene = Scene(face_patch)
    scene.places = {i: [(120, 90)] for i in range(4)}
    settings = IntervalSettings(every=30, mode=IntervalMode.AUTO, uncertain_score=0.95)
    it = IntervalTracker(settings, Tracker(TrackerSettings()))
    reasons = []
    for i in range(4):
        reasons.append(it.step(scene.image(i), scene.detect).reason)  # scores 0.9
        if i == 1:
            assert it.due_in() == 0  # known ahead: the next frame detects
    assert reasons == ["first", "", "uncertain", ""], reasons


def test_interval_tracker_takes_pixels_and_times_the_detector(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    from pipeline.core.types import Pixels

    scene = Scene(face_patch)
    scene.places = {i: [(60 + 4 * i, 80)] for i in range(3)}
    it = _tracker(every=2)

    def slow(img: npt.NDArray[np.uint8]) -> Faces:
        import time

        time.sleep(0.02)
        return scene.detect(img)

    steps = [it.step(Pixels.of_bgr(scene.image(i)), slow) for i in range(3)]
    assert [len(s.faces) for s in steps] == [1, 1, 1]
    assert steps[0].detect_ms >= 20 and steps[2].detect_ms >= 20
    assert steps[0].flow_ms < 20 and steps[1].detect_ms == 0.0


def test_row_median_even_odd_nan_rows() -> None:
    from pipeline.stages.motion import row_median

    nan = np.nan
    a = np.array(
        [[4, 1, 3, 2, nan, nan], [5, 1, 3, nan, nan, nan], [7, nan, nan, nan, nan, nan], [nan] * 6]
    )
    out = row_median(a)
    np.testing.assert_allclose(out[:3], [2.5, 3.0, 7.0])
    assert np.isnan(out[3]) and out.dtype == np.float64


def test_inside_share_of_box_in_frame() -> None:
    from pipeline.stages.motion import _inside

    boxes = np.array(
        [
            [10, 10, 30, 50],  # fully inside
            [-10, -10, 30, 10],  # 40 x 20 box, 30 x 10 of it inside
            [90, 180, 130, 220],  # past the right and bottom edges: 10 x 20 of 40 x 40
            [200, 300, 240, 340],  # outside on both axes
        ],
        np.float32,
    )
    np.testing.assert_allclose(_inside(boxes, 100, 200), [1.0, 300 / 800, 200 / 1600, 0.0])


def test_move_applies_voted_translation_and_clipped_scale() -> None:
    from pipeline.stages.motion import _move

    box = np.array([[0, 0, 40, 40]], np.float32)
    kps = np.array([[[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]]], np.float32)
    src = np.concatenate(
        [kps, np.array([[[10 + 10 * (k % 3), 12 + 8 * (k // 3)] for k in range(9)]], np.float32)],
        axis=1,
    )
    centre = np.array([20, 20], np.float32)
    good = np.ones((1, 14), np.bool_)
    for factor, want in ((1.1, 1.1), (0.9, 0.9), (2.0, 1.25), (0.5, 0.8)):  # clipped to 0.8-1.25
        dst = (src - centre) * factor + centre + np.array([5, -3], np.float32)
        boxes, new_kps = _move(src, dst, good, box, kps)
        side = 40 * want
        np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], side, rtol=1e-3)
        np.testing.assert_allclose(boxes[0, 3] - boxes[0, 1], side, rtol=1e-3)
        np.testing.assert_allclose(new_kps, dst[:, :5], atol=1e-4)  # tracked landmarks
    # only the grid survived and a single point: pure translation, landmarks moved with it
    good = np.zeros((1, 14), np.bool_)
    good[0, 9] = True
    dst = src + np.array([6, 4], np.float32)
    boxes, new_kps = _move(src, dst, good, box, kps)
    np.testing.assert_allclose(boxes, [[6, 4, 46, 44]], atol=1e-4)
    np.testing.assert_allclose(new_kps, kps + np.array([6, 4], np.float32), atol=1e-4)
    assert boxes.dtype == np.float32 and new_kps.dtype == np.float32


def test_interval_tracker_resolution_change_detects_afresh(
    face_patch: npt.NDArray[np.uint8],
) -> None:
    scene = Scene(face_patch)
    scene.places = {i: [(100, 80)] for i in range(4)}
    it = _tracker(every=30)
    small = [cv2.resize(scene.image(i), (240, 160)) for i in range(2)]
    reasons = [it.step(img, lambda _img: Faces.empty()).reason for img in small]
    reasons += [it.step(scene.image(i), scene.detect).reason for i in (2, 3)]
    assert reasons == ["first", "", "first", ""]  # flow never runs across two sizes
