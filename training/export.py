"""Export a run to ONNX (input "input" (N,C,H,W) with a dynamic batch, output "probs" with the
softmax inside, opset 17, the ``InputSpec`` in the metadata) and to TorchScript (the spec as
the extra file ``input_spec.json``), with an ONNX Runtime vs PyTorch parity check."""

from __future__ import annotations

import io
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.base import InputSpec
from pipeline.core.errors import ModelError
from training.model_card import CARD
from training.train import TORCHSCRIPT_SPEC_FILE, LoadedModel

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-4


class WithSoftmax(nn.Module):
    """logits model -> probabilities (so that the exported graph ends in a softmax)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


@dataclass(frozen=True, slots=True)
class Parity:
    max_abs_diff: float
    top1_agreement: float
    n: int


def _probs_module(lm: LoadedModel) -> nn.Module:
    module = lm.module if lm.outputs_probs else WithSoftmax(lm.module)
    return module.cpu().eval()


def parity_inputs(spec: InputSpec, n: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, size=(n, spec.height, spec.width), dtype=np.uint8)
    return spec.normalise(crops)


def export_onnx(lm: LoadedModel, out: Path) -> Path:
    import onnx

    spec = lm.spec
    module = _probs_module(lm)
    dummy = torch.zeros(2, spec.channels, spec.height, spec.width)
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (dummy,),
        buf,  # type: ignore[arg-type]
        input_names=["input"],
        output_names=["probs"],
        dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    proto.producer_name = "emotion-stream"
    props = {**spec.to_metadata(), "arch": lm.name, "source": str(lm.path)}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(proto.SerializeToString())
    return out


def export_torchscript(lm: LoadedModel, out: Path) -> Path:
    spec = lm.spec
    module = _probs_module(lm)
    traced = torch.jit.trace(
        module, torch.zeros(1, spec.channels, spec.height, spec.width), check_trace=False
    )
    spec_json = spec.to_metadata()[InputSpec.METADATA_KEY]
    torch.jit.save(traced, str(out), _extra_files={TORCHSCRIPT_SPEC_FILE: spec_json})
    return out


def check_parity(lm: LoadedModel, onnx_path: Path, tol: float = PARITY_TOLERANCE) -> Parity:
    """ONNX Runtime (CPU) vs PyTorch on the same inputs; ``ModelError`` above ``tol``."""
    import onnxruntime as ort

    x = parity_inputs(lm.spec)
    with torch.no_grad():
        ref = _probs_module(lm)(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["probs"], {"input": x})[0]
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(1) == ref.argmax(1)).mean())
    if not diff <= tol:
        raise ModelError(
            f"{onnx_path} differs from PyTorch by {diff:.3g} (> {tol}): do not deploy it; report the model and opset"
        )
    return Parity(diff, agree, len(x))


def export_run(lm: LoadedModel, out: Path, torchscript: bool = True) -> dict[str, object]:
    """ONNX (+ TorchScript beside it, + the run's model card) and the parity figures."""
    if out.suffix != ".onnx":
        raise ModelError(f"--out {out} must end in .onnx: e.g. models/emotion_cnn.onnx")
    export_onnx(lm, out)
    result: dict[str, object] = {"onnx": str(out)}
    parity = check_parity(lm, out)
    result |= {
        "max_abs_diff": parity.max_abs_diff,
        "top1_agreement": parity.top1_agreement,
        "parity_inputs": parity.n,
    }
    if torchscript:
        ts = export_torchscript(lm, out.with_suffix(".pt"))
        result["torchscript"] = str(ts)
    card = lm.path.parent / CARD
    if card.is_file():
        dest = out.with_suffix(".md")
        shutil.copyfile(card, dest)
        result["model_card"] = str(dest)
    return result
