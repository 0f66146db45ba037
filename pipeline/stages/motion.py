"""Detect on an interval, carry faces by sparse optical flow in between (DeepStream's
``interval`` with a tracker filling the skipped frames).

Per stream, ``IntervalTracker.step`` decides for each processed frame whether the detector
runs: every ``every`` frames, and in ``auto`` mode sooner when flow lost a track, a carried
face is uncertain (low detector score or few surviving flow points) or the scene changed.

On a detection frame the detector's faces go through the ByteTrack-style ``Tracker`` (ids).
On the frames between, every face of the previous frame is carried forward: its 5 landmarks
plus a 3x3 grid inside its box are tracked with pyramidal Lucas-Kanade
(``cv2.calcOpticalFlowPyrLK``) forward and backward; points whose forward-backward error is
small vote for a translation + scale (medians), which moves the box, and each landmark takes
its own tracked position when it survived. A face with fewer than ``min_points`` surviving
points, or that leaves the frame, is lost: it is not published, its track ages in the
``Tracker`` and ends (``track_end``) unless the next detection finds it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.config import IntervalMode, IntervalSettings
from pipeline.core.types import Faces
from pipeline.stages.track import Tracker

logger = logging.getLogger(__name__)

Gray = npt.NDArray[np.uint8]
#: 3x3 grid inside the box (fractions of width/height), tracked beside the 5 landmarks.
_GRID = np.array([(x, y) for y in (0.3, 0.5, 0.7) for x in (0.3, 0.5, 0.7)], np.float32)
_LK = {
    "winSize": (15, 15),
    "maxLevel": 2,
    "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 10, 0.03),
}
#: Flow runs on a half-resolution gray image (a 40 px face is 20 px there: plenty for LK).
_FLOW_SCALE = 0.5
_SMALL = 4  # scene-change check at 1/4 of the flow image (1/8 of the frame)
_MIN_INSIDE = 0.5  # a carried box less than half inside the frame is lost


@dataclass(frozen=True, slots=True)
class Carried:
    """Faces carried from the previous frame: the survivors, the ids flow lost, and whether
    any survivor is uncertain."""

    faces: Faces
    lost: tuple[int, ...]
    uncertain: bool


@dataclass(frozen=True, slots=True)
class Step:
    """One processed frame: its tracked faces, which came from the detector, ended tracks."""

    faces: Faces
    detected: npt.NDArray[np.bool_]
    ended: tuple[int, ...]
    detect_ms: float
    flow_ms: float
    reason: str  # why the detector ran ("interval", "lost", "uncertain", "scene", "first") or ""


def face_points(faces: Faces) -> npt.NDArray[np.float32]:
    """(n, 14, 2) points per face: 5 landmarks then the 3x3 box grid."""
    tl = faces.xyxy[:, None, :2]
    wh = (faces.xyxy[:, 2:] - faces.xyxy[:, :2])[:, None, :]
    return np.concatenate([faces.kps, tl + _GRID[None] * wh], axis=1).astype(np.float32)


def flow_image(image: npt.NDArray[np.uint8]) -> Gray:
    """The half-resolution gray image flow runs on (OpenCV 5's Python LK takes images, not
    prebuilt pyramids, so the pyramid is rebuilt per call: cheap at half resolution)."""
    h, w = image.shape[:2]
    size = (max(int(w * _FLOW_SCALE), 1), max(int(h * _FLOW_SCALE), 1))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), np.uint8)


def carry_faces(
    prev: Gray, cur: Gray, faces: Faces, settings: IntervalSettings, size: tuple[int, int]
) -> Carried:
    """Move ``faces`` (with track ids) from the ``prev`` to the ``cur`` flow image (half scale)
    by forward-backward LK flow; ``size`` is the frame's (width, height)."""
    n = len(faces)
    if n == 0:
        return Carried(Faces.empty(), (), False)
    pts = face_points(faces)
    k = pts.shape[1]
    p0 = (pts * _FLOW_SCALE).reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **_LK)  # type: ignore[call-overload]
    p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **_LK)  # type: ignore[call-overload]
    fb = np.linalg.norm((p0b - p0).reshape(n, k, 2), axis=2) / _FLOW_SCALE
    good = (st1.reshape(n, k) == 1) & (st2.reshape(n, k) == 1) & (fb < settings.max_fb_error_px)
    new = p1.reshape(n, k, 2) / _FLOW_SCALE
    w, h = size
    keep, boxes, kps, uncertain = [], [], [], False
    for i in range(n):
        g = good[i]
        if int(g.sum()) < settings.min_points:
            continue
        box, kp = _move(pts[i], new[i], g, faces.xyxy[i], faces.kps[i])
        if _inside(box, w, h) < _MIN_INSIDE:
            continue
        keep.append(i)
        boxes.append(box)
        kps.append(kp)
        uncertain |= bool(g.mean() < 0.6 or faces.score[i] < settings.uncertain_score)
    idx = np.asarray(keep, np.int64)
    lost = tuple(int(t) for t in np.delete(faces.track_id, idx))
    if not keep:
        return Carried(Faces.empty(), lost, uncertain)
    out = Faces.create(np.stack(boxes), faces.score[idx], np.stack(kps), faces.track_id[idx])
    return Carried(out, lost, uncertain)


