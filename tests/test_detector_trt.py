"""The detector as a TensorRT plan: builder profile and cache entry, the session look-alike and
the FaceDetector hook, against the fake ``tensorrt`` and ``pycuda.driver`` (tests/fakes/)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines import cache as plan_cache
from engines.trt_builder import BuildSettings, PlanKind, ensure_plan
from pipeline.core.config import DetectorSettings
from pipeline.core.errors import ConfigError
from tests.fakes import install_gpu_fakes
from tests.fakes import pycuda_driver as fake_cuda
from tests.fakes import tensorrt as fake_trt
from tests.test_detect import tiny_scrfd

_find = importlib.util.find_spec
GPU = plan_cache.GpuIdentity("Fake GPU 9000", "8.9")
HW = (320, 320)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    install_gpu_fakes(monkeypatch)
    monkeypatch.setattr(plan_cache, "gpu_identity", lambda index=0: GPU)
    yield
    assert not fake_cuda.PROBLEMS, fake_cuda.PROBLEMS


@pytest.fixture(scope="module")
def fixed_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_scrfd(tmp_path_factory.mktemp("det") / "det_tiny.onnx")


@pytest.fixture(scope="module")
def dynamic_onnx(fixed_onnx: Path) -> Path:
    """The same graph with a dynamic batch axis on the input and a batch axis on each output."""
    m = onnx.load(str(fixed_onnx))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    for out in m.graph.output:
        dims = out.type.tensor_type.shape.dim
        dims.insert(0, onnx.TensorShapeProto.Dimension(dim_param="batch"))
    path = fixed_onnx.with_name("det_tiny_dyn.onnx")
    onnx.save(m, str(path))
    return path


def det_settings(tmp_path: Path, **kw: object) -> BuildSettings:
    return BuildSettings(  # type: ignore[arg-type]
        **{"kind": PlanKind.DETECTOR, "input_hw": HW, "cache_dir": tmp_path / "c", **kw}
    )


def builds() -> list[dict]:  # type: ignore[type-arg]
    return [d for name, d in fake_trt.CALLS if name == "build"]


def test_detector_plan_fixed_batch_pins_batch_one(
    fakes: None, fixed_onnx: Path, tmp_path: Path
) -> None:
    _plan, meta, built = ensure_plan(fixed_onnx, det_settings(tmp_path, max_batch=8))
    (b,) = builds()
    assert built and [tuple(s) for s in b["profile"]] == [(1, 3, 320, 320)] * 3
    assert meta["key"]["max_batch"] == 1 and meta["key"]["kind"] == "detector"
    assert meta["key"]["input_hw"] == "320x320" and len(meta["output_names"]) == 9
    assert b["flags"] == ["FP16"]


def test_detector_plan_dynamic_batch_gets_batch_profile(
    fakes: None, dynamic_onnx: Path, tmp_path: Path
) -> None:
    ensure_plan(dynamic_onnx, det_settings(tmp_path, max_batch=8, opt_batch=4))
    (b,) = builds()
    assert [tuple(s) for s in b["profile"]] == [
        (1, 3, 320, 320),
        (4, 3, 320, 320),
        (8, 3, 320, 320),
    ]


def test_detector_plan_has_own_cache_entry_per_input_size(
    fakes: None, fixed_onnx: Path, tmp_path: Path
) -> None:
    a = ensure_plan(fixed_onnx, det_settings(tmp_path))[0]
    assert ensure_plan(fixed_onnx, det_settings(tmp_path))[0] == a  # cache hit
    b = ensure_plan(fixed_onnx, det_settings(tmp_path, input_hw=(640, 640)))[0]
    assert a != b and len(builds()) == 2
    assert [tuple(s) for s in builds()[1]["profile"]][2] == (1, 3, 640, 640)


def test_detector_plan_fixed_size_mismatch_is_config_error(
    fakes: None, fixed_onnx: Path, tmp_path: Path
) -> None:
    m = onnx.load(str(fixed_onnx))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 480, 640
    onnx.save(m, str(tmp_path / "fixed.onnx"))
    with pytest.raises(ConfigError, match="input_size to 640x480"):
        ensure_plan(tmp_path / "fixed.onnx", det_settings(tmp_path))


def test_detector_session_outputs_match_onnxruntime_shapes_and_order(
    fakes: None, fixed_onnx: Path, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from engines.detector_trt import TensorRTDetectorSession

    session = TensorRTDetectorSession(fixed_onnx, HW, cache_dir=tmp_path / "c")
    blob = np.random.default_rng(0).normal(0, 1, (1, 3, *HW)).astype(np.float32)
    ref = ort.InferenceSession(str(fixed_onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    want = ref.run(names, {"input": blob})
    got = session.run(names, {"input": blob})
    assert [g.shape for g in got] == [w.shape for w in want]
    order = session.output_names
    for name, g in zip(names, got, strict=True):  # the fake writes mean(x) * (k + 1) to output k
        np.testing.assert_allclose(g, blob.mean() * (order.index(name) + 1), rtol=1e-5)
    assert session.run(names[::-1], {"input": blob})[0].shape == want[-1].shape
    session.close()
    assert not fake_cuda.LIVE


def test_detector_session_dynamic_batch_splits_and_concatenates(
    fakes: None, dynamic_onnx: Path, tmp_path: Path
) -> None:
    from engines.detector_trt import TensorRTDetectorSession

    session = TensorRTDetectorSession(dynamic_onnx, HW, max_batch=4, cache_dir=tmp_path / "c")
    blob = np.stack([np.full((3, *HW), v, np.float32) for v in range(6)])
    outs = session.run(None, {"input": blob})
    assert outs[0].shape == (6, 40 * 40 * 2, 1) and outs[3].shape == (6, 3200, 4)
    np.testing.assert_allclose(outs[0][:, 0, 0], np.arange(6, dtype=np.float32))
    shapes = [c[1][1][0] for c in session._runner._context.calls if c[0] == "set_input_shape"]
    assert shapes[-2:] == [4, 2]


def test_face_detector_runs_on_tensorrt_when_chosen(
    fakes: None, fixed_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.stages.detect import FaceDetector

    monkeypatch.setenv("ES_ENGINE_CACHE", str(tmp_path / "c"))
    monkeypatch.setattr("engines.detector_trt.tensorrt_usable", lambda: (True, "fakes"))
    det = FaceDetector(
        DetectorSettings(model_file=fixed_onnx, input_size=HW, providers=("CPUExecutionProvider",))
    )
    assert det.backend == "tensorrt"
    img = np.random.default_rng(2).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    det.detect(img)
    ctx = det._model.session._runner._context
    runs = [c for c in ctx.calls if c[0] == "execute_async_v3"]
    assert runs and ("set_input_shape", ("input", (1, 3, 320, 320))) in ctx.calls


def test_face_detector_auto_without_tensorrt_stays_on_onnxruntime(
    fixed_onnx: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.stages.detect import FaceDetector

    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *a: None if name in ("tensorrt", "pycuda") else _find(name),
    )
    with caplog.at_level(logging.INFO, logger="pipeline.stages.detect"):
        det = FaceDetector(DetectorSettings(model_file=fixed_onnx, input_size=HW))
    assert det.backend == "onnxruntime"
    assert "TensorRT not usable: tensorrt is not installed" in caplog.text


def test_face_detector_tensorrt_asked_without_it_is_config_error(
    fixed_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.stages.detect import FaceDetector

    monkeypatch.setattr(
        "engines.detector_trt.tensorrt_usable", lambda: (False, "tensorrt is not installed")
    )
    with pytest.raises(ConfigError, match=r"tensorrt is not installed.*deploy/"):
        FaceDetector(DetectorSettings(model_file=fixed_onnx, input_size=HW, backend="tensorrt"))  # type: ignore[arg-type]


def test_resolve_providers_skips_tensorrt_ep_without_tensorrt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnxruntime as ort

    from pipeline.stages.detect import resolve_providers

    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(
        "importlib.util.find_spec", lambda name, *a: None if name == "tensorrt" else _find(name)
    )
    assert resolve_providers(()) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())
    assert resolve_providers(())[0] == "TensorrtExecutionProvider"


def test_cli_engines_build_detector_plan(
    fakes: None,
    fixed_onnx: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from engines import registry
    from pipeline.cli.main import main

    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    frames = np.zeros((3, 320, 320, 3), np.uint8)
    np.save(tmp_path / "frames.npy", frames)
    argv = ["engines", "build", str(fixed_onnx), "--detector", "--input-size", "320x320"]
    argv += [
        "--precision",
        "int8",
        "--calib",
        str(tmp_path / "frames.npy"),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["built"] and Path(out["plan"]).is_file()
    (b,) = builds()
    assert [tuple(s) for s in b["profile"]] == [(1, 3, 320, 320)] * 3
    assert b["flags"] == ["FP16", "INT8"] and b["calib_batches"] == 3


def test_cli_engines_build_detector_bad_size_is_one_line(
    fakes: None,
    fixed_onnx: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engines import registry
    from pipeline.cli.main import main

    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    assert main(["engines", "build", str(fixed_onnx), "--detector", "--input-size", "big"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --input-size 'big'") and "\n" not in err
