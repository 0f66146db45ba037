"""CUDA through pycuda, without torch: the device's primary context, who may use it, and where.

pycuda is the CUDA binding of the TensorRT path (``engines.backends.tensorrt``,
``engines.trt_runner``, ``engines.calibrate``). A CUDA context is current per *thread*:
work done on a thread that did not push it fails (or lands in another context). Two tools:

- ``pushed(ctx)``: push a context on the calling thread for a block and pop it afterwards,
  also when the block raises (the int8 calibrator uses it around a build);
- ``CudaOwner``: one thread that owns a context for its whole life. Every CUDA call of an
  execution context runs on that thread (``call``), so callers on any thread (the batcher's,
  a stream's) never need the context themselves; ``close`` pops and releases it there.

The primary context (``Device.retain_primary_context``) is the one the CUDA runtime, and so
TensorRT and ONNX Runtime, use too: buffers from pycuda and TensorRT's own allocations share it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.core.errors import MissingDependencyError

logger = logging.getLogger(__name__)

T = TypeVar("T")

PYCUDA_INSTALL = (
    "pycuda builds from source against the CUDA headers: `pip install pycuda` on a machine with "
    "the CUDA toolkit (the GPU image of deploy/ does this)"
)


def import_pycuda() -> Any:
    """The ``pycuda.driver`` module (initialised), or MissingDependencyError saying how to get it."""
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise MissingDependencyError(
            "pycuda", "the TensorRT engine backend", PYCUDA_INSTALL
        ) from exc
    cuda.init()
    return cuda


def primary_context(cuda: Any, device_index: int) -> Any:
    """The primary context of device ``device_index`` (retained; not yet pushed)."""
    return cuda.Device(device_index).retain_primary_context()


@contextmanager
def pushed(cuda: Any, ctx: Any) -> Iterator[Any]:
    """``ctx`` current on this thread inside the block; popped afterwards (also on errors)."""
    ctx.push()
    try:
        yield ctx
    finally:
        cuda.Context.pop()


class CudaOwner:
    """A thread that owns one CUDA context; ``call(fn, ...)`` runs ``fn`` there, with it current."""

    def __init__(self, cuda: Any, device_index: int, name: str) -> None:
        self._cuda = cuda
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._closed = False
        self._close_lock = threading.Lock()
        self.context: Any = self._pool.submit(self._enter, device_index).result()
        self.thread_name: str = self._pool.submit(lambda: threading.current_thread().name).result()

    def _enter(self, device_index: int) -> Any:
        ctx = primary_context(self._cuda, device_index)
        ctx.push()
        logger.debug("%s: CUDA context of device %d pushed", self.name, device_index)
        return ctx

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the owner thread and return its result (or raise its error)."""
        if self._closed:
            raise RuntimeError(f"{self.name}: CUDA owner thread is closed")
        return self._pool.submit(fn, *args).result()

    def close(self, release: Callable[[], None] | None = None) -> None:
        """Run ``release`` on the owner thread, pop and detach the context, end the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._pool.submit(self._leave, release).result()
        finally:
            self._pool.shutdown(wait=True)

    def _leave(self, release: Callable[[], None] | None) -> None:
        try:
            if release is not None:
                release()
        finally:
            self._cuda.Context.pop()
            self.context.detach()
            logger.debug("%s: CUDA context popped and released", self.name)


@dataclass(frozen=True, slots=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str
    memory_mib: int


@dataclass(frozen=True, slots=True)
class DriverProbe:
    """What the NVIDIA driver (``libcuda``) says, read through ctypes: no torch, no pycuda."""

    ok: bool
    reason: str
    driver_cuda_version: str | None = None
    devices: tuple[CudaDevice, ...] = ()


@functools.cache
def probe_driver() -> DriverProbe:
    """Ask ``libcuda.so.1`` for the driver's CUDA version and the visible devices."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return DriverProbe(False, "libcuda.so.1 is not loadable: no NVIDIA driver on this machine")
    rc = lib.cuInit(0)
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    cuda_version = (
        f"{version.value // 1000}.{version.value % 1000 // 10}" if version.value else None
    )
    if rc != 0:
        why = {100: "no CUDA-capable device is visible"}.get(rc, f"CUDA error {rc}")
        return DriverProbe(False, f"cuInit failed: {why}", cuda_version)
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    devices = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        mem, name = ctypes.c_size_t(0), ctypes.create_string_buffer(256)
        lib.cuDeviceGet(ctypes.byref(dev), i)
        lib.cuDeviceGetName(name, 256, dev)
        lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # COMPUTE_CAPABILITY_MAJOR
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # COMPUTE_CAPABILITY_MINOR
        devices.append(
            CudaDevice(i, name.value.decode(), f"{major.value}.{minor.value}", mem.value >> 20)
        )
    if not devices:
        return DriverProbe(False, "the driver sees no CUDA device", cuda_version)
    return DriverProbe(True, f"{len(devices)} CUDA device(s)", cuda_version, tuple(devices))
