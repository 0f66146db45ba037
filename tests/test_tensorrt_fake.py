"""TensorRT plumbing (builder, plan cache, calibrator, backend buffers, stream and CUDA context)
against the fake ``tensorrt`` module (tests/fakes/tensorrt.py) and the fake ``pycuda.driver``
(tests/fakes/pycuda_driver.py). Real TensorRT runs only in the gpu tests."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from engines import cache as plan_cache
from pipeline.core.errors import ConfigError, MissingDependencyError, ModelError
from tests.fakes import install_gpu_fakes
from tests.fakes import pycuda_driver as fake_cuda
from tests.fakes import tensorrt as fake_trt

pytest.importorskip("torch")
pytest.importorskip("onnx")

from tests.test_engines import SPEC, export_onnx, tiny_net

GPU = plan_cache.GpuIdentity("Fake GPU 9000", "8.9")
GPU_IDENTITY = plan_cache.gpu_identity  # the real function, before fixtures replace it


@pytest.fixture
def trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    install_gpu_fakes(monkeypatch)
    monkeypatch.setattr(plan_cache, "gpu_identity", lambda index=0: GPU)
    yield fake_trt
    assert not fake_cuda.PROBLEMS, fake_cuda.PROBLEMS


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_net(), tmp_path_factory.mktemp("trt") / "tiny.onnx")


def settings(tmp_path: Path, **kw: object):  # type: ignore[no-untyped-def]
    from engines.trt_builder import BuildSettings

    return BuildSettings(**{"cache_dir": tmp_path / "cache", **kw})  # type: ignore[arg-type]


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
    return TensorRTEngine(onnx_model, precision=precision, max_batch=max_batch, config=cfg)


def test_trt_engine_infers_through_bound_addresses(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    assert eng.name == "tensorrt" and eng.precision == "fp16" and eng.input_spec == SPEC
    x = crops(5)
    got = eng.infer(x)
    np.testing.assert_allclose(got, fake_trt.reference(SPEC.normalise(x)), rtol=1e-5, atol=1e-6)
    ctx = eng._runner._context
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
    shapes = [c[1][1][0] for c in eng._runner._context.calls if c[0] == "set_input_shape"]
    assert shapes[-3:] == [8, 8, 4]


def test_trt_engine_lock_keeps_one_thread_in_context(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    eng._runner._context.delay_s = 0.005
    threads = [
        threading.Thread(target=lambda: [eng.infer(crops(2)) for _ in range(5)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert eng._runner._context.overlaps == 0
    assert len([c for c in eng._runner._context.calls if c[0] == "execute_async_v3"]) >= 20


def test_fake_context_detects_unlocked_concurrent_use(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    ctx = eng._runner._context
    ctx.delay_s = 0.02
    ctx.set_input_shape("input", (1, 1, 32, 32))
    cuda_ctx, handle = eng._runner.owner.context, eng._runner._stream.handle

    def unowned() -> None:
        cuda_ctx.push()
        ctx.execute_async_v3(handle)
        fake_cuda.Context.pop()

    threads = [threading.Thread(target=unowned) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ctx.overlaps > 0  # the check of the owner thread can fail: without it, overlaps show
    eng.close()


def test_trt_plan_from_other_gpu_is_refused(
    trt: object, onnx_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    plan = engine(tmp_path, onnx_model).plan_path
    assert TensorRTEngine(plan, max_batch=8, device="cuda:0").name == "tensorrt"
    monkeypatch.setattr(
        plan_cache, "gpu_identity", lambda index=0: plan_cache.GpuIdentity("Other GPU", "7.5")
    )
    with pytest.raises(ModelError, match="rebuild"):
        TensorRTEngine(plan, max_batch=8, device="cuda:0")


def test_trt_max_batch_above_plan_profile_is_config_error(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    plan = engine(tmp_path, onnx_model, max_batch=8).plan_path
    with pytest.raises(ConfigError, match="up to 8"):
        TensorRTEngine(plan, max_batch=16, device="cuda:0")


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


# ---------------------------------------------------------------- pycuda buffers, stream, context
def cuda_calls(name: str) -> list[tuple[str, object, str]]:
    return [c for c in fake_cuda.CALLS if c[0] == name]


def test_trt_runner_allocates_buffers_once_for_largest_batch(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model, max_batch=8)
    allocs = [c[1] for c in cuda_calls("mem_alloc")]
    assert allocs == [8 * 1 * 32 * 32 * 4, 8 * 7 * 4]  # input and output, float32, batch 8
    pinned = [c[1] for c in cuda_calls("pagelocked_empty")]
    assert pinned == [((8 * 32 * 32,), "float32"), ((8 * 7,), "float32")]
    for n in (1, 8, 3, 20):
        eng.infer(crops(n, seed=n))
    assert len(cuda_calls("mem_alloc")) == 2 and len(cuda_calls("pagelocked_empty")) == 2
    assert len(cuda_calls("stream")) == 1


def test_trt_runner_copies_async_on_its_own_stream(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model, max_batch=8)
    (stream,) = [c[1] for c in cuda_calls("stream")]
    fake_cuda.CALLS.clear()
    eng.infer(crops(5))
    names = [c[0] for c in fake_cuda.CALLS]
    assert names == ["htod_async", "dtoh_async", "synchronize"]
    assert fake_cuda.CALLS[0][1] == (5 * 32 * 32 * 4, stream)  # only the 5 rows in use
    assert fake_cuda.CALLS[1][1] == (5 * 7 * 4, stream)
    assert fake_cuda.CALLS[2][1] == (stream, 2)
    (run,) = [c for c in eng._runner._context.calls if c[0] == "execute_async_v3"][-1:]
    assert run[1][0] == stream


def test_trt_runner_owner_thread_runs_every_cuda_call(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    owner = eng._runner.owner.thread_name
    results: list[np.ndarray] = []
    batcher = threading.Thread(target=lambda: results.append(eng.infer(crops(4))), name="batcher")
    batcher.start()
    batcher.join()
    assert results and results[0].shape == (4, 7)
    cuda_threads = {c[2] for c in fake_cuda.CALLS if c[0] not in ("init",)}
    assert cuda_threads == {owner}  # the batcher thread never touched CUDA itself
    runs = [c[1][1] for c in eng._runner._context.calls if c[0] == "execute_async_v3"]
    assert set(runs) == {owner}
    assert fake_cuda.current_context() is None  # nothing left pushed on the caller's thread


def test_trt_runner_close_frees_buffers_and_pops_context(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    eng = engine(tmp_path, onnx_model)
    eng.infer(crops(2))
    assert len(fake_cuda.LIVE) == 2
    eng.close()
    assert not fake_cuda.LIVE
    pushes, pops = cuda_calls("push"), cuda_calls("pop")
    assert len(pushes) == len(pops) and pops[-1][2] == pushes[0][2]  # popped on the owner thread
    assert cuda_calls("detach")
    with pytest.raises(RuntimeError, match="closed"):
        eng.infer(crops(1))
    eng.close()  # idempotent


def test_cuda_call_without_context_is_refused_by_fake(trt: object) -> None:
    fake_cuda.init()
    with pytest.raises(fake_cuda.LogicError, match="invalid device context"):
        fake_cuda.mem_alloc(16)


def test_pushed_pops_context_when_block_raises(trt: object) -> None:
    from engines.cuda import import_pycuda, primary_context, pushed

    cuda = import_pycuda()
    ctx = primary_context(cuda, 0)
    with pytest.raises(ValueError), pushed(cuda, ctx):
        assert fake_cuda.current_context() is ctx
        raise ValueError("boom")
    assert fake_cuda.current_context() is None


def test_trt_int8_calibrator_uses_pycuda_buffer_in_pushed_context(
    trt: object, onnx_model: Path, tmp_path: Path
) -> None:
    from engines.trt_builder import ensure_plan

    np.save(tmp_path / "crops.npy", crops(40))
    ensure_plan(
        onnx_model, settings(tmp_path, precision="int8", max_batch=16, calib=tmp_path / "crops.npy")
    )
    assert [c[1] for c in cuda_calls("mem_alloc")] == [16 * 32 * 32 * 4]
    assert len(cuda_calls("htod")) == 3  # 40 crops in batches of 16
    assert not fake_cuda.LIVE  # the calibration buffer is freed after the build
    assert fake_cuda.current_context() is None


def test_trt_engine_rejects_non_cuda_device(trt: object, onnx_model: Path, tmp_path: Path) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    with pytest.raises(ConfigError, match="CUDA"):
        TensorRTEngine(onnx_model, device="cpu")


def test_trt_backend_without_pycuda_is_missing_dependency(
    trt: object, onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.backends.tensorrt import TensorRTEngine

    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(MissingDependencyError, match="pycuda"):
        TensorRTEngine(onnx_model)


def test_gpu_identity_comes_from_pycuda_without_torch(trt: object) -> None:
    got = GPU_IDENTITY()
    assert got == plan_cache.GpuIdentity(fake_cuda.DEVICE_NAME, "8.9")
    assert any(c[0] == "init" for c in fake_cuda.CALLS)


def test_registry_tensorrt_needs_pycuda(
    trt: object, onnx_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines import registry

    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    assert registry.availability("tensorrt").available
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    a = registry.availability("tensorrt")
    assert not a.available and a.reason.startswith("pycuda.driver does not import")
    with pytest.raises(MissingDependencyError, match=r"'pycuda'.*CUDA headers"):
        registry.resolve_backend(onnx_model, "tensorrt")
    assert registry.resolve_backend(onnx_model, "auto")[0] != "tensorrt"


def test_trt_engine_feeds_rgb_per_channel_spec(trt: object, tmp_path: Path) -> None:
    from tests.test_input_spec import IMAGENET, colour_onnx, patches

    eng = engine(tmp_path, colour_onnx(tmp_path / "colour.onnx"), max_batch=4)
    assert eng.input_spec == IMAGENET
    red = patches(IMAGENET, (255, 0, 0))
    want = fake_trt.reference(IMAGENET.normalise(red))
    np.testing.assert_allclose(eng.infer(red), want, rtol=1e-5, atol=1e-6)
    assert ("set_input_shape", ("input", (2, 3, 112, 96))) in eng._runner._context.calls
