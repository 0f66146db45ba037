"""INT8 calibration data for the TensorRT builder: an ``IInt8EntropyCalibrator2`` fed with
aligned face crops.

Crops come from a ``.npy`` file holding uint8 (n, H, W) aligned gray crops, a directory of
images (png/jpg/bmp/webp) that are aligned face crops (read as gray, resized to the model's
input), or a video file whose faces are detected and aligned by the worker's own detector and
``pipeline.stages.align`` (``pipeline.tools.calibration``, so calibration and parity see exactly what the worker feeds the engine). The calibrator normalises them with the model's ``InputSpec`` and hands
TensorRT one pycuda device buffer per batch (no torch). The calibration table is
cached beside the plans so a rebuild does not recalibrate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.base import InputSpec
from pipeline.core.enums import ColourOrder
from pipeline.core.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".ts")

#: (video, spec, limit) -> aligned uint8 crops (n, H, W)
VideoCropper = Callable[[Path, InputSpec, int], npt.NDArray[np.uint8]]


def resize_crop(img: npt.NDArray[np.uint8], spec: InputSpec) -> npt.NDArray[np.uint8]:
    if img.shape[:2] == (spec.height, spec.width):
        return img
    import cv2

    out = cv2.resize(img, (spec.width, spec.height), interpolation=cv2.INTER_AREA)
    return np.asarray(out, np.uint8)


def _read_image(cv2: Any, path: Path, spec: InputSpec) -> npt.NDArray[np.uint8] | None:
    """An image file in the spec's colour (gray, RGB or BGR); None if unreadable."""
    if spec.colour is ColourOrder.GRAY:
        return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)  # type: ignore[no-any-return]
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None or spec.colour is ColourOrder.BGR:
        return img  # type: ignore[no-any-return]
    return np.ascontiguousarray(img[..., ::-1])


def load_crops(
    source: Path,
    spec: InputSpec,
    limit: int = 512,
    video_crops: VideoCropper | None = None,
) -> npt.NDArray[np.uint8]:
    """Aligned uint8 gray crops (n, H, W) from a ``.npy``, a folder of crop images, or a video.

    A video needs ``video_crops`` (the worker's detector and alignment, supplied by the CLI
    from ``pipeline.tools.calibration``): engines import nothing above ``pipeline.core``.
    """
    source = Path(source)
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        if video_crops is None:
            raise ConfigError(
                f"calibration source {source} is a video: engines cannot detect faces themselves; "
                "use `emotion-stream engines build --calib VIDEO` or pass a .npy or folder of crops"
            )
        return video_crops(source, spec, limit)
    if source.is_file() and source.suffix == ".npy":
        arr = np.load(source)
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
            raise ConfigError(
                f"calibration crops {source} must be uint8 (n, H, W) or (n, H, W, C) in the model's "
                f"colour order, got {arr.dtype} {arr.shape}: re-save them"
            )
        return np.stack([resize_crop(a, spec) for a in arr[:limit]])
    if not source.is_dir():
        raise ConfigError(
            f"crops source {source} is not a .npy of crops, a folder of images or a video: pass one"
        )
    try:
        import cv2
    except ImportError as exc:
        raise MissingDependencyError(
            "opencv-python", "reading calibration images", "pip install opencv-python"
        ) from exc
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    crops = []
    for f in files:
        img = _read_image(cv2, f, spec)
        if img is None:
            logger.warning("skipping unreadable calibration image %s", f)
            continue
        crops.append(resize_crop(np.asarray(img, np.uint8), spec))
    if not crops:
        raise ConfigError(
            f"calibration folder {source} holds no readable images ({', '.join(IMAGE_SUFFIXES)}): add aligned face crops"
        )
    logger.info("calibration: %d crops from %s", len(crops), source)
    return np.stack(crops)


def calibration_batches(
    crops: npt.NDArray[np.uint8], spec: InputSpec, batch_size: int
) -> list[npt.NDArray[np.float32]]:
    """Normalised NCHW float32 batches of exactly ``batch_size`` (the last one padded by repeats)."""
    out = []
    for i in range(0, len(crops), batch_size):
        chunk = crops[i : i + batch_size]
        if len(chunk) < batch_size:
            reps = np.resize(np.arange(len(chunk)), batch_size - len(chunk))
            chunk = np.concatenate([chunk, chunk[reps]])
        out.append(spec.normalise(chunk))
    return out


def make_calibrator(
    trt: Any,
    crops: npt.NDArray[np.uint8],
    spec: InputSpec,
    batch_size: int,
    cache_file: Path | None,
    device_index: int = 0,
) -> Any:
    """An ``trt.IInt8EntropyCalibrator2`` over ``crops`` (built lazily: tensorrt is optional).

    Its one device buffer is a pycuda allocation in the device's primary context (the one
    TensorRT uses); ``get_batch`` runs on the builder's thread, so the context is pushed
    around each copy and popped again.
    """
    from engines.cuda import import_pycuda, primary_context, pushed

    cuda = import_pycuda()
    batches = calibration_batches(crops, spec, batch_size)
    nbytes = batch_size * spec.channels * spec.height * spec.width * 4
    ctx = primary_context(cuda, device_index)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            with pushed(cuda, ctx):
                self.buffer = cuda.mem_alloc(nbytes)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            with pushed(cuda, ctx):
                cuda.memcpy_htod(self.buffer, batches[self.index])
            self.index += 1
            if self.index % 10 == 0 or self.index == len(batches):
                logger.info("calibration batch %d/%d", self.index, len(batches))
            return [int(self.buffer)] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache_file is not None and cache_file.is_file():
                logger.info("using calibration table %s", cache_file)
                return cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_file is not None:
                from engines.cache import atomic_write

                atomic_write(cache_file, bytes(cache))

        def free(self) -> None:
            with pushed(cuda, ctx):
                self.buffer.free()
            ctx.detach()

    return EntropyCalibrator()
