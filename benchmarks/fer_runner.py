"""Runs the peer, ``fer`` 25.10.3 (MTCNN + mini-Xception), on a clip inside ``.venv-fer``.

Usage: .venv-fer/bin/python benchmarks/fer_runner.py CLIP OUT.jsonl [MAX_FRAMES]
Writes one line per frame ``{"frame_num", "boxes": [[x1, y1, x2, y2], ...], "labels"}`` and
prints a JSON summary (frames/s over decode + detect_emotions, model load excluded).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch  # noqa: F401  (torch before TensorFlow: the other order crashes in this stack)


def main() -> int:
    import cv2
    from fer.fer import FER  # `from fer import FER` fails in 25.10.3

    clip, out = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
    t_load = time.perf_counter()
    detector = FER(mtcnn=True)
    load_s = time.perf_counter() - t_load
    cap = cv2.VideoCapture(clip)
    n, faces = 0, 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    with open(out, "w") as f:
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                break
            found = detector.detect_emotions(frame)
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["box"] for r in found)]
            labels = [max(r["emotions"], key=r["emotions"].get) for r in found]
            f.write(json.dumps({"frame_num": n, "boxes": boxes, "labels": labels}) + "\n")
            n += 1
            faces += len(found)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    print(
        json.dumps(
            {
                "frames": n,
                "faces": faces,
                "seconds": round(dt, 3),
                "cpu_seconds": round(cpu, 3),
                "frames_per_s": round(n / max(dt, 1e-9), 2),
                "load_s": round(load_s, 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
