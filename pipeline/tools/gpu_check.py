"""Steps of ``deploy/gpu-check.sh`` that need Python: the 1080p30 clip, detector calibration
frames, and the detector check (build, parity with the CPU detector on real frames, timing).

``python -m pipeline.tools.gpu_check clip --out F`` | ``calib-frames --clip F --out F.npy`` |
``detector --models DIR --clip F --backend tensorrt|onnxruntime --precision P [--calib F.npy]``;
each prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.config import DetectorSettings

logger = logging.getLogger(__name__)


def real_frames(clip: Path, every: int = 10, limit: int = 16) -> list[npt.NDArray[np.uint8]]:
    """BGR frames of ``clip`` (every Nth, at most ``limit``)."""
    import av

    out = []
    with av.open(str(clip)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i % every == 0:
                out.append(np.asarray(f.to_ndarray(format="bgr24"), np.uint8))
            if len(out) >= limit:
                break
    return out


def letterbox_rgb(img: npt.NDArray[np.uint8], hw: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """What InsightFace's SCRFD feeds its network: resized into the top-left, zero padded, RGB."""
    import cv2

    h, w = hw
    scale = min(h / img.shape[0], w / img.shape[1])
    nh, nw = int(img.shape[0] * scale), int(img.shape[1] * scale)
    out = np.zeros((h, w, 3), np.uint8)
    out[:nh, :nw] = cv2.resize(img, (nw, nh))[:, :, ::-1]
    return out


def iou_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9), np.float64)


def _timed(det: Any, frames: list[npt.NDArray[np.uint8]]) -> tuple[list[Any], float]:
    det.detect(frames[0])  # warm
    t0 = time.perf_counter()
    faces = [det.detect(f) for f in frames]
    return faces, 1000 * (time.perf_counter() - t0) / len(frames)


def detector_check(
    models: Path, clip: Path, backend: str, precision: str, calib: Path | None
) -> dict[str, Any]:
    """Build the detector for ``backend``/``precision`` and compare it with the CPU detector."""
    from pipeline.stages.detect import FaceDetector, find_detector

    base = DetectorSettings(model_dir=models)
    if backend == "tensorrt" and calib is not None:  # int8: build the calibrated plan first
        from engines.detector_trt import TensorRTDetectorSession

        w, h = base.input_size
        TensorRTDetectorSession(find_detector(base), (h, w), precision, calib=calib).close()
    cpu = FaceDetector(
        base.model_copy(update={"backend": "onnxruntime", "providers": ("CPUExecutionProvider",)})
    )
    gpu = FaceDetector(base.model_copy(update={"backend": backend, "precision": precision}))
    frames = real_frames(clip)
    ref, cpu_ms = _timed(cpu, frames)
    got, gpu_ms = _timed(gpu, frames)
    same = sum(len(a) == len(b) for a, b in zip(ref, got, strict=True))
    ious = [
        float(iou_matrix(a.xyxy, b.xyxy).max(axis=1).min())
        for a, b in zip(ref, got, strict=True)
        if len(a) and len(b)
    ]
    return {
        "detector": cpu.name,
        "backend": gpu.backend,
        "providers": list(getattr(gpu._model.session, "get_providers", list)()),
        "precision": precision if gpu.backend == "tensorrt" else "fp32",
        "frames": len(frames),
        "frames_same_face_count": same,
        "min_iou": round(min(ious), 4) if ious else None,
        "pass": same == len(frames) and bool(ious) and min(ious) >= 0.95,
        "ms_per_frame": round(gpu_ms, 3),
        "cpu_ms_per_frame": round(cpu_ms, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.tools.gpu_check")
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("clip", help="Write a 1080p30 sample clip.")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--seconds", type=float, default=6.0)
    cf = sub.add_parser("calib-frames", help="Detector int8 calibration frames (.npy).")
    cf.add_argument("--clip", type=Path, required=True)
    cf.add_argument("--out", type=Path, required=True)
    d = sub.add_parser("detector", help="Detector build, parity and timing.")
    d.add_argument("--models", type=Path, default=Path("models"))
    d.add_argument("--clip", type=Path, required=True)
    d.add_argument("--backend", default="tensorrt")
    d.add_argument("--precision", default="fp16")
    d.add_argument("--calib", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if args.step == "clip":
        from pipeline.media.sample import make_sample_clip

        out = make_sample_clip(args.out, seconds=args.seconds, fps=30, size=(1920, 1080))
        result: dict[str, Any] = {"clip": str(out)}
    elif args.step == "calib-frames":
        hw = DetectorSettings().input_size[::-1]
        frames = np.stack([letterbox_rgb(f, (hw[0], hw[1])) for f in real_frames(args.clip, 2, 64)])
        np.save(args.out, frames)
        result = {"calib_frames": str(args.out), "shape": list(frames.shape)}
    else:
        result = detector_check(args.models, args.clip, args.backend, args.precision, args.calib)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
