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
from pipeline.core.types import Faces, Image, Pixels
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
_IN_VIEW = 0.75  # a lost track predicted at least this much inside the frame is looked for
_LOST_EVERY = 2  # ... on every other frame while it stays lost (hidden behind another face, say)


@dataclass(frozen=True, slots=True)
class Carried:
    """Faces carried from the previous frame: the survivors (the others are missed by the
    ``Tracker``), and whether any survivor is uncertain."""

    faces: Faces
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


def flow_image(gray: Gray) -> Gray:
    """The half-resolution gray image flow runs on, from the frame's full-resolution luma
    (OpenCV 5's Python LK takes images, not prebuilt pyramids, so the pyramid is rebuilt per
    call: cheap at half resolution)."""
    h, w = gray.shape[:2]
    size = (max(int(w * _FLOW_SCALE), 1), max(int(h * _FLOW_SCALE), 1))
    return np.asarray(cv2.resize(gray, size, interpolation=cv2.INTER_AREA), np.uint8)


def carry_faces(
    prev: Gray, cur: Gray, faces: Faces, settings: IntervalSettings, size: tuple[int, int]
) -> Carried:
    """Move ``faces`` (with track ids) from the ``prev`` to the ``cur`` flow image (half scale)
    by forward-backward LK flow; ``size`` is the frame's (width, height)."""
    n = len(faces)
    if n == 0:
        return Carried(Faces.empty(), False)
    pts = face_points(faces)
    k = pts.shape[1]
    p0 = (pts * _FLOW_SCALE).reshape(-1, 1, 2)
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev, cur, p0, None, **_LK)  # type: ignore[call-overload]
    p0b, st2, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **_LK)  # type: ignore[call-overload]
    fb = np.linalg.norm((p0b - p0).reshape(n, k, 2), axis=2) / _FLOW_SCALE
    good = (st1.reshape(n, k) == 1) & (st2.reshape(n, k) == 1) & (fb < settings.max_fb_error_px)
    new = p1.reshape(n, k, 2) / _FLOW_SCALE
    enough = good.sum(axis=1) >= settings.min_points
    boxes, kps = _move(pts, new, good, faces.xyxy, faces.kps)
    keep = enough & (_inside(boxes, *size) >= _MIN_INSIDE)
    uncertain = bool(
        ((good.mean(axis=1) < 0.6) | (faces.score < settings.uncertain_score))[keep].any()
    )
    if not keep.any():
        return Carried(Faces.empty(), uncertain)
    out = Faces.create(boxes[keep], faces.score[keep], kps[keep], faces.track_id[keep])
    return Carried(out, uncertain)


