"""A FAKE of the ``tensorrt`` module, for unit tests of engines/ only. Not TensorRT.

It implements exactly the TensorRT 10 Python surface that ``engines.trt_builder``,
``engines.calibrate`` and ``engines.backends.tensorrt`` use, and records the calls:

- ``__version__``; ``Logger`` (``Logger.WARNING`` ...); enums ``TensorIOMode`` (INPUT, OUTPUT),
  ``DataType`` (FLOAT, HALF, INT8), ``BuilderFlag`` (FP16, INT8), ``MemoryPoolType`` (WORKSPACE);
- builder: ``Builder(logger)`` -> ``create_network(flags)``, ``create_builder_config()``,
  ``create_optimization_profile()``, ``build_serialized_network(network, config)``;
  ``OnnxParser(network, logger)`` -> ``parse(bytes)``, ``num_errors``, ``get_error(i)`` (it reads the
  real ONNX input/output names and shapes with the ``onnx`` package); network ``get_input(i)``,
  ``get_output(i)`` with ``.name``/``.shape``; profile ``set_shape(name, min, opt, max)``; config
  ``set_memory_pool_limit``, ``set_flag``, ``int8_calibrator``, ``set_calibration_profile``,
  ``add_optimization_profile``, ``create_timing_cache(bytes)``, ``set_timing_cache(cache, ignore)``,
  ``get_timing_cache().serialize()``, ``progress_monitor``; base classes
  ``IInt8EntropyCalibrator2`` and ``IProgressMonitor``;
- runtime: ``Runtime(logger).deserialize_cuda_engine(bytes)`` -> engine with ``num_io_tensors``,
  ``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``,
  ``get_tensor_profile_shape(name, profile)``, ``create_execution_context()``; context
  ``set_input_shape``, ``get_tensor_shape`` (concrete shapes for the set input),
  ``set_tensor_address``, ``execute_async_v3(stream)``. Network ``num_outputs``.

The "plan" is JSON. A network whose input has no dynamic axis needs no profile (the plan keeps
the static shape). ``execute_async_v3`` needs a CUDA context current on the calling thread (the
fake ``pycuda.driver`` in ``tests/fakes/pycuda_driver.py``) and a live stream handle; it really
reads the float32 input at the bound address and writes float32 outputs at the output addresses
(through ctypes), so the backend's buffer plumbing is checked end to end. One output: the
"model" is softmax(mean(x) * W) with a fixed W. Several outputs (an SCRFD-format detector):
output k holds mean(x of the sample) * (k + 1) everywhere; a dynamic non-batch axis of an output
named ``*_S`` has (H/S)*(W/S)*2 rows (two anchors per location, as SCRFD). It also detects two
threads inside one execution context at once (``FakeContext.overlaps``).
"""

from __future__ import annotations

import ctypes
import enum
import json
import threading
import time
from typing import Any

import numpy as np

__version__ = "10.99.0-fake"

CALLS: list[tuple[str, Any]] = []  # (call name, detail) across the module, for assertions
N_CLASSES = 7
W = np.linspace(-1.0, 1.0, N_CLASSES).astype(np.float32) * 3


def reset() -> None:
    CALLS.clear()


class Logger:
    VERBOSE, INFO, WARNING, ERROR = 4, 3, 2, 1

    def __init__(self, min_severity: int = 2) -> None:
        self.min_severity = min_severity


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class IInt8EntropyCalibrator2:
    def __init__(self) -> None:
        pass


class IProgressMonitor:
    def __init__(self) -> None:
        pass


# ---------------------------------------------------------------------------- builder side
class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name = name
        self.shape = shape


class FakeNetwork:
    def __init__(self) -> None:
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]


class OnnxParser:
    def __init__(self, network: FakeNetwork, logger: Logger) -> None:
        self.network = network
        self.errors: list[str] = []

    def parse(self, data: bytes) -> bool:
        import onnx

        try:
            m = onnx.load_from_string(data)
        except Exception as exc:
            self.errors.append(f"fake parser: {exc}")
            return False
        init = {t.name for t in m.graph.initializer}
        for vi in m.graph.input:
            if vi.name not in init:
                self.network.inputs.append(_Tensor(vi.name, _dims(vi)))
        for vo in m.graph.output:
            self.network.outputs.append(_Tensor(vo.name, _dims(vo)))
        CALLS.append(("parse", len(data)))
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> str:
        return self.errors[i]


def _dims(vi: Any) -> tuple[int, ...]:
    return tuple(
        d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
    )


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeTimingCache:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def serialize(self) -> bytes:
        return self.raw + b"+"


class FakeConfig:
    def __init__(self) -> None:
        self.flags: set[BuilderFlag] = set()
        self.pools: dict[MemoryPoolType, int] = {}
        self.profiles: list[FakeProfile] = []
        self.int8_calibrator: Any = None
        self.calibration_profile: FakeProfile | None = None
        self.timing: FakeTimingCache | None = None
        self.progress_monitor: Any = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, p: FakeProfile) -> int:
        self.profiles.append(p)
        return len(self.profiles) - 1

    def set_calibration_profile(self, p: FakeProfile) -> bool:
        self.calibration_profile = p
        return True

    def create_timing_cache(self, raw: bytes) -> FakeTimingCache:
        CALLS.append(("create_timing_cache", bytes(raw)))
        return FakeTimingCache(bytes(raw))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.timing = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.timing


