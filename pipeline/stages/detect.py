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

import cv2
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


def canvas_size(image_hw: tuple[int, int], settings: DetectorSettings) -> tuple[int, int]:
    """Detector input (width, height) for a frame of ``image_hw``: ``input_size``, or with
    ``fit_aspect`` the frame at ``min(max_scale, fit into input_size)``, each side rounded up
    to a multiple of 32."""
    w_max, h_max = settings.input_size
    if not settings.fit_aspect:
        return w_max, h_max
    h, w = image_hw
    scale = min(w_max / w, h_max / h, settings.max_scale)
    return min(_up32(w * scale), _up32(w_max)), min(_up32(h * scale), _up32(h_max))


def _up32(v: float) -> int:
    return max(32, int(np.ceil(v / 32.0)) * 32)


def ort_session_options(threads: int) -> Any:
    """Session options with ``threads`` intra-op threads and no busy-wait spinning (spinning
    threads steal the cores the other stages run on)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = False  # the arena keeps every batch size's peak: RSS
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class FaceDetector:
    """SCRFD face detector shared by all stream threads (calls are serialised by a lock).

    ``detect_batch`` runs many frames through one session call when the graph has a dynamic
    batch axis (the bootstrapped one does) and decodes all of them at once in numpy; it gives
    the same boxes as InsightFace's per-image ``SCRFD.detect``.
    """

    def __init__(self, settings: DetectorSettings, threads: int | None = None) -> None:
        self.settings = settings
        self.path = find_detector(settings)
        self.name = self.path.stem
        self.threads = threads if threads is not None else settings.threads
        check_scrfd_layout(self.path)
        self._model = self._load()
        if self.backend == "tensorrt" and settings.fit_aspect:
            # a TensorRT plan is built for one input size: letterbox every frame into it
            logger.info("TensorRT detector: frames letterboxed into %s", settings.input_size)
            self.settings = settings.model_copy(update={"fit_aspect": False})
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        #: faces beyond ``max_faces`` in a frame, dropped (the lowest-scoring ones)
        self.faces_capped = 0
        self._centres: dict[tuple[int, int, int], npt.NDArray[np.float32]] = {}
        self.batched = bool(getattr(self._model, "batched", False)) and _dynamic_batch(
            self._model.session
        )
        logger.info(
            "face detector %s (%s) input %s, fit_aspect=%s, %s threads, batched=%s",
            self.name,
            self.path,
            settings.input_size,
            self.settings.fit_aspect,
            self.threads or "default",
            self.batched,
        )

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
            model = get_model(
                str(self.path),
                providers=providers,
                sess_options=ort_session_options(self.threads),
            )
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
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[npt.NDArray[np.uint8]]) -> list[Faces]:
        """Faces of each image; images that share a detector canvas go through one call."""
        for image in images:
            _check_image(image)
        out: list[Faces] = [Faces.empty()] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if image.shape[0] and image.shape[1]:
                groups.setdefault(canvas_size(image.shape[:2], self.settings), []).append(i)
        for canvas, idx in groups.items():
            step = len(idx) if self.batched else 1
            for k in range(0, len(idx), step):
                chunk = idx[k : k + step]
                for i, faces in zip(
                    chunk, self._detect_group([images[i] for i in chunk], canvas), strict=True
                ):
                    out[i] = faces
        return out

    def _detect_group(
        self, images: list[npt.NDArray[np.uint8]], canvas: tuple[int, int]
    ) -> list[Faces]:
        m = self._model
        blob, scales = letterbox_blob(images, canvas, float(m.input_mean), float(m.input_std))
        with self._lock:
            outs = m.session.run(m.output_names, {m.input_name: blob})
        if not self.batched:
            outs = [o[None] for o in outs]
        dets = decode_batch(outs, scales, canvas, m, self.settings.score_threshold, self._centres)
        return [self._faces(det, kps) for det, kps in dets]

    def _faces(self, det: npt.NDArray[np.float32], kps: npt.NDArray[np.float32] | None) -> Faces:
        if len(det) == 0:
            return Faces.empty()
        if kps is None:
            kps = _box_keypoints(det[:, :4])
        wh = np.minimum(det[:, 2] - det[:, 0], det[:, 3] - det[:, 1])
        keep = np.flatnonzero(wh >= self.settings.min_face_px)
        keep, capped = cap_faces(keep, det[keep, 4], self.settings.max_faces)
        if capped:
            with self._count_lock:
                self.faces_capped += capped
        return Faces.create(det[keep, :4], det[keep, 4], kps[keep])

    def reference(self, image: npt.NDArray[np.uint8]) -> tuple[Any, Any]:
        """InsightFace's own per-image ``SCRFD.detect`` at this detector's canvas (for tests)."""
        with self._lock:
            return self._model.detect(image, input_size=canvas_size(image.shape[:2], self.settings))


def cap_faces(
    keep: npt.NDArray[np.int64], scores: npt.NDArray[np.float32], limit: int
) -> tuple[npt.NDArray[np.int64], int]:
    """At most ``limit`` of the indices ``keep`` (``scores`` theirs): the highest-scoring ones,
    in score order when cut; and how many were cut."""
    if len(keep) <= limit:
        return keep, 0
    return keep[np.argsort(-scores, kind="stable")[:limit]], len(keep) - limit


def _check_image(image: Any) -> None:
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
    ):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"FaceDetector.detect needs an HxWx3 uint8 BGR image, got {shape} {dtype}")


def _dynamic_batch(session: Any) -> bool:
    dim = session.get_inputs()[0].shape[0]
    return not (isinstance(dim, int) and dim > 0)


def letterbox_blob(
    images: list[npt.NDArray[np.uint8]], canvas: tuple[int, int], mean: float, std: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """NCHW RGB ``(x - mean) / std`` blob of the images resized into the top-left of
    ``canvas`` (InsightFace's letterbox), and each image's scale.

    Written channel by channel straight into the float blob, then normalised in place: the
    same numbers as ``cv2.dnn.blobFromImages`` on a padded copy, in a fifth of the time."""
    cw, ch = canvas
    blob = np.zeros((len(images), 3, ch, cw), np.float32)
    scales = np.empty(len(images), np.float32)
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if h / w > ch / cw:
            nh, nw = ch, int(ch / (h / w))
        else:
            nw, nh = cw, int(cw * (h / w))
        scales[i] = nh / h
        resized = cv2.resize(img, (nw, nh))
        for c, plane in enumerate(cv2.split(resized)):  # B, G, R -> RGB blob channels 2, 1, 0
            blob[i, 2 - c, :nh, :nw] = plane
    blob -= mean
    blob *= 1.0 / std
    return blob, scales


def decode_batch(
    outs: list[npt.NDArray[np.float32]],
    scales: npt.NDArray[np.float32],
    canvas: tuple[int, int],
    model: Any,
    threshold: float,
    cache: dict[tuple[int, int, int], npt.NDArray[np.float32]],
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]]:
    """SCRFD outputs of a batch (each (batch, anchors, width)) -> per image (det (n,5), kps)."""
    fmc, use_kps = int(model.fmc), bool(model.use_kps)
    img_idx, scores, boxes, kpss = [], [], [], []
    for level, stride in enumerate(model._feat_stride_fpn):
        score = outs[level][..., 0]
        b, a = np.nonzero(score >= threshold)
        centres = _anchor_centres(canvas, int(stride), int(model._num_anchors), cache)[a]
        dist = outs[level + fmc][b, a] * stride
        boxes.append(np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1))
        if use_kps:
            k = outs[level + 2 * fmc][b, a] * stride
            kpss.append(k.reshape(len(a), k.shape[1] // 2, 2) + centres[:, None, :])
        img_idx.append(b)
        scores.append(score[b, a])
    b_all = np.concatenate(img_idx)
    det_all = np.concatenate(
        [np.concatenate(boxes) / scales[b_all, None], np.concatenate(scores)[:, None]], axis=1
    ).astype(np.float32)
    kps_all = np.concatenate(kpss) / scales[b_all, None, None] if use_kps else None
    result = []
    for i in range(len(scales)):
        sel = np.flatnonzero(b_all == i)
        det = det_all[sel]
        order = np.argsort(-det[:, 4], kind="stable")
        keep = order[nms(det[order], float(model.nms_thresh))]
        kps = None if kps_all is None else kps_all[sel][keep].astype(np.float32)
        result.append((det[keep], kps))
    return result


def _anchor_centres(
    canvas: tuple[int, int],
    stride: int,
    anchors: int,
    cache: dict[tuple[int, int, int], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    key = (canvas[1] // stride, canvas[0] // stride, stride)
    if key not in cache:
        h, w, _ = key
        ys, xs = np.mgrid[:h, :w]
        grid = np.stack([xs, ys], axis=-1).astype(np.float32)
        centres = (grid * stride).reshape(-1, 2)
        cache[key] = np.repeat(centres, anchors, axis=0) if anchors > 1 else centres
    return cache[key]


def nms(dets: npt.NDArray[np.float32], thresh: float) -> npt.NDArray[np.int64]:
    """Greedy NMS of score-sorted ``dets`` (n,5), InsightFace's formula; kept row indices."""
    x1, y1, x2, y2 = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.arange(len(dets))
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= thresh]
    return np.asarray(keep, np.int64)


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
