"""Thread counts for the two ONNX Runtime sessions of a worker, chosen for the machine.

The detector is the heavy model and runs on the stream threads (serialised by its lock or
batched); the emotion model is small and runs on the micro-batcher's thread while stream
threads decode, track and detect the next frames. Leaving both at ONNX Runtime's default
(one thread per core each, busy-waiting) makes them fight over the same cores; here the
detector gets every core the process may use and the emotion engine one thread (two from
8 cores up), and the detector's pool does not spin.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    cores: int
    detector: int
    emotion: int


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan_threads(detector: int = 0, emotion: int = 0, cores: int | None = None) -> ThreadPlan:
    """Explicit counts win; 0 picks: detector = cores, emotion = 1 (2 from 8 cores)."""
    n = cores or usable_cores()
    return ThreadPlan(n, detector or n, emotion or (1 if n < 8 else 2))


def single_thread_opencv() -> None:
    """OpenCV calls in the worker (flow, warps, resizes) are small and run on stream threads,
    which already give the parallelism; OpenCV's own pool (a thread per core) only adds
    hand-offs to threads that compete with the models for the same cores."""
    import cv2

    cv2.setNumThreads(1)


#: glibc ``mallopt`` parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 512 * 1024) -> bool:
    """Serve allocations of ``mmap_threshold`` bytes and up (decoded frames, blobs) with mmap,
    so freeing one returns it to the OS at once. glibc otherwise raises the threshold after
    the first free and keeps frame-sized blocks in each thread's heap (about 50 MB of peak
    RSS on a 720p stream). False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold)
    except (OSError, AttributeError):
        return False
    return ok
