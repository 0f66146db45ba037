"""TensorRT backend (TensorRT 10 named-tensor API), buffers and stream through torch CUDA.

An ``.onnx`` model is built into a plan (or taken from the plan cache, ``engines.cache``);
a ``.plan``/``.engine`` is loaded only if the metadata JSON beside it names this TensorRT
version and this GPU, otherwise ModelError says to rebuild. One execution context; device
buffers for the largest batch and pinned host buffers are allocated once and their addresses
bound once (``set_tensor_address``); each call sets the batch (``set_input_shape``) and runs
``execute_async_v3`` on the engine's own CUDA stream. A lock makes the context single-owner
(in the worker the batcher's thread is its only caller). pycuda is not used: it needs the
CUDA headers to build, while torch ships the CUDA runtime already.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from engines import cache as plan_cache
from engines.backends import check_precision, require_file, spec_from_json
from engines.base import Engine, InputSpec
from engines.trt_builder import BuildSettings, ensure_plan, import_trt, trt_logger
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


def _torch_dtype(trt: Any, dt: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dt not in table:
        raise ModelError(
            f"TensorRT tensor type {dt} is not supported here: build with fp32 I/O (`emotion-stream engines build`)"
        )
    return table[dt]


class TensorRTEngine(Engine):
    """A TensorRT plan with one execution context guarded by a lock."""

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
        self.config = config or TensorRTConfig()
        self.model = require_file(Path(model), (".onnx", ".plan", ".engine"), "emotion")
        self.precision = check_precision(precision)
        # "cpu" buffers exist only so the plumbing can be unit-tested against a fake tensorrt module.
        self.device = device or f"cuda:{self.config.device_index}"
        plan_path, meta = self._plan(max_batch)
        self.plan_path = plan_path
        self._spec = spec_from_json(json.dumps(meta["input_spec"]), f"{plan_path}.json")
        self.precision = str(meta.get("precision", self.precision))
        self._lock = threading.Lock()
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self._engine is None:
            raise ModelError(
                f"TensorRT cannot deserialize {plan_path}: rebuild it with `emotion-stream engines build`"
            )
        self._bind_io(max_batch)
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
                calib_device=self.device,
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

    def _bind_io(self, max_batch: int) -> None:
        import torch

        trt, eng = self._trt, self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{self.plan_path} has inputs {inputs} and outputs {outputs}; expected one input and one output"
            )
        self._in, self._out = inputs[0], outputs[0]
        profile_max = int(next(iter(eng.get_tensor_profile_shape(self._in, 0)[2])))
        if max_batch > profile_max:
            raise ConfigError(
                f"{self.plan_path} allows batches up to {profile_max}, not {max_batch}: lower --max-batch or rebuild the plan"
            )
        self.max_batch = max_batch
        s = self._spec
        n_out = int(tuple(eng.get_tensor_shape(self._out))[-1])
        cuda = self.device.startswith("cuda")
        in_dt, out_dt = (
            _torch_dtype(trt, eng.get_tensor_dtype(self._in)),
            _torch_dtype(trt, eng.get_tensor_dtype(self._out)),
        )
        self._d_in = torch.empty(
            (max_batch, s.channels, s.height, s.width), dtype=in_dt, device=self.device
        )
        self._d_out = torch.empty((max_batch, n_out), dtype=out_dt, device=self.device)
        self._h_in = torch.empty(tuple(self._d_in.shape), dtype=torch.float32, pin_memory=cuda)
        self._h_out = torch.empty(tuple(self._d_out.shape), dtype=out_dt, pin_memory=cuda)
        self._stream = torch.cuda.Stream(device=self.device) if cuda else None
        self._context = eng.create_execution_context()
        if self._context is None:
            raise ModelError(
                f"TensorRT could not create an execution context for {self.plan_path}: free GPU memory"
            )
        for name, buf in ((self._in, self._d_in), (self._out, self._d_out)):
            if not self._context.set_tensor_address(name, int(buf.data_ptr())):
                raise ModelError(
                    f"TensorRT rejected the buffer of tensor {name} in {self.plan_path}: rebuild the plan"
                )

    # ------------------------------------------------------------------ inference
    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    def run(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        outs = []
        with self._lock:
            for i in range(0, len(x), self.max_batch):
                outs.append(self._run_chunk(x[i : i + self.max_batch]))
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    def _run_chunk(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import torch

        n = len(x)
        s = self._spec
        self._h_in[:n].copy_(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
        if not self._context.set_input_shape(self._in, (n, s.channels, s.height, s.width)):
            raise ConfigError(
                f"batch {n} is outside the profile of {self.plan_path}: rebuild with a larger --max-batch"
            )
        if self._stream is None:
            self._d_in[:n].copy_(self._h_in[:n])
            ok = self._context.execute_async_v3(0)
            self._h_out[:n].copy_(self._d_out[:n])
        else:
            with torch.cuda.stream(self._stream):
                self._d_in[:n].copy_(self._h_in[:n], non_blocking=True)
                ok = self._context.execute_async_v3(self._stream.cuda_stream)
                self._h_out[:n].copy_(self._d_out[:n], non_blocking=True)
            self._stream.synchronize()
        if not ok:
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.plan_path} (batch {n})")
        out: npt.NDArray[np.float32] = self._h_out[:n].float().numpy().copy()
        return out

    def close(self) -> None:
        with self._lock:
            self._context = None
            self._engine = None
