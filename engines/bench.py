"""Engine speed: per backend, precision and batch size, faces/s, latency p50/p99 per batch call,
CPU % of this process, peak RSS and the speed-up over batch 1. Progress lines go to stderr."""

from __future__ import annotations

import logging
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engines.base import Engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BenchRow:
    backend: str
    precision: str
    device: str
    batch: int
    iters: int
    images_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_percent: float
    peak_rss_mb: float
    speedup_vs_b1: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    t = resource.getrusage(resource.RUSAGE_SELF)
    return t.ru_utime + t.ru_stime


def bench_engine(
    engine: Engine,
    batch_sizes: list[int],
    iters: int = 50,
    warmup: int = 3,
    min_seconds: float = 0.0,
    device: str = "",
) -> list[BenchRow]:
    """Time ``engine.infer`` at each batch size (``iters`` calls, or more until ``min_seconds``)."""
    spec = engine.input_spec
    rng = np.random.default_rng(0)
    rows: list[BenchRow] = []
    base: float | None = None
    for b in sorted(set(batch_sizes)):
        x = rng.integers(0, 256, (b, spec.height, spec.width), dtype=np.uint8)
        for _ in range(warmup):
            engine.infer(x)
        lat: list[float] = []
        c0, t0 = _cpu_seconds(), time.perf_counter()
        while len(lat) < iters or (time.perf_counter() - t0) < min_seconds:
            s = time.perf_counter()
            engine.infer(x)
            lat.append(time.perf_counter() - s)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        ips = b * len(lat) / wall
        if b == 1:
            base = ips
        row = BenchRow(
            backend=engine.name,
            precision=engine.precision,
            device=device,
            batch=b,
            iters=len(lat),
            images_per_s=round(ips, 1),
            p50_ms=round(float(np.percentile(lat, 50)) * 1000, 3),
            p99_ms=round(float(np.percentile(lat, 99)) * 1000, 3),
            cpu_percent=round(100 * cpu / wall, 1),
            peak_rss_mb=round(peak_rss_mb(), 1),
            speedup_vs_b1=round(ips / base, 2) if base else None,
        )
        rows.append(row)
        print(
            f"bench {row.backend} {row.precision} batch {b}: {row.images_per_s:.0f} faces/s, "
            f"p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, cpu {row.cpu_percent:.0f}%",
            file=sys.stderr,
            flush=True,
        )
    return rows
