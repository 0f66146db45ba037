"""Batched detection: one session call for many frames gives each frame's per-image result,
and the worker path never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import DetectorSettings
from pipeline.stages.detect import FaceDetector, canvas_size

REPO = Path(__file__).resolve().parents[1]
CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def batch_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bootstrapped detector (dynamic batch axis) and a tiny random emotion ONNX."""
    from pipeline.tools.model_zoo.retinaface_scrfd import DETECTOR_FILE, build_detector

    out = tmp_path_factory.mktemp("batch_models")
    build_detector(out / DETECTOR_FILE)
    tiny_emotion(out / "emotion_mini_xception.onnx")
    return out


def tiny_emotion(path: Path) -> Path:
    """(batch,1,64,64) -> 7 softmax probabilities, random weights."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 1, (1, 7)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(7, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_emotion",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 64, 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 7])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _frames(t1: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    """Three 720p frames showing t1.jpg's faces at different scales and places."""
    out = []
    for scale, dx, dy in ((0.8, 0, 0), (0.6, 300, 200), (0.95, -40, -60)):
        m = np.array([[scale, 0, dx], [0, scale, dy]], np.float32)
        out.append(cv2.warpAffine(t1, m, (1280, 720), borderValue=(40, 40, 40)))
    return out


def test_detector_batched_output_equals_per_image_output(
    batch_models: Path, t1_image: npt.NDArray[np.uint8]
) -> None:
    det = FaceDetector(DetectorSettings(model_dir=batch_models, providers=CPU), threads=1)
    assert det.batched, "the bootstrapped detector must have a dynamic batch axis"
    frames = _frames(t1_image)
    batched = det.detect_batch(frames)
    for frame, faces in zip(frames, batched, strict=True):
        single = det.detect(frame)
        ref_det, ref_kps = det.reference(frame)  # InsightFace's own SCRFD.detect
        assert len(faces) == len(single) == len(ref_det) >= 5
        np.testing.assert_allclose(faces.xyxy, single.xyxy, atol=1e-3)
        np.testing.assert_allclose(faces.xyxy, ref_det[:, :4], atol=1e-3)
        np.testing.assert_allclose(faces.score, ref_det[:, 4], atol=1e-5)
        np.testing.assert_allclose(faces.kps, ref_kps, atol=1e-3)


def test_canvas_size_fits_frame_aspect_at_input_scale() -> None:
    s = DetectorSettings(input_size=(640, 640), max_scale=1.0)
    assert canvas_size((720, 1280), s) == (640, 384)
    assert canvas_size((1080, 1920), s) == (640, 384)
    assert canvas_size((720, 1280), s.model_copy(update={"fit_aspect": False})) == (640, 640)
    default = DetectorSettings()
    assert canvas_size((720, 1280), default) == (960, 544)
    assert canvas_size((1080, 1920), default) == (1440, 832)


_WORKER_SCRIPT = """
import json, sys, threading
from pathlib import Path
from pipeline.core.config import WorkerSettings
from pipeline.media.sources import parse_source
from pipeline.runtime.worker import Worker, load_parts, with_models_dir
from pipeline.tools.bench import CountingSink
settings = with_models_dir(WorkerSettings(), Path(sys.argv[1]))
sink = CountingSink()
parts, ctx = load_parts(settings, [sink])
worker = Worker(settings, parts, ctx)
worker.add_stream(parse_source(sys.argv[2]))
worker.wait(threading.Event())
worker.stop("eof")
print(json.dumps({"torch": "torch" in sys.modules, "events": sink.events, "backend": ctx.backend}))
"""


def test_worker_path_does_not_import_torch(batch_models: Path, tmp_path: Path) -> None:
    from pipeline.media.sample import make_sample_clip

    clip = make_sample_clip(tmp_path / "clip.mp4", seconds=0.4, fps=25)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_SCRIPT, str(batch_models), str(clip)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == "onnxruntime"
    assert result["events"] > 10, "the worker must really have processed the clip"
    assert result["torch"] is False, "the CPU worker path imported torch"


class _CountingDetector:
    """Stands in for FaceDetector: records the size of every detect_batch call."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def detect(self, image: npt.NDArray[np.uint8]) -> object:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: list[npt.NDArray[np.uint8]]) -> list[object]:
        self.calls.append(len(images))
        return [int(im[0, 0, 0]) for im in images]


def test_detect_batcher_joins_frames_of_concurrent_streams() -> None:
    import threading

    from pipeline.runtime.detect_batcher import DetectBatcher

    fake = _CountingDetector()
    batcher = DetectBatcher(fake, max_batch=4, max_wait_ms=200)  # type: ignore[arg-type]
    results: dict[int, object] = {}
    go = threading.Barrier(4)

    def stream(k: int) -> None:
        go.wait()
        results[k] = batcher.detect(np.full((8, 8, 3), k, np.uint8))

    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    batcher.close()
    assert results == {0: 0, 1: 1, 2: 2, 3: 3}, "each stream gets its own frame's result"
    assert sum(fake.calls) == 4 and max(fake.calls) >= 2, f"frames were not batched: {fake.calls}"


def test_detect_batcher_submit_returns_at_once_and_converts_pixels_on_its_thread() -> None:
    import threading

    from pipeline.core.types import Pixels
    from pipeline.runtime.detect_batcher import DetectBatcher

    fake = _CountingDetector()
    batcher = DetectBatcher(fake, max_batch=4, max_wait_ms=1)  # type: ignore[arg-type]
    converted_on: list[str] = []

    def to_bgr() -> npt.NDArray[np.uint8]:
        converted_on.append(threading.current_thread().name)
        return np.full((8, 8, 3), 9, np.uint8)

    fut = batcher.submit(Pixels(8, 8, to_bgr))
    assert fut.result(timeout=5) == 9
    batcher.close()
    assert converted_on == ["detect-batcher"]  # not on the submitting stream thread
