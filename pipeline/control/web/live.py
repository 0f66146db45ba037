"""Recent per-stream figures for the web view: frames/s over the last few seconds and the
emotion mix of the last minute, from once-a-second samples of the worker's cumulative
counters (no bookkeeping is added to the stream threads)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from pipeline.core.types import EMOTIONS

logger = logging.getLogger(__name__)

Sample = tuple[float, dict[str, dict[str, Any]]]


def _state(s: dict[str, Any]) -> str:
    if s.get("state"):
        return str(s["state"])
    if not s.get("done"):
        return "running"
    return "error" if s.get("error") else str(s.get("end_reason") or "ended")


class LiveStats:
    """Samples ``stats()`` every ``period_s`` on its own daemon thread, keeps ``window_s``."""

    def __init__(
        self,
        stats: Callable[[], Any],
        window_s: float = 60.0,
        period_s: float = 1.0,
        fps_window_s: float = 5.0,
    ) -> None:
        self._stats = stats
        self._period = period_s
        self._fps_window = fps_window_s
        self._samples: deque[Sample] = deque(maxlen=int(window_s / period_s) + 1)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="view-stats", daemon=True)

    def start(self) -> LiveStats:
        self.sample()
        self._thread.start()
        return self

    def close(self) -> None:
        self._halt.set()

    def _run(self) -> None:
        while not self._halt.wait(self._period):
            try:
                self.sample()
            except Exception:
                logger.exception("view: worker stats failed")

    def _current(self) -> dict[str, dict[str, Any]]:
        """stream id -> its stats as a plain record (``WorkerStats`` or an equivalent dict)."""
        st = self._stats()
        if isinstance(st, dict):
            return dict(st.get("streams", {}))
        return {sid: s.as_dict() for sid, s in st.streams.items()}

    def sample(self) -> dict[str, dict[str, Any]]:
        streams = self._current()
        with self._lock:
            self._samples.append((time.monotonic(), streams))
        return streams

    def _baseline(self, sid: str, now: float, age_s: float) -> Sample | None:
        """The oldest sample holding ``sid`` that is at most ``age_s`` old."""
        with self._lock:
            samples = list(self._samples)
        for t, streams in samples:
            if now - t <= age_s + 1e-6 and sid in streams:
                return t, streams
        return None

    def _first_with(self, sid: str) -> dict[str, dict[str, Any]] | None:
        with self._lock:
            return next((st for _, st in self._samples if sid in st), None)

    def streams(self) -> dict[str, dict[str, Any]]:
        """Per stream: the latest stats plus ``state``, ``fps_recent`` and ``emotions_last_minute``."""
        now = time.monotonic()
        current = self._current()  # not kept
        out: dict[str, dict[str, Any]] = {}
        for sid, s in current.items():
            item = dict(s)
            item["state"] = _state(s)
            fps_base = self._baseline(sid, now, self._fps_window)
            item["fps_recent"] = s.get("fps", 0.0)
            if fps_base is not None and now - fps_base[0] >= 0.5:
                old = fps_base[1][sid]
                item["fps_recent"] = (s["processed"] - old["processed"]) / (now - fps_base[0])
            minute = self._baseline(sid, now, 60.0)
            recent: Counter[str] = Counter(s.get("emotions", {}))
            with self._lock:
                rolled = len(self._samples) == self._samples.maxlen
            first_seen = minute is not None and minute[1] is self._first_with(sid)
            if minute is not None and minute[0] < now - 0.5 and (rolled or not first_seen):
                recent.subtract(minute[1][sid].get("emotions", {}))
            item["emotions_last_minute"] = {n: max(0, recent.get(n, 0)) for n in EMOTIONS}
            out[sid] = item
        return out
