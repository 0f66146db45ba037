"""Face detection through InsightFace's SCRFD runner, on a model file from the models folder.

Which file: ``DetectorSettings.model_file`` if set; else a real SCRFD ``det_*.onnx`` in
``model_dir`` (preferred: det_10g, det_2.5g, det_500m, then any other, by name); else the
bootstrapped ``scrfd_retinaface_mnet025.onnx``. Loading goes through
``insightface.model_zoo.get_model(path)``, which never downloads for an existing path.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from pipeline.core.config import DetectorSettings
from pipeline.core.errors import MissingDependencyError, ModelError
from pipeline.core.types import Faces

logger = logging.getLogger(__name__)

DEFAULT_DETECTOR = "scrfd_retinaface_mnet025.onnx"
PREFERRED_SCRFD = ("det_10g.onnx", "det_2.5g.onnx", "det_500m.onnx")
#: Output counts of InsightFace's SCRFD layouts (3 or 5 strides, with or without keypoints).
SCRFD_OUTPUT_COUNTS = (6, 9, 10, 15)
_FIX = "use an InsightFace SCRFD det_*.onnx or run `emotion-stream models bootstrap --dir {dir}`"


def find_detector(settings: DetectorSettings) -> Path:
    """The detector file the settings select; ``ModelError`` when there is none."""
    if settings.model_file is not None:
        path = Path(settings.model_file)
        if not path.is_file():
            raise ModelError(
                f"detector model {path} does not exist: {_FIX.format(dir=path.parent)}"
            )
        return path
    folder = Path(settings.model_dir)
    if folder.is_dir():
        real = sorted(folder.glob("det_*.onnx"), key=lambda p: (_preference(p.name), p.name))
        if real:
            return real[0]
        default = folder / DEFAULT_DETECTOR
        if default.is_file():
            return default
    raise ModelError(
        f"no face detector in {folder}: run `emotion-stream models bootstrap --dir {folder}` "
        "(or put an InsightFace det_*.onnx there)"
    )


def _preference(name: str) -> int:
    return PREFERRED_SCRFD.index(name) if name in PREFERRED_SCRFD else len(PREFERRED_SCRFD)


def check_scrfd_layout(path: Path) -> None:
    """``ModelError`` unless ``path`` is an ONNX with SCRFD's input and output layout."""
    import onnx

    fix = _FIX.format(dir=path.parent)
    if path.suffix.lower() != ".onnx":
        raise ModelError(f"detector model {path} is not an .onnx file: {fix}")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"detector model {path} is not a readable ONNX file ({type(exc).__name__}): {fix}"
        ) from exc
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(inputs[0].type.tensor_type.shape.dim) != 4:
        raise ModelError(
            f"detector model {path} does not take one NCHW image input, so it is not SCRFD: {fix}"
        )
    channels = inputs[0].type.tensor_type.shape.dim[1].dim_value
    n_out = len(graph.output)
    if channels not in (0, 3) or n_out not in SCRFD_OUTPUT_COUNTS:
        raise ModelError(
            f"detector model {path} has {n_out} outputs and {channels or '?'} input channels, not InsightFace's "
            f"SCRFD layout (3 channels; 6, 9, 10 or 15 outputs): {fix}"
        )
    fmc = 3 if n_out in (6, 9) else 5
    for i, out in enumerate(graph.output):
        dims = out.type.tensor_type.shape.dim
        want = (1, 4, 10)[i // fmc]
        if dims and dims[-1].dim_value not in (0, want):
            raise ModelError(
                f"detector model {path} output {out.name!r} has width {dims[-1].dim_value}, SCRFD's has {want}: {fix}"
            )


def resolve_providers(requested: tuple[str, ...]) -> list[str]:
    """Requested providers, or TensorRT (when its libraries import), CUDA, then CPU."""
    if requested:
        return list(requested)
    import importlib.util

    import onnxruntime as ort

    available = set(ort.get_available_providers())
    if importlib.util.find_spec("tensorrt") is None:  # ORT's TensorRT EP needs TensorRT's libraries
        available.discard("TensorrtExecutionProvider")
    order = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in order if p in available] or ["CPUExecutionProvider"]


class FaceDetector:
    """SCRFD face detector shared by all stream threads (calls are serialised by a lock)."""

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.path = find_detector(settings)
        self.name = self.path.stem
        check_scrfd_layout(self.path)
        self._model = self._load()
        self._lock = threading.Lock()
        logger.info("face detector %s (%s) input %s", self.name, self.path, settings.input_size)

    def _load(self) -> Any:
        try:
            from insightface.model_zoo import get_model  # type: ignore[import-untyped]
            from insightface.model_zoo.scrfd import SCRFD  # type: ignore[import-untyped]
        except ImportError as exc:
            raise MissingDependencyError(
                "insightface", "face detection", "pip install insightface"
            ) from exc
        providers = resolve_providers(self.settings.providers)
        fix = _FIX.format(dir=self.path.parent)
        try:
            model = get_model(str(self.path), providers=providers)
        except Exception as exc:
            raise ModelError(
                f"detector model {self.path} cannot be loaded ({type(exc).__name__}: {exc}): {fix}"
            ) from exc
        if not isinstance(model, SCRFD):
            raise ModelError(
                f"detector model {self.path} is a {type(model).__name__} model, not an SCRFD detector: {fix}"
            )
        ctx_id = 0 if "CUDAExecutionProvider" in providers else -1
        model.prepare(
            ctx_id=ctx_id,
            input_size=tuple(self.settings.input_size),
            det_thresh=self.settings.score_threshold,
            nms_thresh=self.settings.nms_threshold,
        )
        self.backend = _use_tensorrt_if_chosen(model, self.path, self.settings)
        return model

    def detect(self, image: npt.NDArray[np.uint8]) -> Faces:
        """Faces in an HxWx3 uint8 BGR image (empty image: no faces)."""
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            shape = getattr(image, "shape", None)
            dtype = getattr(image, "dtype", type(image).__name__)
            raise ValueError(
                f"FaceDetector.detect needs an HxWx3 uint8 BGR image, got {shape} {dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            return Faces.empty()
        with self._lock:
            det, kps = self._model.detect(image)
        if det is None or len(det) == 0:
            return Faces.empty()
        det = np.asarray(det, np.float32)
        if kps is None:
            kps = _box_keypoints(det[:, :4])
        wh = np.minimum(det[:, 2] - det[:, 0], det[:, 3] - det[:, 1])
        keep = wh >= self.settings.min_face_px
        return Faces.create(det[keep, :4], det[keep, 4], np.asarray(kps, np.float32)[keep])


def _use_tensorrt_if_chosen(model: Any, path: Path, settings: DetectorSettings) -> str:
    """Hook: run the detector as a TensorRT plan (``engines.detector_trt``) when chosen."""
    from engines.detector_trt import attach_tensorrt, detector_backend

    name, why = detector_backend(str(settings.backend))
    logger.info("face detector backend: %s (%s)", name, why)
    if name == "tensorrt":
        attach_tensorrt(model, path, settings.input_size, precision=settings.precision)
    return name


#: Mean 5-point positions inside a face box (fractions of width/height), for models without kps.
_BOX_KPS = np.array([[0.32, 0.4], [0.68, 0.4], [0.5, 0.58], [0.36, 0.77], [0.64, 0.77]], np.float32)


def _box_keypoints(xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    wh = (xyxy[:, 2:4] - xyxy[:, 0:2])[:, None, :]
    return (xyxy[:, None, 0:2] + _BOX_KPS[None] * wh).astype(np.float32)
