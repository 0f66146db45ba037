"""Run a TensorRT plan (TensorRT 10 named tensors) with pycuda buffers: one input, N outputs.

Allocated once, on load, for the largest batch of the plan's profile: one device buffer per
I/O tensor (``mem_alloc``) and one page-locked host buffer per tensor (``pagelocked_empty``),
their device addresses bound once (``set_tensor_address``), and the runner's own CUDA stream.
A call sets the batch (``set_input_shape``), copies host -> device, runs ``execute_async_v3``
and copies device -> host, all asynchronously on that stream, then waits for the stream.

Every CUDA call happens on one owner thread (``engines.cuda.CudaOwner``) that holds the
context: the execution context has one owner, and callers on any other thread (the batcher's)
hand their batch to it. Used by the emotion backend (``engines.backends.tensorrt``) and the
detector (``engines.detector_trt``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.cuda import CudaOwner
from pipeline.core.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Binding:
    """One I/O tensor: its name, element type, device buffer and page-locked host buffer."""

    name: str
    dtype: np.dtype[Any]
    device: Any  # pycuda DeviceAllocation (int() is the address)
    host: npt.NDArray[Any]  # flat, page-locked, sized for the largest batch


def numpy_dtype(trt: Any, dt: Any, plan: Path) -> np.dtype[Any]:
    table: dict[Any, np.dtype[Any]] = {
        trt.DataType.FLOAT: np.dtype(np.float32),
        trt.DataType.HALF: np.dtype(np.float16),
    }
    if dt not in table:
        raise ModelError(
            f"{plan}: TensorRT tensor type {dt} is not supported here: build it with fp32 I/O (`emotion-stream engines build`)"
        )
    return table[dt]


class PlanRunner:
    """A deserialized plan, its execution context and buffers, owned by one CUDA thread."""

    def __init__(
        self,
        trt: Any,
        cuda: Any,
        plan_bytes: bytes,
        plan_path: Path,
        max_batch: int,
        device_index: int = 0,
        logger_: Any = None,
    ) -> None:
        self._trt, self._cuda, self.plan_path = trt, cuda, Path(plan_path)
        self.owner = CudaOwner(cuda, device_index, f"trt-{self.plan_path.stem[:24]}")
        try:
            self.owner.call(self._load, plan_bytes, max_batch, logger_)
        except BaseException:
            self.owner.close()
            raise

    # ------------------------------------------------------------------ loading (owner thread)
    def _load(self, plan_bytes: bytes, max_batch: int, logger_: Any) -> None:
        trt = self._trt
        self._runtime = trt.Runtime(logger_ or trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(plan_bytes)
        if self._engine is None:
            raise ModelError(
                f"TensorRT cannot deserialize {self.plan_path}: rebuild it with `emotion-stream engines build`"
            )
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not self.output_names:
            raise ModelError(
                f"{self.plan_path} has inputs {inputs} and outputs {self.output_names}; expected one input and at least one output"
            )
        self.input_name = inputs[0]
        lo, hi = self._input_bounds()
        if max_batch > hi[0]:
            raise ConfigError(
                f"{self.plan_path} allows batches up to {hi[0]}, not {max_batch}: lower --max-batch or rebuild the plan"
            )
        self.max_batch, self.min_batch, self.sample_shape = max_batch, lo[0], hi[1:]
        self._context = eng.create_execution_context()
        if self._context is None:
            raise ModelError(
                f"TensorRT could not create an execution context for {self.plan_path}: free GPU memory"
            )
        if not self._context.set_input_shape(self.input_name, (max_batch, *self.sample_shape)):
            raise ModelError(f"{self.plan_path} rejects batch {max_batch}: rebuild the plan")
        self._stream = self._cuda.Stream()
        self.bindings = [self._allocate(n) for n in [self.input_name, *self.output_names]]
        for b in self.bindings:
            if not self._context.set_tensor_address(b.name, int(b.device)):
                raise ModelError(
                    f"TensorRT rejected the buffer of tensor {b.name} in {self.plan_path}: rebuild the plan"
                )

    def _input_bounds(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(smallest, largest) input shape: the static shape, or profile 0's min and max."""
        eng = self._engine
        static = tuple(int(d) for d in eng.get_tensor_shape(self.input_name))
        if all(d > 0 for d in static):
            return static, static
        lo, _opt, hi = eng.get_tensor_profile_shape(self.input_name, 0)
        return tuple(int(d) for d in lo), tuple(int(d) for d in hi)

    def _allocate(self, name: str) -> Binding:
        dtype = numpy_dtype(self._trt, self._engine.get_tensor_dtype(name), self.plan_path)
        shape = tuple(int(d) for d in self._context.get_tensor_shape(name))  # at max batch
        count = max(1, math.prod(shape))
        host = self._cuda.pagelocked_empty(count, dtype)
        device = self._cuda.mem_alloc(count * dtype.itemsize)
        logger.debug("%s: %s %s %s allocated", self.plan_path.name, name, shape, dtype)
        return Binding(name, dtype, device, host)

    # ------------------------------------------------------------------ running
    def run(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Outputs (float32 copies, engine order) for one batch of at most ``max_batch``."""
        if not 1 <= len(x) <= self.max_batch:
            raise ConfigError(
                f"batch {len(x)} is outside 1..{self.max_batch} of {self.plan_path}: split it or rebuild with a larger --max-batch"
            )
        return self.owner.call(self._run_on_owner, x)

    def _run_on_owner(self, x: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        cuda, ctx, stream = self._cuda, self._context, self._stream
        n = len(x)
        if not ctx.set_input_shape(self.input_name, (n, *x.shape[1:])):
            raise ConfigError(
                f"input {tuple(x.shape)} is outside the profile of {self.plan_path}: rebuild the plan for it"
            )
        inp = self.bindings[0]
        staged = inp.host[: x.size].reshape(x.shape)
        staged[...] = x  # into page-locked memory (and the engine's dtype)
        cuda.memcpy_htod_async(inp.device, staged, stream)
        if not ctx.execute_async_v3(stream.handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.plan_path} (batch {n})")
        views = []
        for b in self.bindings[1:]:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(b.name))
            view = b.host[: math.prod(shape)].reshape(shape)
            cuda.memcpy_dtoh_async(view, b.device, stream)
            views.append(view)
        stream.synchronize()
        return [np.array(v, dtype=np.float32) for v in views]

    def close(self) -> None:
        """Free the buffers and the context on the owner thread, then end it."""
        self.owner.close(self._release)

    def _release(self) -> None:
        for b in getattr(self, "bindings", []):
            b.device.free()
        self.bindings = []
        self._context = None
        self._engine = None
