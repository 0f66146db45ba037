"""Best-face thumbnails of tracks (``--track-thumbnails``, off by default for privacy): the
aligned crop of each track's highest-scoring detection, as a small size-capped JPEG (base64)
for its ``track_end`` event."""

from __future__ import annotations

import base64
import logging

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.events import Thumbnail

logger = logging.getLogger(__name__)

#: Largest JPEG (bytes, before base64) a thumbnail may take; quality steps down to fit.
MAX_THUMBNAIL_BYTES = 4096
_QUALITIES = (85, 70, 55, 40, 25)


def encode_thumbnail(
    crop: npt.NDArray[np.uint8], max_bytes: int = MAX_THUMBNAIL_BYTES
) -> bytes | None:
    """JPEG bytes of ``crop`` at the best quality that fits ``max_bytes``; None if none fits."""
    for q in _QUALITIES:
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, q])
        if ok and buf.size <= max_bytes:
            return buf.tobytes()
    return None


class BestFaces:
    """Per track: the aligned crop with the highest detection score seen so far."""

    def __init__(self, max_bytes: int = MAX_THUMBNAIL_BYTES) -> None:
        self.max_bytes = max_bytes
        self._best: dict[int, tuple[float, int, npt.NDArray[np.uint8]]] = {}

    def update(
        self,
        track_ids: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        crops: npt.NDArray[np.uint8],
        frame_num: int,
    ) -> None:
        for tid, score, crop in zip(track_ids.tolist(), scores.tolist(), crops, strict=True):
            best = self._best.get(tid)
            if best is None or score > best[0]:
                self._best[tid] = (float(score), frame_num, crop.copy())

    def pop(self, track_id: int) -> Thumbnail | None:
        """The ``thumbnail`` object of a ``track_end`` event, and forget the track."""
        best = self._best.pop(track_id, None)
        if best is None:
            return None
        score, frame_num, crop = best
        data = encode_thumbnail(crop, self.max_bytes)
        if data is None:
            logger.debug("track %d: thumbnail over %d bytes, left out", track_id, self.max_bytes)
            return None
        return {
            "jpeg_base64": base64.b64encode(data).decode("ascii"),
            "width": int(crop.shape[1]),
            "height": int(crop.shape[0]),
            "det_score": round(score, 4),
            "frame_num": frame_num,
        }
