"""Per-track temporal smoothing of emotion probabilities (exponential moving average)."""

from __future__ import annotations

import numpy as np

from pipeline.core.types import Emotions, Faces


class EmaSmoother:
    """EMA over each track's probabilities: s = alpha * p + (1 - alpha) * s_prev.

    One per stream; tracks are forgotten when they end.
    """

    def __init__(self, alpha: float) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self._alpha = float(alpha)
        self._state: dict[int, np.ndarray] = {}

    def update(self, faces: Faces, emotions: Emotions) -> Emotions:
        out = np.empty_like(emotions.probs)
        for i, tid in enumerate(faces.track_id.tolist()):
            p = emotions.probs[i]
            prev = self._state.get(tid)
            s = p if prev is None else self._alpha * p + (1.0 - self._alpha) * prev
            self._state[tid] = s
            out[i] = s
        return Emotions(out.astype(np.float32))

    def forget(self, track_ids: list[int]) -> None:
        for tid in track_ids:
            self._state.pop(tid, None)
