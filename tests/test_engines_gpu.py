"""Real-GPU engine checks (skipped without CUDA by conftest): torch CUDA fp32/fp16 and, where
TensorRT is installed, TensorRT plans, all against the PyTorch CPU reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from engines.parity import THRESHOLDS, run_parity

pytestmark = pytest.mark.gpu

DEFAULT_ONNX = Path("models/emotion_mini_xception.onnx")
DEFAULT_PT = Path("models/emotion_mini_xception.pt")
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tests.test_engines import export_onnx, export_torchscript, tiny_net

    d = tmp_path_factory.mktemp("gpu")
    net = tiny_net()
    return export_onnx(net, d / "tiny.onnx"), export_torchscript(net, d / "tiny.pt")


def _check(rows: list) -> None:  # type: ignore[type-arg]
    assert rows
    for r in rows:
        th = THRESHOLDS[r.precision]
        print(
            f"{r.backend} {r.precision} {r.device}: max|d|={r.max_abs_diff:.2e} top1={r.top1_agreement:.4f}"
        )
        if th.min_agreement is not None:
            assert r.top1_agreement >= th.min_agreement, r
            assert r.max_abs_diff <= th.max_abs, r


def test_gpu_torch_cuda_matches_cpu_on_tiny_model(tiny: tuple[Path, Path]) -> None:
    _, rows = run_parity(
        tiny[0], tiny[1], n=256, which=[("torch", "fp32", "cuda"), ("torch", "fp16", "cuda")]
    )
    assert {r.device for r in rows} == {"cuda"}
    _check(rows)


@pytest.mark.skipif(
    not DEFAULT_ONNX.is_file(), reason="default model not built: emotion-stream models bootstrap"
)
def test_gpu_default_model_parity_torch_onnx_tensorrt() -> None:
    which = [("onnxruntime", "fp32", None)]
    if DEFAULT_PT.is_file():
        which += [("torch", "fp32", "cuda"), ("torch", "fp16", "cuda")]
    if HAS_TRT:
        which += [("tensorrt", "fp32", None), ("tensorrt", "fp16", None)]
    _, rows = run_parity(
        DEFAULT_ONNX, DEFAULT_PT if DEFAULT_PT.is_file() else None, n=256, which=which
    )
    _check(rows)


@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (not on the package registries)")
def test_gpu_tensorrt_plan_cached_and_reloaded(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from engines.backends.tensorrt import TensorRTConfig, TensorRTEngine

    cfg = TensorRTConfig(cache_dir=tmp_path)
    a = TensorRTEngine(tiny[0], precision="fp16", max_batch=16, config=cfg)
    b = TensorRTEngine(a.plan_path, precision="fp16", max_batch=16, config=cfg)
    x = np.random.default_rng(0).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    np.testing.assert_allclose(a.infer(x), b.infer(x), atol=1e-6)
