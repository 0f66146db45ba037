"""Calibration and parity crops from a video, made by the worker's own detector and alignment.

Lives above ``engines`` so that engines import nothing but ``pipeline.core``; the CLI hands
``video_cropper(...)`` to ``engines.calibrate.load_crops``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.base import InputSpec
from engines.calibrate import VideoCropper
from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)


def crops_from_video(
    video: Path,
    spec: InputSpec,
    limit: int = 512,
    every: int = 3,
    detector: Any = None,
    detector_dir: Path | None = None,
) -> npt.NDArray[np.uint8]:
    """Detect and align the faces of every ``every``-th frame of ``video`` (the worker's path)."""
    import av

    from pipeline.stages.align import align_faces

    if detector is None:
        from pipeline.core.config import DetectorSettings
        from pipeline.stages.detect import FaceDetector

        settings = (
            DetectorSettings() if detector_dir is None else DetectorSettings(model_dir=detector_dir)
        )
        detector = FaceDetector(settings)
    if spec.height != spec.width:
        raise ConfigError(
            f"aligned crops are square; the model wants {spec.height}x{spec.width}: pass a .npy of crops"
        )
    crops: list[npt.NDArray[np.uint8]] = []
    n = 0
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % every:
                continue
            img = np.asarray(frame.to_ndarray(format="bgr24"), np.uint8)
            faces = detector.detect(img)
            if len(faces):
                crops.append(align_faces(img, faces, spec.crop))
                n += len(faces)
            if n >= limit:
                break
    if not crops:
        raise ConfigError(
            f"no faces found in {video}: pass a video with faces, a folder of crops or a .npy"
        )
    out = np.concatenate(crops)[:limit]
    logger.info("%d aligned face crops from %s", len(out), video)
    return out


def video_cropper(every: int = 3, detector_dir: Path | None = None) -> VideoCropper:
    """A ``load_crops`` video callback that detects with the worker's detector."""
    return partial(_crops, every=every, detector_dir=detector_dir)


def _crops(
    video: Path, spec: InputSpec, limit: int, every: int, detector_dir: Path | None
) -> npt.NDArray[np.uint8]:
    return crops_from_video(video, spec, limit, every=every, detector_dir=detector_dir)
