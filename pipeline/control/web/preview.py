"""Live previews of the web view.

``PreviewHub`` is the stream runners' observer: ``offer`` only stores a reference to the
newest ``FrameResult`` of each stream (one slot per stream, overwritten, so a view that falls
behind drops frames and never holds the pipeline back). Annotating and JPEG encoding happen
only when a watcher asks for a picture, on the view's own single annotation thread, and one
encoded frame is shared by every watcher of that stream.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.types import EMOTIONS, FrameResult

logger = logging.getLogger(__name__)

#: BGR colour per emotion, in ``EMOTIONS`` order (also used by the page's legend).
EMOTION_COLORS: dict[str, tuple[int, int, int]] = {
    "angry": (60, 60, 230),
    "disgust": (60, 160, 90),
    "fear": (180, 90, 150),
    "happy": (40, 200, 250),
    "sad": (200, 130, 40),
    "surprise": (230, 110, 230),
    "neutral": (190, 190, 190),
}


def css_color(label: str) -> str:
    b, g, r = EMOTION_COLORS[label]
    return f"#{r:02x}{g:02x}{b:02x}"


def blur_faces(image: npt.NDArray[np.uint8], xyxy: npt.NDArray[np.float32]) -> None:
    """Blur each face box in place, strongly enough that nobody can be recognised."""
    h, w = image.shape[:2]
    boxes = np.round(xyxy).astype(int)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    for x1, y1, x2, y2 in boxes.tolist():
        if x2 - x1 < 2 or y2 - y1 < 2:
            continue
        roi = image[y1:y2, x1:x2]
        small = cv2.resize(roi, (max(1, (x2 - x1) // 12), max(1, (y2 - y1) // 12)))
        image[y1:y2, x1:x2] = cv2.GaussianBlur(
            cv2.resize(small, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR), (0, 0), 3
        )


def _put_label(
    image: npt.NDArray[np.uint8], text: str, x: int, y: int, color: tuple[int, ...]
) -> None:
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, image.shape[0] / 1100)
    thick = 1 if scale < 0.7 else 2
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    top = max(0, y - th - base - 6)
    cv2.rectangle(image, (x, top), (x + tw + 8, top + th + base + 6), color, -1)
    cv2.putText(image, text, (x + 4, top + th + 3), font, scale, (20, 20, 20), thick, cv2.LINE_AA)


def annotate(result: FrameResult, blur: bool = False) -> npt.NDArray[np.uint8]:
    """A copy of the frame with each face's box, track id, smoothed emotion label and score."""
    image = result.frame.image.copy()
    faces = result.faces
    if blur and len(faces):
        blur_faces(image, faces.xyxy)
    probs = result.smoothed.probs if len(result.smoothed) == len(faces) else result.emotions.probs
    thick = max(2, image.shape[0] // 270)
    for i in range(len(faces)):
        x1, y1, x2, y2 = np.round(faces.xyxy[i]).astype(int).tolist()
        k = int(np.argmax(probs[i])) if len(probs) else EMOTIONS.index("neutral")
        label = EMOTIONS[k]
        color = EMOTION_COLORS[label]
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
        score = float(probs[i][k]) if len(probs) else 0.0
        _put_label(image, f"#{int(faces.track_id[i])} {label} {score:.2f}", x1, y1, color)
    return image


class PreviewHub:
    """Latest result per stream (the observer) and JPEGs encoded on demand."""

    def __init__(self, blur: bool = False, jpeg_quality: int = 80) -> None:
        self.blur = blur
        self.jpeg_quality = jpeg_quality
        self._latest: dict[str, FrameResult] = {}
        self._encoded: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self.encoded_frames = 0
        #: seconds spent annotating and encoding (the view's whole per-frame cost)
        self.encode_s = 0.0
        self.watchers: dict[str, int] = {}
        #: the view's own thread: annotation and encoding never run on a stream thread
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="view-annotate")

    def offer(self, result: FrameResult) -> None:
        """Called by a stream thread: O(1), never blocks on the view."""
        self._latest[result.frame.stream_id] = result

    def stream_ids(self) -> list[str]:
        return list(self._latest)

    def latest(self, stream_id: str) -> FrameResult | None:
        return self._latest.get(stream_id)

    def forget(self, stream_id: str) -> None:
        self._latest.pop(stream_id, None)
        with self._lock:
            self._encoded.pop(stream_id, None)

    def jpeg(self, stream_id: str) -> bytes | None:
        """The newest annotated frame as JPEG (re-encoded only when a newer frame arrived)."""
        result = self._latest.get(stream_id)
        if result is None:
            return None
        num = result.frame.frame_num
        with self._lock:
            cached = self._encoded.get(stream_id)
        if cached is not None and cached[0] == num:
            return cached[1]
        t0 = time.perf_counter()
        image = annotate(result, self.blur)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        self.encode_s += time.perf_counter() - t0
        if not ok:
            logger.warning("stream %s: JPEG encoding of frame %d failed", stream_id, num)
            return None
        data = buf.tobytes()
        with self._lock:
            self._encoded[stream_id] = (num, data)
            self.encoded_frames += 1
        return data

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
