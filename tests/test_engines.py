"""Engine plumbing on tiny real models written to tmp_path (ONNX via torch.onnx.export, TorchScript)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest

from engines.base import InputSpec
from engines.registry import load_engine, resolve_backend
from pipeline.core.errors import ConfigError, ModelError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

SPEC = InputSpec(channels=1, height=32, width=32, mean=0.5, std=0.5)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 7),
        torch.nn.Softmax(dim=1),
    ).eval()


def export_onnx(net: torch.nn.Module, path: Path, spec: InputSpec | None = SPEC) -> Path:
    torch.onnx.export(
        net,
        (torch.zeros(1, 1, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["probs"],
        dynamic_axes={"input": {0: "n"}, "probs": {0: "n"}},
        dynamo=False,
    )
    if spec is not None:
        m = onnx.load(str(path))
        for k, v in spec.to_metadata().items():
            p = m.metadata_props.add()
            p.key, p.value = k, v
        onnx.save(m, str(path))
    return path


def export_torchscript(net: torch.nn.Module, path: Path, spec: InputSpec = SPEC) -> Path:
    ts = torch.jit.trace(net, torch.zeros(1, 1, 32, 32))
    raw = spec.to_metadata()[InputSpec.METADATA_KEY]
    torch.jit.save(ts, str(path), _extra_files={"input_spec.json": raw})
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tiny")
    net = tiny_net()
    return export_onnx(net, d / "tiny.onnx"), export_torchscript(net, d / "tiny.pt")


def crops(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8)


def test_onnxruntime_engine_loads_warm_and_infers_probs(tiny: tuple[Path, Path]) -> None:
    eng = load_engine(tiny[0], backend="onnxruntime", max_batch=8)
    assert eng.name == "onnxruntime" and eng.precision == "fp32"
    assert eng.input_spec == SPEC
    p = eng.infer(crops(5))
    assert p.shape == (5, 7) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert eng.infer(crops(0)).shape == (0, 7)


def test_torch_engine_reads_spec_from_extra_file(tiny: tuple[Path, Path]) -> None:
    eng = load_engine(tiny[1], backend="auto", max_batch=4)
    assert eng.name == "torch"
    assert eng.input_spec == SPEC
    np.testing.assert_allclose(eng.infer(crops(3)).sum(axis=1), 1.0, atol=1e-5)


def test_onnx_and_torch_backends_agree_on_same_model(tiny: tuple[Path, Path]) -> None:
    x = crops(64, seed=3)
    a = load_engine(tiny[0], backend="onnxruntime").infer(x)
    b = load_engine(tiny[1], backend="torch").infer(x)
    assert np.abs(a - b).max() < 1e-5
    assert (a.argmax(1) == b.argmax(1)).all()


def test_onnx_without_metadata_falls_back_to_shape_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = export_onnx(tiny_net(), tmp_path / "bare.onnx", spec=None)
    with caplog.at_level(logging.WARNING):
        eng = load_engine(path, backend="onnxruntime", max_batch=2)
    assert (eng.input_spec.channels, eng.input_spec.height, eng.input_spec.width) == (1, 32, 32)
    assert eng.input_spec.mean == (0.5,) and eng.input_spec.colour == "gray"
    assert "carries no input spec" in caplog.text


def test_torch_spec_from_sidecar_json(tmp_path: Path) -> None:
    ts = torch.jit.trace(tiny_net(), torch.zeros(1, 1, 32, 32))
    path = tmp_path / "side.pt"
    torch.jit.save(ts, str(path))
    (tmp_path / "side.json").write_text(
        json.dumps({"channels": 1, "height": 32, "width": 32, "mean": 0.5, "std": 0.5})
    )
    assert load_engine(path, backend="torch", max_batch=2).input_spec == SPEC


def test_load_engine_missing_default_model_says_bootstrap(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"emotion-stream models bootstrap --dir") as e:
        load_engine(tmp_path / "emotion_mini_xception.onnx")
    assert str(tmp_path / "emotion_mini_xception.onnx") in str(e.value)
    assert "\n" not in str(e.value)


def test_load_engine_missing_other_model_says_export(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"emotion-stream export"):
        load_engine(tmp_path / "mine.onnx", backend="onnxruntime")


def test_load_engine_corrupt_onnx_is_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=re.escape(str(bad))):
        load_engine(bad, backend="onnxruntime")


def test_load_engine_corrupt_torchscript_is_model_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(ModelError, match="not a TorchScript model"):
        load_engine(bad)


def test_load_engine_wrong_suffix_is_model_error(tmp_path: Path) -> None:
    f = tmp_path / "model.txt"
    f.write_text("x")
    with pytest.raises(ModelError, match=r"model\.txt"):
        load_engine(f)


def test_load_engine_onnx_on_torch_backend_is_config_error(tiny: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_engine(tiny[0], backend="torch")


def test_load_engine_bad_precision_is_config_error(tiny: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="precision"):
        load_engine(tiny[0], precision="fp8")


def test_resolve_backend_auto_without_tensorrt_picks_onnxruntime(tiny: tuple[Path, Path]) -> None:
    name, reason = resolve_backend(tiny[0], "auto")
    assert name == "onnxruntime" and "tensorrt" in reason
    assert resolve_backend(tiny[1], "auto")[0] == "torch"


def test_load_engine_warms_at_one_and_max_batch(
    tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines.backends.onnxruntime import OnnxRuntimeEngine

    seen: list[tuple[int, ...]] = []
    monkeypatch.setattr(OnnxRuntimeEngine, "warmup", lambda self, sizes=(1,): seen.append(sizes))
    load_engine(tiny[0], backend="onnxruntime", max_batch=16)
    assert seen == [(1, 16)]


def test_parity_onnx_vs_torch_reference_passes(tiny: tuple[Path, Path]) -> None:
    from engines.parity import run_parity

    ref, rows = run_parity(tiny[0], tiny[1], n=64)
    assert ref.startswith("torch fp32 cpu")
    (row,) = [r for r in rows if r.backend == "onnxruntime"]
    assert (
        row.n == 64 and row.passed is True and row.top1_agreement == 1.0 and row.max_abs_diff < 1e-5
    )


def test_parity_flags_a_different_model(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    from engines.parity import run_parity

    other = tiny_net()
    with torch.no_grad():
        other[-2].weight.mul_(-1.0)  # same shapes, flipped classifier: must not pass
    ts = export_torchscript(other, tmp_path / "other.pt")
    _, rows = run_parity(tiny[0], ts, n=64, which=[("onnxruntime", "fp32", None)])
    assert rows[0].passed is False and rows[0].top1_agreement < 0.9


def test_default_crops_are_deterministic_and_varied() -> None:
    from engines.parity import default_crops

    a, b = default_crops(SPEC, 32), default_crops(SPEC, 32)
    assert a.shape == (32, 32, 32) and a.dtype == np.uint8 and (a == b).all()
    assert len({x.tobytes() for x in a}) == 32


def test_bench_rows_have_figures_and_speedup(tiny: tuple[Path, Path]) -> None:
    from engines.bench import bench_engine

    eng = load_engine(tiny[0], backend="onnxruntime", max_batch=8)
    rows = bench_engine(eng, [8, 1], iters=5)
    assert [r.batch for r in rows] == [1, 8]
    assert rows[0].speedup_vs_b1 == 1.0 and rows[1].speedup_vs_b1 is not None
    for r in rows:
        assert (
            r.images_per_s > 0 and 0 < r.p50_ms <= r.p99_ms and r.peak_rss_mb > 0 and r.iters == 5
        )


def test_cli_engines_bench_json(
    tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    rc = main(
        [
            "engines",
            "bench",
            str(tiny[0]),
            "--backend",
            "onnxruntime",
            "--batch-sizes",
            "1,4",
            "--iters",
            "3",
            "--min-seconds",
            "0",
            "--json",
        ]
    )
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert rc == 0 and [r["batch"] for r in rows] == [1, 4]
    assert {"backend", "precision", "batch", "images_per_s", "p50_ms", "p99_ms"} <= set(rows[0])
    assert "bench onnxruntime fp32 batch 4" in out.err


def test_cli_engines_parity_json(
    tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    rc = main(["engines", "parity", str(tiny[0]), "--torch", str(tiny[1]), "--n", "32", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["passed"] is True and doc["rows"][0]["backend"] == "onnxruntime"


def test_cli_engines_list_names_every_backend(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    assert main(["engines", "list", "--json"]) == 0
    rows = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"tensorrt", "onnxruntime", "torch"}
    assert rows["onnxruntime"]["available"] is True


def test_cli_engines_build_without_tensorrt_is_one_line(
    tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from pipeline.cli.main import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    rc = main(["engines", "build", str(tiny[0]), "--precision", "fp16"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and err.startswith("error:") and "tensorrt" in err and "\n" not in err


def test_crops_from_video_detects_and_aligns_every_nth_frame(tmp_path: Path) -> None:
    import av

    from engines.calibrate import load_crops
    from pipeline.core.types import Faces

    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 96, 96, "yuv420p"
        for i in range(12):
            img = np.full((96, 96, 3), 20 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)

    class OneFace:  # test double of the detector: one face at a fixed place
        calls = 0

        def detect(self, image: np.ndarray) -> Faces:
            OneFace.calls += 1
            kps = [[38, 40], [58, 40], [48, 50], [40, 60], [56, 60]]
            return Faces.create([[28, 28, 68, 72]], [0.9], [kps])

    from pipeline.tools import calibration

    got = calibration.crops_from_video(video, SPEC, limit=3, every=2, detector=OneFace())
    assert got.shape == (3, 32, 32) and got.dtype == np.uint8
    assert OneFace.calls == 3  # frames 0, 2, 4 then the limit is reached
    assert got[0].mean() < got[2].mean()  # brighter frames later: real pixels came through
    with pytest.raises(ConfigError, match=r"not a \.npy"):
        load_crops(tmp_path / "nothing.bin", SPEC)
    with pytest.raises(ConfigError, match=r"is a video"):
        load_crops(video, SPEC)


def test_resolve_backend_auto_prefers_torch_cuda_when_onnxruntime_is_cpu_only(
    tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from engines import registry

    monkeypatch.setattr(registry, "cuda_available", lambda: True)
    monkeypatch.setattr(registry, "_ort_has_cuda", lambda: False)
    name, reason = registry.resolve_backend(tiny[0], "auto")
    assert name == "torch" and "torch CUDA" in reason
    monkeypatch.setattr(registry, "_ort_has_cuda", lambda: True)
    assert registry.resolve_backend(tiny[0], "auto")[0] == "onnxruntime"


def test_onnxruntime_fixed_batch_model_runs_in_chunks(tmp_path: Path) -> None:
    net = tiny_net()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(2, 1, 32, 32),),
        str(path),
        input_names=["input"],
        output_names=["probs"],
        dynamo=False,
    )
    eng = load_engine(path, backend="onnxruntime", max_batch=4)
    x = crops(5, seed=7)
    ref = load_engine(export_torchscript(net, tmp_path / "fixed.pt"), backend="torch").infer(x)
    np.testing.assert_allclose(eng.infer(x), ref, atol=1e-5)


def test_cli_engines_parity_on_given_crops(
    tiny: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    np.save(tmp_path / "crops.npy", crops(20, seed=5))
    argv = [
        "engines",
        "parity",
        str(tiny[0]),
        "--torch",
        str(tiny[1]),
        "--crops",
        str(tmp_path / "crops.npy"),
        "--n",
        "12",
        "--json",
    ]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["n"] == 12