def _move(
    src: npt.NDArray[np.float32],
    dst: npt.NDArray[np.float32],
    good: npt.NDArray[np.bool_],
    boxes: npt.NDArray[np.float32],
    kps: npt.NDArray[np.float32],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Per face, the translation + scale voted by its good points (medians), applied to its
    box and landmarks; landmarks whose own point survived take their tracked position.
    Vectorised over faces: points that are not good are NaN and left out of the medians (a
    face without good points keeps its box; the caller drops it)."""
    s = np.where(good[..., None], src, np.nan)
    d = np.where(good[..., None], dst, np.nan)
    cs = np.stack([row_median(s[..., 0]), row_median(s[..., 1])], axis=1)  # (n, 2)
    cd = np.stack([row_median(d[..., 0]), row_median(d[..., 1])], axis=1)
    ds = np.linalg.norm(s - cs[:, None], axis=2)
    dd = np.linalg.norm(d - cd[:, None], axis=2)
    valid = np.nan_to_num(ds, nan=0.0) > 1.0
    scale = row_median(np.where(valid, dd / np.where(valid, ds, 1.0), np.nan))
    scale = np.where(valid.sum(axis=1) >= 2, scale, 1.0)
    scale = np.clip(np.nan_to_num(scale, nan=1.0), 0.8, 1.25)[:, None, None]
    cs, cd = np.nan_to_num(cs)[:, None], np.nan_to_num(cd)[:, None]
    new_boxes = ((boxes.reshape(-1, 2, 2) - cs) * scale + cd).reshape(-1, 4)
    new_kps = (kps - cs) * scale + cd
    tracked = good[:, :5]
    new_kps[tracked] = dst[:, :5][tracked]
    return new_boxes.astype(np.float32), new_kps.astype(np.float32)


def row_median(a: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Median of each row of ``a`` (n, k) ignoring NaN; NaN for a row with no number
    (``np.nanmedian`` without its per-call overhead and all-NaN warnings)."""
    srt = np.sort(a.astype(np.float64), axis=1)  # NaN sorts last
    count = (~np.isnan(srt)).sum(axis=1)
    rows = np.arange(len(a))
    lo = srt[rows, np.maximum(count - 1, 0) // 2]
    hi = srt[rows, np.maximum(count, 1) // 2]
    return np.where(count > 0, (lo + hi) / 2.0, np.nan)


def _inside(boxes: npt.NDArray[np.float32], w: int, h: int) -> npt.NDArray[np.float64]:
    """Share of each (n, 4) box inside a w x h frame."""
    b = boxes.astype(np.float64)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-6)
    iw = np.clip(np.minimum(b[:, 2], w) - np.maximum(b[:, 0], 0.0), 0.0, None)
    ih = np.clip(np.minimum(b[:, 3], h) - np.maximum(b[:, 1], 0.0), 0.0, None)
    return np.asarray(iw * ih / area, np.float64)


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
        self,
        picture: Pixels | Image,
        detect: Callable[[Image], Faces],
        ahead: Callable[[], Faces] | None = None,
    ) -> Step:
        """Faces of this frame (``Pixels``, or a BGR image), from ``detect`` (given the BGR
        image) or carried by flow on its gray (see module docstring). ``ahead`` gives the
        detector's faces for this frame when they were asked for ahead of time (the frame
        ``due_in`` pointed at): used if the frame is due, so which frames are detector frames
        never depends on timing (a detection that came first makes it go unused)."""
        t0 = time.perf_counter()
        px = picture if isinstance(picture, Pixels) else Pixels.of_bgr(picture)
        gray = flow_image(px.luma())  # the range does not matter to flow
        shape = (px.height, px.width)
        reason = self._due(gray, shape)
        if reason:
            t1 = time.perf_counter()
            found = ahead() if ahead is not None else detect(px.bgr())
            faces, ended = self.tracker.update(found)
            detect_ms, flow_ms = (time.perf_counter() - t1) * 1000, (t1 - t0) * 1000
            detected = np.ones(len(faces), np.bool_)
            # auto: keep detecting while a track is lost (hidden behind another face, say),
            # so it is found again near where it vanished instead of as a new id later
            self._since, self._want = 0, "lost" if self._lost_in_view(shape) else ""
            self.detections += 1
        else:
            assert self._prev is not None
            size = (px.width, px.height)
            carried = carry_faces(self._prev, gray, self._prev_faces, self._s, size)
            faces = carried.faces
            ended = self.tracker.carry(faces.track_id, faces.xyxy)
            detect_ms, flow_ms = 0.0, (time.perf_counter() - t0) * 1000
            detected = np.zeros(len(faces), np.bool_)
            self._since += 1
            lost = self._lost_in_view(shape)
            self._want = "lost" if lost else "uncertain" if carried.uncertain else ""
            self.carried += 1
        self._prev, self._prev_shape, self._prev_faces = gray, shape, faces
        return Step(faces, detected, tuple(ended), detect_ms, flow_ms, reason)

    def _lost_in_view(self, shape: tuple[int, int]) -> bool:
        """A lost track is predicted to be (mostly) inside the frame: hidden or missed, so
        worth detecting again at once. A face that left the frame does not ask for the
        detector (it would run on every frame until the track ends)."""
        boxes = self.tracker.lost_boxes()
        if not len(boxes):
            return False
        return bool((_inside(boxes, shape[1], shape[0]) >= _IN_VIEW).any())

    def due_in(self) -> int | None:
        """How many processed frames after the next one the next detection falls on (0: the
        next frame) as far as is known now: the interval, or in auto mode a lost face still
        in view or an uncertain one; None before the first frame. A scene cut cannot be
        foreseen."""
        if self._prev is None:
            return None
        due = max(self._s.every - self._since - 1, 0)
        want = self._want_due_in()
        return due if want is None else min(due, want)

    def _want_due_in(self) -> int | None:
        """How many processed frames after the next one auto mode's wish (``_want``) makes
        the detector run (0: the next frame); None when there is none. A lost face in view is
        looked for on every ``_LOST_EVERY``-th frame, anything else at once."""
        if self._s.mode != IntervalMode.AUTO or not self._want:
            return None
        if self._want == "lost":
            return max(_LOST_EVERY - self._since - 1, 0)
        return 0

    def _due(self, gray: Gray, shape: tuple[int, ...]) -> str:
        """Why the detector runs on this frame ("" when it does not)."""
        small = cv2.resize(
            gray,
            (max(gray.shape[1] // _SMALL, 1), max(gray.shape[0] // _SMALL, 1)),
            interpolation=cv2.INTER_AREA,
        ).astype(np.float32)
        first = self._prev is None or self._prev_shape != shape
        interval = self._since + 1 >= self._s.every
        reason = "first" if first else "interval" if interval else ""
        if not reason and self._s.mode == IntervalMode.AUTO:
            want = self._want_due_in()
            if want == 0:
                reason = self._want
            elif want is None and self._ref_small is not None:
                reason = "scene" if self._scene_changed(small, self._ref_small) else ""
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
