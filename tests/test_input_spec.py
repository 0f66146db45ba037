"""InputSpec: any emotion model is fed what it was trained on (colour order, size, per-channel
normalisation), whether the spec comes from ONNX metadata, a sidecar JSON or the input shape."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from engines.backends import sidecar_json
from engines.base import MINI_XCEPTION_SPEC, InputSpec
from engines.registry import load_engine
from pipeline.core.enums import ColourOrder
from pipeline.core.errors import ModelError
from pipeline.core.types import CropSpec, Faces
from pipeline.stages.align import align_faces

onnx = pytest.importorskip("onnx")

IMAGENET = InputSpec(
    channels=3,
    height=112,
    width=96,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    colour=ColourOrder.RGB,
)
ANGRY, HAPPY = 0, 3


def colour_onnx(
    path: Path, spec: InputSpec | None = IMAGENET, shape: tuple = ("n", 3, 112, 96)
) -> Path:
    """A tiny ONNX (n,3,H,W) -> (n,7): mean of each channel, then angry = R - B, happy = B - R."""
    from onnx import TensorProto, helper

    w = np.zeros((3, 7), np.float32)
    w[0, ANGRY], w[2, ANGRY], w[0, HAPPY], w[2, HAPPY] = 4, -4, -4, 4
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 7])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if spec is not None:
        for k, v in spec.to_metadata().items():
            p = model.metadata_props.add()
            p.key, p.value = k, v
    onnx.save(model, str(path))
    return path


def patches(spec: InputSpec, rgb: tuple[int, int, int]) -> np.ndarray:
    """Two uniform crops of colour ``rgb``, in the spec's colour order."""
    px = rgb if spec.colour is ColourOrder.RGB else rgb[::-1]
    return np.broadcast_to(np.array(px, np.uint8), spec.crop.shape(2)).copy()


def test_input_spec_default_mini_xception_normalise_is_unchanged() -> None:
    # The hash of the normalised default crops before per-channel specs: bit-identical still.
    rng = np.random.default_rng(7)
    crops = rng.integers(0, 256, (2, 64, 64), dtype=np.uint8)
    x = MINI_XCEPTION_SPEC.normalise(crops)
    ref = ((crops.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5)) / np.float32(0.5))[
        :, None
    ]
    assert x.shape == (2, 1, 64, 64) and x.dtype == np.float32
    assert hashlib.sha256(x.tobytes()).digest() == hashlib.sha256(ref.tobytes()).digest()


def test_input_spec_per_channel_normalise_uses_each_channel() -> None:
    x = IMAGENET.normalise(patches(IMAGENET, (255, 0, 0)))
    assert x.shape == (2, 3, 112, 96)
    want = (np.array([1.0, 0, 0]) - IMAGENET.mean_vec) / IMAGENET.std_vec
    np.testing.assert_allclose(x[0, :, 5, 5], want, rtol=1e-6)


def test_input_spec_metadata_round_trip_and_old_format() -> None:
    assert InputSpec.from_metadata(IMAGENET.to_metadata()) == IMAGENET
    old = {"channels": 1, "height": 64, "width": 64, "mean": 0.5, "std": 0.5}
    old |= {"classes": list(MINI_XCEPTION_SPEC.classes), "dtype": "float32"}
    old |= {"softmax_in_model": True}
    props = {InputSpec.METADATA_KEY: json.dumps(old)}
    assert InputSpec.from_metadata(props) == MINI_XCEPTION_SPEC
    assert MINI_XCEPTION_SPEC.crop == CropSpec(64, 64, ColourOrder.GRAY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"colour": "rgb"}, "does not fit 1 channel"),
        ({"mean": (0.1, 0.2)}, "mean needs 1 or 1 values"),
        ({"std": 0.0}, "std must be > 0"),
        ({"colour": "hsv"}, "hsv"),
    ],
)
def test_input_spec_invalid_fields_raise(kwargs: dict, match: str) -> None:
    base = {"channels": 1, "height": 8, "width": 8, "mean": 0.5, "std": 0.5}
    with pytest.raises(ValueError, match=match):
        InputSpec(**(base | kwargs))


def test_align_faces_colour_and_non_square_crop() -> None:
    img = np.zeros((200, 200, 3), np.uint8)
    img[:, :] = (255, 0, 0)  # BGR blue
    kps = np.array([[[80, 80], [120, 80], [100, 100], [85, 120], [115, 120]]], np.float32)
    faces = Faces.create([[60, 60, 140, 140]], [0.9], kps)
    rgb = align_faces(img, faces, CropSpec(112, 96, ColourOrder.RGB))
    bgr = align_faces(img, faces, CropSpec(112, 96, ColourOrder.BGR))
    gray = align_faces(img, faces, CropSpec(40, 48))
    assert rgb.shape == (1, 112, 96, 3) and gray.shape == (1, 40, 48)
    assert tuple(rgb[0, 50, 50]) == (0, 0, 255) and tuple(bgr[0, 50, 50]) == (255, 0, 0)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_engine_rgb_model_output_depends_on_colour(tmp_path: Path, backend: str) -> None:
    model = colour_onnx(tmp_path / "colour.onnx")
    if backend == "torch":
        model = colour_torchscript(tmp_path / "colour.pt", IMAGENET)
    eng = load_engine(model, backend=backend, max_batch=4)
    assert eng.input_spec == IMAGENET
    red = eng.infer(patches(IMAGENET, (255, 0, 0))).argmax(1)
    blue = eng.infer(patches(IMAGENET, (0, 0, 255))).argmax(1)
    assert red.tolist() == [ANGRY, ANGRY] and blue.tolist() == [HAPPY, HAPPY]


