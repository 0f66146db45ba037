"""TensorRT backend (TensorRT 10 named-tensor API) on pycuda buffers, streams and contexts.

An ``.onnx`` model is built into a plan (or taken from the plan cache, ``engines.cache``);
a ``.plan``/``.engine`` is loaded only if the metadata JSON beside it names this TensorRT
version and this GPU, otherwise ModelError says to rebuild. Running is ``engines.trt_runner``:
device buffers for the largest batch and page-locked host buffers allocated once, their
addresses bound once, the engine's own CUDA stream, async copies and ``execute_async_v3``,
all on one owner thread that holds the CUDA context (the batcher's thread hands it batches).
No torch: the GPU image has TensorRT and pycuda only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from engines import cache as plan_cache
from engines.backends import check_precision, require_file, spec_from_json
from engines.base import Engine, InputSpec
from engines.cuda import import_pycuda
from engines.trt_builder import BuildSettings, ensure_plan, import_trt, trt_logger
from engines.trt_runner import PlanRunner
from pipeline.core.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


class TensorRTConfig(BaseModel):
    """Options of the TensorRT backend (building options apply to .onnx models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cache_dir: Path | None = Field(
        None,
        description="Plan cache folder (default ES_ENGINE_CACHE or ~/.cache/emotion-stream/engines).",
    )
    opt_batch: int | None = Field(
        None, ge=1, description="Batch the plan is tuned for; None uses max_batch."
    )
    workspace_mb: int = Field(1024, ge=16, description="Builder workspace limit, MiB.")
    calib: Path | None = Field(
        None, description="int8 calibration crops (folder of images or .npy)."
    )
    device_index: int = Field(0, ge=0, description="CUDA device index.")


class TensorRTEngine(Engine):
    """A TensorRT emotion plan run by a ``PlanRunner`` (one owner thread per execution context)."""

    name = "tensorrt"

    def __init__(
        self,
        model: Path,
        precision: str = "fp16",
        max_batch: int = 32,
        device: str | None = None,
        config: TensorRTConfig | None = None,
    ) -> None:
        trt = import_trt()
        self._trt = trt
        self._cuda = import_pycuda()
        self.config = config or TensorRTConfig()
        self.model = require_file(Path(model), (".onnx", ".plan", ".engine"), "emotion")
        self.precision = check_precision(precision)
        if device not in (None, "cuda") and not str(device).startswith("cuda:"):
            raise ConfigError(
                f"the tensorrt backend runs on CUDA devices, not {device!r}: pass cuda:N"
            )
        index = (
            int(str(device).split(":")[1]) if device and ":" in device else self.config.device_index
        )
        self.config = self.config.model_copy(update={"device_index": index})
        self.device = f"cuda:{index}"
        plan_path, meta = self._plan(max_batch)
        self.plan_path = plan_path
        self._spec = spec_from_json(json.dumps(meta["input_spec"]), f"{plan_path}.json")
        self.precision = str(meta.get("precision", self.precision))
        self._runner = PlanRunner(
            trt, self._cuda, plan_path.read_bytes(), plan_path, max_batch, index, trt_logger(trt)
        )
        self.max_batch = max_batch
        logger.info(
            "tensorrt engine %s (%s, max batch %d) on %s",
            plan_path,
            self.precision,
            self.max_batch,
            self.device,
        )

    # ------------------------------------------------------------------ loading
    def _plan(self, max_batch: int) -> tuple[Path, dict[str, Any]]:
        if self.model.suffix.lower() == ".onnx":
            settings = BuildSettings(
                precision=self.precision,
                max_batch=max_batch,
                opt_batch=self.config.opt_batch,
                workspace_mb=self.config.workspace_mb,
                calib=self.config.calib,
                cache_dir=self.config.cache_dir,
                device_index=self.config.device_index,
            )
            path, meta, _built = ensure_plan(self.model, settings, self._trt)
            return path, meta
        found = plan_cache.read_plan_meta(self.model)
        if found is None:
            raise ModelError(
                f"{self.model} has no metadata JSON beside it ({self.model.with_suffix('.json').name}): build plans with `emotion-stream engines build`"
            )
        self._check_compatible(found)
        return self.model, found

    def _check_compatible(self, meta: dict[str, Any]) -> None:
        gpu = plan_cache.gpu_identity(self.config.device_index)
        key = meta.get("key", meta)
        want = {
            "trt_version": str(self._trt.__version__),
            "gpu_name": gpu.name,
            "compute_capability": gpu.compute_capability,
        }
        have = {k: key.get(k) for k in want}
        if have != want:
            raise ModelError(
                f"{self.model} was built for {have}, this machine is {want}: rebuild it with `emotion-stream engines build {key.get('source_onnx', meta.get('source_onnx', 'MODEL.onnx'))}`"
            )

    # ------------------------------------------------------------------ inference
    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outs = [
            self._runner.run(x[i : i + self.max_batch])[0] for i in range(0, len(x), self.max_batch)
        ]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def close(self) -> None:
        self._runner.close()
