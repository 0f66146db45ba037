"""The canonical, validated, vectorised types that flow between pipeline stages.

One type per stage: ``Frame`` (decoded picture + timing; the picture is ``Pixels``, converted
to BGR or gray on first use), ``Faces`` (parallel arrays),
``Emotions`` (probabilities in the fixed FER-2013 class order).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt

from pipeline.core.enums import ColourOrder

#: FER-2013 class order, used everywhere (model outputs, events, Redis, training).
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_EMOTIONS = len(EMOTIONS)

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


Image = npt.NDArray[np.uint8]


class Pixels:
    """One decoded picture, converted on first use and at most once per form (thread-safe).

    ``bgr()`` is HxWx3 uint8 BGR (the detector, the view, colour crops). ``luma()`` is HxW
    uint8 brightness as the decoder stored it (the Y plane: free), in limited range
    (16..235) when ``limited`` is true; ``gray()`` is full-range gray. Optical flow does not
    care about the range and reads ``luma()``; gray crops are warped from ``luma()`` and
    stretched afterwards (``stretch``), which is cheaper than stretching the whole frame. A
    frame whose BGR nobody asks for (every frame the detector skips, when the emotion model
    is gray) is never colour-converted: about 2 ms per 720p frame saved.
    """

    __slots__ = (
        "_bgr",
        "_gray",
        "_lock",
        "_luma",
        "_to_bgr",
        "_to_luma",
        "height",
        "limited",
        "width",
    )

    def __init__(
        self,
        width: int,
        height: int,
        to_bgr: Callable[[], Image],
        to_luma: Callable[[], Image] | None = None,
        limited: bool = False,
    ) -> None:
        self.width, self.height = int(width), int(height)
        self._to_bgr = to_bgr
        self._to_luma = to_luma
        #: luma() is limited range (16..235): stretch it for full-range gray.
        self.limited = bool(limited and to_luma is not None)
        self._bgr: Image | None = None
        self._luma: Image | None = None
        self._gray: Image | None = None
        self._lock = threading.Lock()

    @classmethod
    def of_bgr(cls, image: Image) -> Pixels:
        """An already converted HxWx3 uint8 BGR image."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"a frame image must be HxWx3 uint8 BGR, got {image.shape} {image.dtype}"
            )
        px = cls(image.shape[1], image.shape[0], lambda: image)
        px._bgr = image
        return px

    def bgr(self) -> Image:
        if self._bgr is None:
            with self._lock:
                if self._bgr is None:
                    self._bgr = self._checked(self._to_bgr(), 3)
        return self._bgr

    def luma(self) -> Image:
        if self._luma is None:
            if self._to_luma is None:
                import cv2

                luma = cast(Image, cv2.cvtColor(self.bgr(), cv2.COLOR_BGR2GRAY))
            else:
                luma = self._to_luma()
            with self._lock:
                if self._luma is None:
                    self._luma = self._checked(luma, 0)
        return self._luma

    def gray(self) -> Image:
        if self._gray is None:
            gray = self.stretch(self.luma())
            with self._lock:
                self._gray = self._gray if self._gray is not None else gray
        return self._gray

    def stretch(self, luma: Image) -> Image:
        """Pixels cut from ``luma()`` in full range (a no-op unless ``limited``)."""
        if not self.limited:
            return luma
        return _LIMITED_TO_FULL[luma]

    @property
    def converted(self) -> bool:
        """Whether BGR has been made (for tests and the bench's accounting)."""
        return self._bgr is not None

    def _checked(self, image: Image, channels: int) -> Image:
        want = (self.height, self.width, channels) if channels else (self.height, self.width)
        if image.shape != want or image.dtype != np.uint8:
            raise ValueError(
                f"decoded picture is {image.shape} {image.dtype}, expected {want} uint8"
            )
        return image