def _move(
    src: npt.NDArray[np.float32],
    dst: npt.NDArray[np.float32],
    good: npt.NDArray[np.bool_],
    box: npt.NDArray[np.float32],
    kps: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Translation + scale voted by the good points (medians), applied to box and landmarks."""
    s, d = src[good], dst[good]
    cs, cd = np.median(s, axis=0), np.median(d, axis=0)
    ds = np.linalg.norm(s - cs, axis=1)
    dd = np.linalg.norm(d - cd, axis=1)
    valid = ds > 1.0
    scale = float(np.median(dd[valid] / ds[valid])) if valid.sum() >= 2 else 1.0
    scale = float(np.clip(scale, 0.8, 1.25))
    corners = box.reshape(2, 2)
    new_box = ((corners - cs) * scale + cd).reshape(4)
    new_kps = (kps - cs) * scale + cd
    tracked = good[:5]
    new_kps[tracked] = dst[:5][tracked]
    return new_box.astype(np.float32), new_kps.astype(np.float32)


def _inside(box: npt.NDArray[np.float32], w: int, h: int) -> float:
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1e-6)
    iw = max(0.0, min(float(box[2]), w) - max(float(box[0]), 0.0))
    ih = max(0.0, min(float(box[3]), h) - max(float(box[1]), 0.0))
    return iw * ih / area


class IntervalTracker:
    """One stream's detect-or-carry decision, flow carrier and id tracker. Not thread-safe."""

    def __init__(self, settings: IntervalSettings, tracker: Tracker) -> None:
        self._s = settings
        self.tracker = tracker
        self._prev: Gray | None = None
        self._prev_shape: tuple[int, ...] = ()
        self._prev_faces = Faces.empty()
        self._ref_small: npt.NDArray[np.float32] | None = None
        self._since = 0
        self._want = ""
        self.detections = 0
        self.carried = 0

    def step(
        self, image: npt.NDArray[np.uint8], detect: Callable[[npt.NDArray[np.uint8]], Faces]
    ) -> Step:
        """Faces of this frame, from ``detect`` or carried by flow (see module docstring)."""
        t0 = time.perf_counter()
        gray = flow_image(image)
        reason = self._due(gray, image.shape)
        if reason:
            t1 = time.perf_counter()
            faces, ended = self.tracker.update(detect(image))
            detect_ms, flow_ms = (time.perf_counter() - t1) * 1000, (t1 - t0) * 1000
            detected = np.ones(len(faces), np.bool_)
            # auto: keep detecting while a track is lost (hidden behind another face, say),
            # so it is found again near where it vanished instead of as a new id later
            self._since, self._want = 0, "lost" if self.tracker.has_lost else ""
            self.detections += 1
        else:
            assert self._prev is not None
            size = (image.shape[1], image.shape[0])
            carried = carry_faces(self._prev, gray, self._prev_faces, self._s, size)
            faces = carried.faces
            ended = self.tracker.carry(faces.track_id, faces.xyxy)
            detect_ms, flow_ms = 0.0, (time.perf_counter() - t0) * 1000
            detected = np.zeros(len(faces), np.bool_)
            self._since += 1
            self._want = "lost" if carried.lost else "uncertain" if carried.uncertain else ""
            self.carried += 1
        self._prev, self._prev_shape, self._prev_faces = gray, image.shape, faces
        return Step(faces, detected, tuple(ended), detect_ms, flow_ms, reason)

    def _due(self, gray: Gray, shape: tuple[int, ...]) -> str:
        """Why the detector runs on this frame ("" when it does not)."""
        small = cv2.resize(
            gray,
            (max(gray.shape[1] // _SMALL, 1), max(gray.shape[0] // _SMALL, 1)),
            interpolation=cv2.INTER_AREA,
        ).astype(np.float32)
        first = self._prev is None or self._prev_shape != shape
        reason = "first" if first else "interval" if self._since + 1 >= self._s.every else ""
        if not reason and self._s.mode == IntervalMode.AUTO:
            if self._want:
                reason = self._want
            elif self._ref_small is not None and self._scene_changed(small, self._ref_small):
                reason = "scene"
        if reason:
            self._ref_small = small
        return reason

    def _scene_changed(self, small: npt.NDArray[np.float32], ref: npt.NDArray[np.float32]) -> bool:
        if small.shape != ref.shape:
            return True
        return float(np.mean(np.abs(small - ref))) > self._s.scene_change

    def end_all(self) -> list[int]:
        self._prev_faces = Faces.empty()
        return self.tracker.end_all()
