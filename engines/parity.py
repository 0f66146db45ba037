"""Parity: every available backend against a PyTorch (or, without one, ONNX Runtime fp32)
reference on the same crops: max/mean abs difference of the probabilities and top-1 agreement.

Thresholds per precision: fp32 and fp16 must agree on top-1 for at least 99.5% of crops and stay
under a max abs difference; int8 is reported, not judged. Crops: pass real aligned face crops
(``.npy`` of uint8 (n,H,W) or a folder of crop images); the default is a fixed-seed mix of noise
and smooth gradient images, which exercises the numerics but says nothing about accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.base import Engine, InputSpec
from engines.registry import availability, cuda_available, load_engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Threshold:
    min_agreement: float | None
    max_abs: float | None


THRESHOLDS: dict[str, Threshold] = {
    "fp32": Threshold(0.995, 1e-3),
    "fp16": Threshold(0.995, 2e-2),
    "int8": Threshold(None, None),
}


@dataclass(frozen=True, slots=True)
class ParityRow:
    backend: str
    precision: str
    device: str
    n: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    passed: bool | None  # None: reported only (int8)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_crops(spec: InputSpec, n: int = 256, seed: int = 0) -> npt.NDArray[np.uint8]:
    """Fixed-seed crops: half uniform noise, half smooth gradients with low-frequency blobs;
    (n, H, W) for a gray spec, (n, H, W, 3) in the spec's colour order for a colour one."""
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    noise = rng.integers(0, 256, (n // 2, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    smooth = []
    for _ in range(n - n // 2):
        a, b, c = rng.uniform(-1, 1, 3)
        img = a * xx / w + b * yy / h + c
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(h / 8, h / 2)
        img += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img = (img - img.min()) / max(float(np.ptp(img)), 1e-6)
        smooth.append((img * 255).astype(np.uint8))
    crops = np.concatenate([noise, np.stack(smooth)])
    if spec.channels == 3:  # colour crops: three different gray sets as the channels
        crops = np.stack([crops, np.roll(crops, 1, axis=0), np.roll(crops, 2, axis=0)], axis=-1)
    return crops


def compare(
    backend: str,
    precision: str,
    device: str,
    ref: npt.NDArray[np.float32],
    got: npt.NDArray[np.float32],
) -> ParityRow:
    diff = np.abs(ref - got)
    agree = float((ref.argmax(1) == got.argmax(1)).mean()) if len(ref) else 1.0
    th = THRESHOLDS[precision]
    passed: bool | None = None
    if th.min_agreement is not None and th.max_abs is not None:
        passed = agree >= th.min_agreement and float(diff.max()) <= th.max_abs
    return ParityRow(
        backend, precision, device, len(ref), float(diff.max()), float(diff.mean()), agree, passed
    )


def candidates(has_torch_model: bool, int8: bool = False) -> list[tuple[str, str, str | None]]:
    """(backend, precision, device) to compare here: what is installed and has a device."""
    out: list[tuple[str, str, str | None]] = []
    if availability("onnxruntime").available:
        out.append(("onnxruntime", "fp32", None))
    if has_torch_model and cuda_available():
        out += [("torch", "fp32", "cuda"), ("torch", "fp16", "cuda")]
    if availability("tensorrt").available:
        out += [("tensorrt", "fp32", None), ("tensorrt", "fp16", None)]
        if int8:
            out.append(("tensorrt", "int8", None))
    return out


def _device_of(engine: Engine) -> str:
    dev = getattr(engine, "device", None)
    if dev is not None:
        return str(dev)
    return ",".join(getattr(engine, "providers", [])) or "?"


def run_parity(
    onnx_model: Path,
    torch_model: Path | None = None,
    crops: npt.NDArray[np.uint8] | None = None,
    n: int = 256,
    which: list[tuple[str, str, str | None]] | None = None,
    max_batch: int = 32,
    int8_calib: Path | None = None,
) -> tuple[str, list[ParityRow]]:
    """Compare backends with the reference; returns (reference description, rows)."""
    onnx_model = Path(onnx_model)
    if torch_model is None and onnx_model.with_suffix(".pt").is_file():
        torch_model = onnx_model.with_suffix(".pt")
    if torch_model is not None:
        ref_engine = load_engine(torch_model, backend="torch", device="cpu", max_batch=max_batch)
        ref_name = f"torch fp32 cpu ({torch_model})"
    else:
        ref_engine = load_engine(
            onnx_model, backend="onnxruntime", device="cpu", max_batch=max_batch
        )
        ref_name = f"onnxruntime fp32 cpu ({onnx_model}; no TorchScript model given)"
    spec = ref_engine.input_spec
    x = default_crops(spec, n) if crops is None else crops
    ref = ref_engine.infer(x)
    rows = []
    for backend, precision, device in (
        which if which is not None else candidates(torch_model is not None)
    ):
        model = torch_model if backend == "torch" else onnx_model
        if model is None:
            continue
        logger.info("parity: %s %s on %d crops", backend, precision, len(x))
        eng = load_engine(
            model, backend=backend, precision=precision, device=device, max_batch=max_batch
        )
        rows.append(compare(backend, eng.precision, device or _device_of(eng), ref, eng.infer(x)))
        eng.close()
    return ref_name, rows
