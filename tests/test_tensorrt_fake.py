"""TensorRT plumbing (builder, plan cache, calibrator, backend buffers and lock) against the
fake ``tensorrt`` module in tests/fakes/tensorrt.py. Real TensorRT runs only in the gpu tests."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from engines import cache as plan_cache
from pipeline.core.errors import ConfigError, MissingDependencyError, ModelError
from tests.fakes import tensorrt as fake_trt

pytest.importorskip("torch")
pytest.importorskip("onnx")

from tests.test_engines import SPEC, export_onnx, tiny_net

GPU = plan_cache.GpuIdentity("Fake GPU 9000", "8.9")


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> object:
    fake_trt.reset()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr(plan_cache, "gpu_identity", lambda index=0: GPU)
    return fake_trt


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_net(), tmp_path_factory.mktemp("trt") / "tiny.onnx")


def settings(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    from engines.trt_builder import BuildSettings

    return BuildSettings(**{"cache_dir": tmp_path / "cache", "calib_device": "cpu", **kw})  # type: ignore[arg-type]


def builds() -> list[dict]:
    return [d for name, d in fake_trt.CALLS if name == "build"]


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_trt_build_profile_shapes_flags_and_metadata(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.trt_builder import ensure_plan

    plan, meta, built = ensure_plan(
        onnx_model, settings(tmp_path, precision="fp16", max_batch=16, opt_batch=4)
    )
    assert built and plan.is_file()
    (b,) = builds()
    assert [tuple(s) for s in b["profile"]] == [(1, 1, 32, 32), (4, 1, 32, 32), (16, 1, 32, 32)]
    assert b["flags"] == ["FP16"]
    assert meta["input_spec"]["height"] == 32 and meta["classes"][0] == "angry"
    assert meta["key"]["onnx_sha256"] == plan_cache.file_sha256(onnx_model)
    assert meta["key"]["trt_version"] == fake_trt.__version__
    assert meta["key"]["gpu_name"] == GPU.name and meta["key"]["compute_capability"] == "8.9"
    assert not [
        p for p in plan.parent.iterdir() if p.name.startswith(".")
    ]  # atomic writes left no temp files


def test_trt_plan_cache_hit_skips_build(trt: object, onnx_model: Path, tmp_path: Path) -> None:
    from engines.trt_builder import ensure_plan

    p1, _, built1 = ensure_plan(onnx_model, settings(tmp_path))
    p2, _, built2 = ensure_plan(onnx_model, settings(tmp_path))
    assert (built1, built2) == (True, False) and p1 == p2
    assert len(builds()) == 1


def test_trt_plan_cache_key_covers_version_gpu_precision_batch(
    trt: object, onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.trt_builder import ensure_plan

    paths = {ensure_plan(onnx_model, settings(tmp_path))[0]}
    paths.add(ensure_plan(onnx_model, settings(tmp_path, precision="fp32"))[0])
    paths.add(ensure_plan(onnx_model, settings(tmp_path, max_batch=8))[0])
    monkeypatch.setattr(fake_trt, "__version__", "10.100.0-fake")
    paths.add(ensure_plan(onnx_model, settings(tmp_path))[0])
    monkeypatch.setattr(
        plan_cache, "gpu_identity", lambda index=0: plan_cache.GpuIdentity("Other", "9.0")
    )
    paths.add(ensure_plan(onnx_model, settings(tmp_path))[0])
    assert len(paths) == 5 and len(builds()) == 5


def test_trt_timing_cache_reused_across_builds(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.trt_builder import ensure_plan

    ensure_plan(onnx_model, settings(tmp_path))
    ensure_plan(onnx_model, settings(tmp_path, rebuild=True))
    seen = [raw for name, raw in fake_trt.CALLS if name == "create_timing_cache"]
    assert seen[0] == b"" and seen[1] == b"+"
    assert (tmp_path / "cache" / plan_cache.TIMING_CACHE_NAME).read_bytes() == b"++"


def test_trt_int8_calibrates_on_crops_and_caches_table(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.trt_builder import ensure_plan

    np.save(tmp_path / "crops.npy", crops(70))
    ensure_plan(
        onnx_model, settings(tmp_path, precision="int8", max_batch=32, calib=tmp_path / "crops.npy")
    )
    (b,) = builds()
    assert b["flags"] == ["FP16", "INT8"] and b["calib_batches"] == 3  # 70 crops in batches of 32
    tables = list((tmp_path / "cache").glob("*.calib"))
    assert len(tables) == 1 and tables[0].read_bytes() == b"fake-calibration-table:96"


def test_trt_int8_calibration_from_image_folder(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    import cv2

    from engines.calibrate import load_crops

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f"{i}.png"), np.full((48, 48), i * 40, np.uint8))
    got = load_crops(d, SPEC)
    assert got.shape == (5, 32, 32) and got.dtype == np.uint8 and got[4].mean() == 160


def test_trt_int8_without_calibration_data_is_config_error(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.trt_builder import ensure_plan

    with pytest.raises(ConfigError, match="--calib"):
        ensure_plan(onnx_model, settings(tmp_path, precision="int8"))


def engine(tmp_path: Path, onnx_model: Path, max_batch: int = 8, precision: str = "fp16"):  # type: ignore[no-untyped-def]
    from engines.backends.tensorrt import TensorRTConfig, TensorRTEngine

    cfg = TensorRTConfig(cache_dir=tmp_path / "cache")
    return TensorRTEngine(
        onnx_model, precision=precision, max_batch=max_batch, device="cpu", config=cfg
    )


def test_trt_engine_infers_through_bound_addresses(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    assert eng.name == "tensorrt" and eng.precision == "fp16" and eng.input_spec == SPEC
    x = crops(5)
    got = eng.infer(x)
    np.testing.assert_allclose(got, fake_trt.reference(SPEC.normalise(x)), rtol=1e-5, atol=1e-6)
    ctx = eng._context
    addr = [c for c in ctx.calls if c[0] == "set_tensor_address"]
    assert [a[1][0] for a in addr] == ["input", "probs"]  # bound once, at load
    assert ("set_input_shape", ("input", (5, 1, 32, 32))) in ctx.calls
    eng.infer(crops(3))
    assert len([c for c in ctx.calls if c[0] == "set_tensor_address"]) == 2


def test_trt_engine_splits_batches_larger_than_profile(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model, max_batch=8)
    x = crops(20, seed=1)
    np.testing.assert_allclose(
        eng.infer(x), fake_trt.reference(SPEC.normalise(x)), rtol=1e-5, atol=1e-6
    )
    shapes = [c[1][1][0] for c in eng._context.calls if c[0] == "set_input_shape"]
    assert shapes[-3:] == [8, 8, 4]


def test_trt_engine_lock_keeps_one_thread_in_context(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    eng._context.delay_s = 0.005
    threads = [
        threading.Thread(target=lambda: [eng.infer(crops(2)) for _ in range(5)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert eng._context.overlaps == 0
    assert len([c for c in eng._context.calls if c[0] == "execute_async_v3"]) >= 20


def test_fake_context_detects_unlocked_concurrent_use(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    ctx = eng._context
    ctx.delay_s = 0.02
    ctx.set_input_shape("input", (1, 1, 32, 32))
    threads = [threading.Thread(target=ctx.execute_async_v3, args=(0,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctx.overlaps > 0  # the check above can fail: without the lock, overlaps show


def test_trt_plan_from_other_gpu_is_refused(
    trt: object, onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    plan = engine(tmp_path, onnx_model).plan_path
    assert TensorRTEngine(plan, max_batch=8, device="cpu").name == "tensorrt"
    monkeypatch.setattr(
        plan_cache, "gpu_identity", lambda index=0: plan_cache.GpuIdentity("Other GPU", "7.5")
    )
    with pytest.raises(ModelError, match="rebuild"):
        TensorRTEngine(plan, max_batch=8, device="cpu")


def test_trt_max_batch_above_plan_profile_is_config_error(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    plan = engine(tmp_path, onnx_model, max_batch=8).plan_path
    with pytest.raises(ConfigError, match="up to 8"):
        TensorRTEngine(plan, max_batch=16, device="cpu")


def test_trt_missing_module_is_missing_dependency(
    monkeypatch: pytest.MonkeyPatch, onnx_model: Path
) -> None:
    from engines.trt_builder import import_trt

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="tensorrt") as e:
        import_trt()
    assert "deploy/" in str(e.value) and "\n" not in str(e.value)


def test_plan_metadata_is_json_beside_plan(trt: object, onnx_model: Path, tmp_path: Path) -> None:
    plan = engine(tmp_path, onnx_model).plan_path
    meta = json.loads(plan.with_suffix(".json").read_text())
    assert (
        meta["plan"] == plan.name
        and meta["precision"] == "fp16"
        and meta["normalisation"]["mean"] == [0.5]
    )


def test_trt_engine_feeds_rgb_per_channel_spec(trt: object, tmp_path: Path) -> None:
    from tests.test_input_spec import IMAGENET, colour_onnx, patches

    eng = engine(tmp_path, colour_onnx(tmp_path / "colour.onnx"), max_batch=4)
    assert eng.input_spec == IMAGENET
    red = patches(IMAGENET, (255, 0, 0))
    want = fake_trt.reference(IMAGENET.normalise(red))
    np.testing.assert_allclose(eng.infer(red), want, rtol=1e-5, atol=1e-6)
    assert ("set_input_shape", ("input", (2, 3, 112, 96))) in eng._context.calls
