"""The SCRFD-format face detector as a TensorRT plan, behind ONNX Runtime's ``session.run``.

``TensorRTDetectorSession`` builds (or takes from the plan cache) a detector plan with the
same builder as the emotion engines (``engines.trt_builder``, ``kind=detector``: its own
profile, for the detector's input size, and its own cache entry), runs it with
``engines.trt_runner.PlanRunner`` (pycuda buffers, own stream, one owner thread) and answers
``run(output_names, {input_name: blob})`` with the same 9 raw outputs, in the same order and
shapes, as the ONNX Runtime session InsightFace's SCRFD runner would call. Both a fixed batch
of 1 (the bootstrapped model) and a dynamic batch axis are supported; a batch larger than the
plan's is split and concatenated when the outputs carry the batch axis.

``detector_backend`` decides ``auto``: TensorRT when ``tensorrt`` and ``pycuda`` import and a
CUDA device answers, else ONNX Runtime (whose providers ``pipeline.stages.detect`` picks).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.cuda import import_pycuda
from engines.trt_builder import BuildSettings, PlanKind, ensure_plan, import_trt, trt_logger
from engines.trt_runner import PlanRunner
from pipeline.core.errors import ConfigError, EmotionStreamError

logger = logging.getLogger(__name__)


def tensorrt_usable() -> tuple[bool, str]:
    """Whether a TensorRT detector can run here, and why (not)."""
    for package in ("tensorrt", "pycuda"):
        if importlib.util.find_spec(package) is None:
            return False, f"{package} is not installed"
    try:
        cuda = import_pycuda()
        count = int(cuda.Device.count())
    except EmotionStreamError as exc:
        return False, str(exc)
    except Exception as exc:  # pycuda raises its own driver errors without a GPU
        return False, f"CUDA is not usable ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, "no CUDA device"
    return True, f"tensorrt and pycuda import, {count} CUDA device(s)"


def detector_backend(requested: str) -> tuple[str, str]:
    """``tensorrt`` or ``onnxruntime`` for the detector, and the reason."""
    if requested == "onnxruntime":
        return "onnxruntime", "asked for"
    ok, why = tensorrt_usable()
    if requested == "tensorrt":
        if not ok:
            raise ConfigError(
                f"the TensorRT detector cannot run here ({why}): use the GPU image of deploy/ or detector backend auto/onnxruntime"
            )
        return "tensorrt", "asked for"
    if requested != "auto":
        raise ConfigError(
            f"detector backend {requested!r} is not one of auto, tensorrt, onnxruntime: pick one"
        )
    return ("tensorrt", why) if ok else ("onnxruntime", f"TensorRT not usable: {why}")


class _Tensor:
    """What ``session.get_inputs()`` / ``get_outputs()`` items carry (name, shape)."""

    def __init__(self, name: str, shape: list[Any]) -> None:
        self.name = name
        self.shape = shape


class TensorRTDetectorSession:
    """An ONNX Runtime ``InferenceSession`` look-alike over a TensorRT detector plan."""

    def __init__(
        self,
        onnx_path: Path,
        input_hw: tuple[int, int],
        precision: str = "fp16",
        max_batch: int = 1,
        cache_dir: Path | None = None,
        calib: Path | None = None,
        device_index: int = 0,
    ) -> None:
        trt, cuda = import_trt(), import_pycuda()
        settings = BuildSettings(
            kind=PlanKind.DETECTOR,
            precision=precision,
            max_batch=max_batch,
            input_hw=input_hw,
            cache_dir=cache_dir,
            calib=calib,
            device_index=device_index,
        )
        plan, meta, built = ensure_plan(Path(onnx_path), settings, trt)
        self.plan_path = plan
        self.precision = str(meta.get("precision", precision))
        plan_batch = int(meta.get("key", meta).get("max_batch", max_batch))
        self._runner = PlanRunner(
            trt, cuda, plan.read_bytes(), plan, plan_batch, device_index, trt_logger(trt)
        )
        self.output_names = list(self._runner.output_names)
        self.input_name = self._runner.input_name
        logger.info(
            "face detector on TensorRT: %s (%s, batch <= %d, %s)",
            plan,
            self.precision,
            plan_batch,
            "built" if built else "cached",
        )

    # -- the InferenceSession surface InsightFace touches ------------------------------
    def get_inputs(self) -> list[_Tensor]:
        return [_Tensor(self.input_name, [self._runner.max_batch, *self._runner.sample_shape])]

    def get_outputs(self) -> list[_Tensor]:
        return [_Tensor(n, []) for n in self.output_names]

    def get_providers(self) -> list[str]:
        return ["TensorRTPlan"]

    def run(
        self, output_names: list[str] | None, feed: dict[str, npt.NDArray[np.float32]]
    ) -> list[npt.NDArray[np.float32]]:
        """The raw outputs for ``feed`` (one NCHW float32 blob), in ``output_names`` order."""
        (x,) = feed.values()
        x = np.ascontiguousarray(x, np.float32)
        step = self._runner.max_batch
        chunks = [self._runner.run(x[i : i + step]) for i in range(0, len(x), step)]
        if len(chunks) == 1:
            outs = chunks[0]
        elif all(o.ndim == 3 for o in chunks[0]):
            outs = [np.concatenate(parts, axis=0) for parts in zip(*chunks, strict=True)]
        else:
            raise ConfigError(
                f"detector plan {self.plan_path} takes batches of {step} only: use a detector ONNX with a dynamic batch axis"
            )
        by_name = dict(zip(self.output_names, outs, strict=True))
        return [by_name[n] for n in (output_names or self.output_names)]

    def close(self) -> None:
        self._runner.close()


def attach_tensorrt(model: Any, onnx_path: Path, input_size: tuple[int, int], **kw: Any) -> Any:
    """Route an InsightFace SCRFD ``model``'s inference through a TensorRT plan; returns the session.

    ``input_size`` is InsightFace's (width, height). The ONNX Runtime session InsightFace made
    stays for its metadata; every ``forward`` now runs on TensorRT.
    """
    width, height = input_size
    session = TensorRTDetectorSession(onnx_path, (height, width), **kw)
    model.session = session
    model._session_for_input_size = lambda _size: session
    return session