class Builder:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork()

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> bytes | None:
        mon = config.progress_monitor
        if mon is not None:
            mon.phase_start("Building engine", None, 2)
            mon.step_complete("Building engine", 0)
            mon.step_complete("Building engine", 1)
            mon.phase_finish("Building engine")
        calib_batches = 0
        if BuilderFlag.INT8 in config.flags:
            calib_batches = _run_calibrator(config.int8_calibrator, network.inputs[0].name)
        inp, out = network.inputs[0], network.outputs[0]
        if any(d < 0 for d in inp.shape):
            (profile,) = config.profiles
            shapes = profile.shapes[inp.name]
        else:
            assert not config.profiles, "a static input needs no optimisation profile"
            shapes = (inp.shape, inp.shape, inp.shape)
        plan = {
            "input": inp.name,
            "input_shape": list(inp.shape),
            "output": out.name,
            "outputs": [[o.name, list(o.shape)] for o in network.outputs],
            "profile": shapes,
            "n_out": out.shape[-1] if out.shape[-1] > 0 else N_CLASSES,
            "flags": sorted(f.name for f in config.flags),
            "calib_batches": calib_batches,
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
        }
        CALLS.append(("build", plan))
        return json.dumps(plan).encode()


def _run_calibrator(calib: Any, name: str) -> int:
    """Drive a calibrator as TensorRT would: read every batch from its device pointer."""
    if calib.read_calibration_cache() is not None:
        return 0
    b = calib.get_batch_size()
    n = 0
    while (ptrs := calib.get_batch([name])) is not None:
        assert len(ptrs) == 1 and isinstance(ptrs[0], int)
        n += 1
    calib.write_calibration_cache(b"fake-calibration-table:%d" % (n * b))
    return n


# ---------------------------------------------------------------------------- runtime side
class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        try:
            plan = json.loads(data)
        except ValueError:
            return None
        CALLS.append(("deserialize", len(data)))
        return FakeEngine(plan)


class FakeEngine:
    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.outputs = [str(o[0]) for o in plan["outputs"]]
        self.out_dims = {str(o[0]): tuple(o[1]) for o in plan["outputs"]}
        self.names = [plan["input"], *self.outputs]
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, i: int) -> str:
        return str(self.names[i])

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.plan["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType.FLOAT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == self.plan["input"]:
            return tuple(self.plan["input_shape"])
        if len(self.outputs) == 1:
            return (-1, int(self.plan["n_out"]))
        return self.out_dims[name]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert profile_index == 0
        return [tuple(s) for s in self.plan["profile"]]

    def create_execution_context(self) -> FakeContext:
        ctx = FakeContext(self)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.overlaps = 0
        self._busy = False
        self.delay_s = 0.0

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.calls.append(("set_input_shape", (name, tuple(shape))))
        lo, _opt, hi = self.engine.get_tensor_profile_shape(name, 0)
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """Concrete shape for the input shape set last (as TensorRT infers it)."""
        plan = self.engine.plan
        shape = self.shapes[plan["input"]]
        if name == plan["input"]:
            return shape
        if len(self.engine.outputs) == 1:
            return (shape[0], int(plan["n_out"]))
        dims = self.engine.out_dims[name]
        batched = plan["input_shape"][0] < 0 and len(dims) == 3
        out = [shape[0]] if batched else []
        for d in dims[1:] if batched else dims:
            stride = int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 0
            out.append(
                d if d > 0 else (shape[2] // stride) * (shape[3] // stride) * 2 if stride else 1
            )
        return tuple(out)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.calls.append(("set_tensor_address", (name, ptr)))
        self.addresses[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from tests.fakes import pycuda_driver

        if pycuda_driver.current_context() is None:
            raise RuntimeError("fake TensorRT: execute_async_v3 without a current CUDA context")
        if not isinstance(stream_handle, int) or stream_handle < 0x1000:
            raise RuntimeError(f"fake TensorRT: {stream_handle!r} is not a CUDA stream handle")
        if self._busy:
            self.overlaps += 1
        self._busy = True
        try:
            self.calls.append(
                ("execute_async_v3", (stream_handle, threading.current_thread().name))
            )
            plan = self.engine.plan
            shape = self.shapes[plan["input"]]
            count = int(np.prod(shape))
            x = np.ctypeslib.as_array(
                (ctypes.c_float * count).from_address(self.addresses[plan["input"]])
            )
            x = x.reshape(shape)
            if self.delay_s:
                time.sleep(self.delay_s)
            if len(self.engine.outputs) > 1:
                self._write_detector_outputs(x)
                return True
            logits = x.reshape(shape[0], -1).mean(axis=1, keepdims=True) * W[None, :]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            out = np.ctypeslib.as_array(
                (ctypes.c_float * probs.size).from_address(self.addresses[plan["output"]])
            )
            out[:] = probs.ravel()
            return True
        finally:
            self._busy = False

    def _write_detector_outputs(self, x: np.ndarray) -> None:
        means = x.reshape(len(x), -1).mean(axis=1)
        for k, name in enumerate(self.engine.outputs):
            shape = self.get_tensor_shape(name)
            out = np.ctypeslib.as_array(
                (ctypes.c_float * int(np.prod(shape))).from_address(self.addresses[name])
            ).reshape(shape)
            if len(shape) == 3:  # batched: one block per sample
                out[:] = (means * (k + 1))[:, None, None]
            else:
                out[:] = means[0] * (k + 1)


def reference(x: np.ndarray) -> np.ndarray:
    """What the fake "model" computes on normalised NCHW input (for test expectations)."""
    logits = x.reshape(len(x), -1).mean(axis=1, keepdims=True) * W[None, :]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