#: Limited-range (MPEG) luma 16..235 to full-range gray 0..255, saturated.
_LIMITED_TO_FULL: Image = np.clip(np.round((np.arange(256) - 16.0) * 255.0 / 219.0), 0, 255).astype(
    np.uint8
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame of one stream.

    ``pixels`` is the picture (``Pixels``, or an HxWx3 uint8 BGR array, which is wrapped);
    ``image`` is its BGR and ``gray`` its gray, each converted on first use. ``pts`` is media time in seconds (None if the container
    has none); ``wall_ts`` is the capture wall clock (UNIX seconds) for live sources and
    ``stream start + pts`` for files. ``frame_num`` counts decoded frames of the stream and
    keeps counting across loops and reconnects, so (stream_id, frame_num) is unique.
    """

    stream_id: str
    frame_num: int
    pts: float | None
    wall_ts: float
    pixels: Pixels | Image = field(repr=False)
    #: time.time() when the decoder produced the frame; latency is measured from here.
    decoded_at: float = 0.0
    #: Capture epoch: 0 for files (replays keep their ids), the capture's start time in ms
    #: for live sources (each connection is a new capture), so ids never repeat.
    epoch: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, Pixels):
            object.__setattr__(self, "pixels", Pixels.of_bgr(np.asarray(self.pixels)))
        if self.frame_num < 0:
            raise ValueError("Frame.frame_num must be >= 0")
        if self.epoch < 0:
            raise ValueError("Frame.epoch must be >= 0")

    @property
    def picture(self) -> Pixels:
        return cast(Pixels, self.pixels)

    @property
    def image(self) -> Image:
        """HxWx3 uint8 BGR (converted on first use)."""
        return self.picture.bgr()

    @property
    def gray(self) -> Image:
        """HxW uint8 full-range gray (from the luma plane where the decoder gave one)."""
        return self.picture.gray()

    @property
    def width(self) -> int:
        return self.picture.width

    @property
    def height(self) -> int:
        return self.picture.height


@dataclass(frozen=True, slots=True)
class Faces:
    """Detected faces of one frame as parallel arrays.

    xyxy (n,4) float32 source pixels; score (n,) float32; kps (n,5,2) float32 (left eye,
    right eye, nose, left mouth corner, right mouth corner); track_id (n,) int64, -1 when
    not yet tracked.
    """

    xyxy: FloatArray
    score: FloatArray
    kps: FloatArray
    track_id: IntArray

    def __post_init__(self) -> None:
        n = self.xyxy.shape[0]
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"Faces.xyxy must be (n,4), got {self.xyxy.shape}")
        if self.score.shape != (n,):
            raise ValueError(f"Faces.score must be ({n},), got {self.score.shape}")
        if self.kps.shape != (n, 5, 2):
            raise ValueError(f"Faces.kps must be ({n},5,2), got {self.kps.shape}")
        if self.track_id.shape != (n,):
            raise ValueError(f"Faces.track_id must be ({n},), got {self.track_id.shape}")

    @classmethod
    def create(
        cls,
        xyxy: npt.ArrayLike,
        score: npt.ArrayLike,
        kps: npt.ArrayLike,
        track_id: npt.ArrayLike | None = None,
    ) -> Faces:
        xy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
        n = xy.shape[0]
        tid = np.full(n, -1, np.int64) if track_id is None else np.asarray(track_id, np.int64)
        return cls(
            xyxy=xy,
            score=np.asarray(score, dtype=np.float32).reshape(n),
            kps=np.asarray(kps, dtype=np.float32).reshape(n, 5, 2),
            track_id=tid.reshape(n),
        )

    @classmethod
    def empty(cls) -> Faces:
        return cls.create(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

    def __len__(self) -> int:
        return int(self.xyxy.shape[0])

    def with_track_ids(self, track_id: npt.ArrayLike) -> Faces:
        return Faces.create(self.xyxy, self.score, self.kps, track_id)

    def select(self, index: npt.ArrayLike) -> Faces:
        idx = np.asarray(index)
        return Faces(self.xyxy[idx], self.score[idx], self.kps[idx], self.track_id[idx])


@dataclass(frozen=True, slots=True)
class Emotions:
    """Per-face emotion probabilities, (n,7) float32 in ``EMOTIONS`` order, rows sum to 1."""

    probs: FloatArray

    def __post_init__(self) -> None:
        if self.probs.ndim != 2 or self.probs.shape[1] != NUM_EMOTIONS:
            raise ValueError(f"Emotions.probs must be (n,{NUM_EMOTIONS}), got {self.probs.shape}")

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    @property
    def label_index(self) -> IntArray:
        return np.argmax(self.probs, axis=1).astype(np.int64)

    def labels(self) -> list[str]:
        return [EMOTIONS[i] for i in self.label_index]


@dataclass(frozen=True, slots=True)
class FrameResult:
    """A processed frame: its faces (with track ids), their emotions and smoothed emotions."""

    frame: Frame
    faces: Faces
    emotions: Emotions
    smoothed: Emotions
    ended_tracks: tuple[int, ...] = ()
    #: (n,) bool per face: True when its box came from the detector on this frame, False when
    #: the tracker carried it (detection interval); None: every face was detected.
    detected: npt.NDArray[np.bool_] | None = None


@dataclass
class TrackSummary:
    """What a track_end event reports about a track."""

    first_frame: int
    last_frame: int
    first_ts: float
    last_ts: float
    first_pts: float | None
    last_pts: float | None
    faces: int = 0
    labels: Counter[str] = field(default_factory=Counter)

    def add(self, frame: Frame, label: str) -> None:
        self.last_frame, self.last_ts, self.last_pts = frame.frame_num, frame.wall_ts, frame.pts
        self.faces += 1
        self.labels[label] += 1


@dataclass(frozen=True, slots=True)
class CropSpec:
    """What alignment must produce for the classifier: ``height`` x ``width`` (not necessarily
    square) in ``colour`` order; uint8 (n, H, W) for gray, (n, H, W, 3) for RGB/BGR."""

    height: int
    width: int
    colour: ColourOrder = ColourOrder.GRAY

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"CropSpec size must be positive, got {self.height}x{self.width}")

    def shape(self, n: int) -> tuple[int, ...]:
        """The uint8 array shape of ``n`` crops."""
        if self.colour is ColourOrder.GRAY:
            return (n, self.height, self.width)
        return (n, self.height, self.width, 3)
