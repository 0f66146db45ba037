"""Real-GPU checks of the TensorRT path on pycuda (skipped without a GPU by conftest, and
without TensorRT/pycuda here): detector plan parity with the CPU detector on real frames,
the emotion plan driven from another thread than its creator's."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        importlib.util.find_spec("tensorrt") is None or importlib.util.find_spec("pycuda") is None,
        reason="TensorRT and pycuda are not installed (not on the package registries)",
    ),
]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def real_frames(t1_image: np.ndarray, tmp_path: Path) -> list[np.ndarray]:
    import av

    from pipeline.media.sample import make_sample_clip

    clip = tmp_path / "sample.mp4"
    make_sample_clip(clip)
    with av.open(str(clip)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return [t1_image, *frames[::20]]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_detector_tensorrt_matches_cpu_detector(
    models_dir: Path,
    t1_image: np.ndarray,
    tmp_path: Path,
    precision: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.core.config import DetectorSettings
    from pipeline.stages.detect import FaceDetector

    monkeypatch.setenv("ES_ENGINE_CACHE", str(tmp_path / "cache"))
    cpu = FaceDetector(
        DetectorSettings(
            model_dir=models_dir, backend="onnxruntime", providers=("CPUExecutionProvider",)
        )
    )  # type: ignore[arg-type]
    trt = FaceDetector(
        DetectorSettings(model_dir=models_dir, backend="tensorrt", precision=precision)
    )  # type: ignore[arg-type]
    assert trt.backend == "tensorrt"
    for img in real_frames(t1_image, tmp_path):
        a, b = cpu.detect(img), trt.detect(img)
        assert len(a) == len(b) > 0
        best = iou(a.xyxy, b.xyxy).max(axis=1)
        print(precision, len(a), float(best.min()))
        assert best.min() >= 0.95


def test_gpu_tensorrt_engine_infers_from_another_thread(tmp_path: Path) -> None:
    from engines.backends.tensorrt import TensorRTConfig, TensorRTEngine
    from tests.test_engines import export_onnx, tiny_net

    onnx_path = export_onnx(tiny_net(), tmp_path / "tiny.onnx")
    eng = TensorRTEngine(
        onnx_path, precision="fp32", max_batch=8, config=TensorRTConfig(cache_dir=tmp_path)
    )
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32), dtype=np.uint8)
    here = eng.infer(x)
    there: list[np.ndarray] = []
    t = threading.Thread(target=lambda: there.append(eng.infer(x)), name="batcher")
    t.start()
    t.join()
    np.testing.assert_allclose(here, there[0], atol=1e-6)
    eng.close()