def colour_torchscript(path: Path, spec: InputSpec) -> Path:
    torch = pytest.importorskip("torch")

    class Colour(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            m = x.mean(dim=(2, 3))
            d = (m[:, 0] - m[:, 2]) * 4
            z = torch.zeros_like(d)
            return torch.softmax(torch.stack([d, z, z, -d, z, z, z], 1), 1)

    ts = torch.jit.script(Colour())
    raw = spec.to_metadata()[InputSpec.METADATA_KEY]
    torch.jit.save(ts, str(path), _extra_files={"input_spec.json": raw})
    return path


def test_onnx_sidecar_json_gives_spec_to_foreign_model(tmp_path: Path) -> None:
    model = colour_onnx(tmp_path / "foreign.onnx", spec=None)
    side = tmp_path / "foreign.onnx.json"
    side.write_text(IMAGENET.to_metadata()[InputSpec.METADATA_KEY])
    assert sidecar_json(model) == side
    eng = load_engine(model, backend="onnxruntime", max_batch=2)
    assert eng.input_spec == IMAGENET


def test_onnx_sidecar_json_that_contradicts_model_is_model_error(tmp_path: Path) -> None:
    model = colour_onnx(tmp_path / "foreign.onnx", spec=None)
    side = json.loads(IMAGENET.to_metadata()[InputSpec.METADATA_KEY]) | {"width": 64}
    (tmp_path / "foreign.onnx.json").write_text(json.dumps(side))
    with pytest.raises(ModelError, match="width 64 but the model input has 96"):
        load_engine(model, backend="onnxruntime", max_batch=2)


def test_onnx_without_spec_infers_rgb_from_shape_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = colour_onnx(tmp_path / "bare.onnx", spec=None)
    with caplog.at_level(logging.WARNING):
        eng = load_engine(model, backend="onnxruntime", max_batch=2)
    spec = eng.input_spec
    assert (spec.channels, spec.height, spec.width, spec.colour) == (3, 112, 96, ColourOrder.RGB)
    assert "carries no input spec" in caplog.text and "sidecar" in caplog.text


@pytest.mark.slow
def test_worker_feeds_rgb_model_colour_crops(
    tmp_path: Path, models_dir: Path, t1_image: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    # Real path: H.264 decode -> detector -> track -> align -> batcher -> engine -> events.
    # Skin is redder than blue, so t1.jpg reads "angry"; with R and B swapped it reads "happy".
    # A gray crop repeated into 3 channels (or BGR for RGB) cannot tell the two halves apart.
    import cv2

    from pipeline.cli.main import main
    from tests.clips import write_h264

    img = cv2.resize(t1_image, (640, 442))
    swapped = np.ascontiguousarray(img[..., ::-1])
    clip = write_h264(tmp_path / "colour.mp4", [img] * 3 + [swapped] * 3)
    model = colour_onnx(tmp_path / "colour.onnx")
    out = tmp_path / "events.jsonl"
    argv = ["-q", "run", str(clip), "--models", str(models_dir), "--emotion-model", str(model)]
    assert main([*argv, "--sink", f"jsonl:{out}", "--backend", "onnxruntime"]) == 0
    capsys.readouterr()
    faces = [e for e in map(json.loads, out.read_text().splitlines()) if e["type"] == "face"]
    first = {e["emotion"]["label"] for e in faces if e["frame_num"] < 3}
    second = {e["emotion"]["label"] for e in faces if e["frame_num"] >= 3}
    assert len(faces) >= 30 and first == {"angry"} and second == {"happy"}


def test_settings_backend_precision_transport_are_enums() -> None:
    from pydantic import ValidationError

    from pipeline.core.config import EmotionSettings, SourceSettings
    from pipeline.core.enums import Backend, Precision, RtspTransport

    e = EmotionSettings.model_validate({"backend": "torch", "precision": "fp16"})
    assert e.backend is Backend.TORCH and e.precision is Precision.FP16
    assert (
        SourceSettings.model_validate({"rtsp_transport": "udp"}).rtsp_transport is RtspTransport.UDP
    )
    assert e.model_dump(mode="json")["backend"] == "torch"
    with pytest.raises(ValidationError, match="backend"):
        EmotionSettings.model_validate({"backend": "tensorflow"})


def test_run_unknown_backend_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli.main import main

    assert main(["-q", "run", "x.mp4", "--backend", "tensorflow"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "backend" in err and "\n" not in err


def test_parity_colour_crops_onnxruntime_vs_torch(tmp_path: Path) -> None:
    from engines.parity import compare, default_crops

    ort = load_engine(colour_onnx(tmp_path / "c.onnx"), backend="onnxruntime", max_batch=8)
    pt = load_engine(colour_torchscript(tmp_path / "c.pt", IMAGENET), backend="torch", max_batch=8)
    crops = default_crops(IMAGENET, n=16)
    assert crops.shape == (16, 112, 96, 3) and not (crops[..., 0] == crops[..., 2]).all()
    row = compare("torch", "fp32", "cpu", ort.infer(crops), pt.infer(crops))
    assert row.passed and row.max_abs_diff < 1e-4


def test_calibration_images_read_in_model_colour(tmp_path: Path) -> None:
    import cv2

    from engines.calibrate import load_crops

    img = np.zeros((112, 96, 3), np.uint8)
    img[..., 2] = 200  # BGR red
    cv2.imwrite(str(tmp_path / "a.png"), img)
    crops = load_crops(tmp_path, IMAGENET)
    assert crops.shape == (1, 112, 96, 3) and tuple(crops[0, 0, 0]) == (200, 0, 0)
    assert load_crops(tmp_path, MINI_XCEPTION_SPEC).shape == (1, 64, 64)
