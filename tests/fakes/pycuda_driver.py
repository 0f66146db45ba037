"""A FAKE of ``pycuda.driver``, for unit tests of engines/ only. Not CUDA.

It implements exactly the pycuda surface that ``engines.cuda``, ``engines.trt_runner``,
``engines.calibrate`` and ``engines.cache`` use, and checks the rules real CUDA enforces:

- ``init()``; ``Device(i)`` with ``name()``, ``compute_capability()``, ``total_memory()``,
  ``retain_primary_context()``; ``Device.count()``;
- ``Context``: ``push()``, ``detach()``, and the static ``Context.pop()`` /
  ``Context.get_current()``. The context stack is per thread, as in CUDA;
- ``mem_alloc(nbytes)`` -> ``DeviceAllocation`` (``int()`` is its address, ``free()``);
  ``pagelocked_empty(shape, dtype)``; ``Stream()`` with ``handle`` and ``synchronize()``;
  ``memcpy_htod_async(dest, src, stream)``, ``memcpy_dtoh_async(dest, src, stream)``,
  ``memcpy_htod(dest, src)``.

"Device" memory is host memory (ctypes buffers) so the fake ``tensorrt`` context can read
and write it by address. Every call that needs a context raises ``LogicError`` (like pycuda's
"invalid device context") when the calling thread has none current; async copies from or to
pageable (not page-locked) host memory, and streams used from another thread than their
creator's, are counted in ``PROBLEMS``. ``CALLS`` records (call, detail, thread name).
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from typing import Any

import numpy as np

CALLS: list[tuple[str, Any, str]] = []
PROBLEMS: list[str] = []
LIVE: dict[int, ctypes.Array[ctypes.c_char]] = {}  # address -> buffer of live allocations
PINNED: list[np.ndarray] = []
_tls = threading.local()
_handles = itertools.count(0x1000)
DEVICE_NAME = "Fake GPU 9000"
COMPUTE_CAPABILITY = (8, 9)
initialised = False


class LogicError(RuntimeError):
    """pycuda._driver.LogicError (e.g. no current context)."""


def reset() -> None:
    global initialised
    CALLS.clear()
    PROBLEMS.clear()
    LIVE.clear()
    PINNED.clear()
    initialised = False


def _stack() -> list[Context]:
    if not hasattr(_tls, "stack"):
        _tls.stack = []
    stack: list[Context] = _tls.stack
    return stack


def _record(name: str, detail: Any = None) -> None:
    CALLS.append((name, detail, threading.current_thread().name))


def _need_context(what: str) -> Context:
    if not initialised:
        raise LogicError(f"{what} failed: pycuda.driver.init() was not called")
    stack = _stack()
    if not stack:
        raise LogicError(f"{what} failed: invalid device context (none current on this thread)")
    return stack[-1]


def init() -> None:
    global initialised
    initialised = True
    _record("init")


class Context:
    def __init__(self, device: Device) -> None:
        self.device = device
        self.detached = False

    def push(self) -> None:
        if self.detached:
            raise LogicError("context push failed: context was detached")
        _stack().append(self)
        _record("push", id(self))

    @staticmethod
    def pop() -> None:
        stack = _stack()
        if not stack:
            raise LogicError("context pop failed: no context on this thread")
        ctx = stack.pop()
        _record("pop", id(ctx))

    @staticmethod
    def get_current() -> Context | None:
        stack = _stack()
        return stack[-1] if stack else None

    def detach(self) -> None:
        self.detached = True
        _record("detach", id(self))


class Device:
    def __init__(self, ordinal: int) -> None:
        if not initialised:
            raise LogicError("Device() failed: pycuda.driver.init() was not called")
        if ordinal >= self.count():
            raise LogicError(f"cuDeviceGet failed: invalid device ordinal {ordinal}")
        self.ordinal = ordinal

    @staticmethod
    def count() -> int:
        return 1

    def name(self) -> str:
        return DEVICE_NAME

    def compute_capability(self) -> tuple[int, int]:
        return COMPUTE_CAPABILITY

    def total_memory(self) -> int:
        return 80 << 30

    def retain_primary_context(self) -> Context:
        _record("retain_primary_context", self.ordinal)
        return Context(self)


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._buf = ctypes.create_string_buffer(max(1, nbytes))
        self.address = ctypes.addressof(self._buf)
        LIVE[self.address] = self._buf

    def __int__(self) -> int:
        return self.address

    def free(self) -> None:
        _need_context("cuMemFree")
        if LIVE.pop(self.address, None) is None:
            raise LogicError("cuMemFree failed: double free")
        _record("free", self.nbytes)


def mem_alloc(nbytes: int) -> DeviceAllocation:
    _need_context("cuMemAlloc")
    _record("mem_alloc", int(nbytes))
    return DeviceAllocation(int(nbytes))


def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
    _need_context("cuMemHostAlloc")
    arr = np.empty(shape, dtype)
    PINNED.append(arr)
    _record("pagelocked_empty", (arr.shape, str(arr.dtype)))
    return arr


def _pinned(a: np.ndarray) -> bool:
    return any(np.shares_memory(a, p) for p in PINNED)


class Stream:
    def __init__(self, flags: int = 0) -> None:
        _need_context("cuStreamCreate")
        self.handle = next(_handles)
        self.owner = threading.current_thread().name
        self.pending = 0
        _record("stream", self.handle)

    def synchronize(self) -> None:
        _need_context("cuStreamSynchronize")
        self._check_thread("synchronize")
        _record("synchronize", (self.handle, self.pending))
        self.pending = 0

    def _check_thread(self, what: str) -> None:
        if threading.current_thread().name != self.owner:
            PROBLEMS.append(f"stream {self.handle} used by {what} on another thread")


def _check_device(dev: Any, nbytes: int, what: str) -> int:
    addr = int(dev)
    buf = LIVE.get(addr)
    if buf is None:
        raise LogicError(f"{what} failed: {addr:#x} is not a live device allocation")
    if nbytes > len(buf):
        raise LogicError(f"{what} failed: {nbytes} bytes do not fit in {len(buf)}")
    return addr


def memcpy_htod_async(dest: Any, src: np.ndarray, stream: Stream | None = None) -> None:
    _need_context("cuMemcpyHtoDAsync")
    src = np.asarray(src)
    addr = _check_device(dest, src.nbytes, "cuMemcpyHtoDAsync")
    if not _pinned(src):
        PROBLEMS.append("async host-to-device copy from pageable memory")
    if stream is not None:
        stream._check_thread("memcpy_htod_async")
        stream.pending += 1
    ctypes.memmove(addr, np.ascontiguousarray(src).ctypes.data, src.nbytes)
    _record("htod_async", (src.nbytes, getattr(stream, "handle", 0)))


def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: Stream | None = None) -> None:
    _need_context("cuMemcpyDtoHAsync")
    addr = _check_device(src, dest.nbytes, "cuMemcpyDtoHAsync")
    if not _pinned(dest):
        PROBLEMS.append("async device-to-host copy into pageable memory")
    if not dest.flags.c_contiguous:
        raise LogicError("cuMemcpyDtoHAsync failed: destination is not contiguous")
    if stream is not None:
        stream._check_thread("memcpy_dtoh_async")
        stream.pending += 1
    ctypes.memmove(dest.ctypes.data, addr, dest.nbytes)
    _record("dtoh_async", (dest.nbytes, getattr(stream, "handle", 0)))


def memcpy_htod(dest: Any, src: np.ndarray) -> None:
    _need_context("cuMemcpyHtoD")
    src = np.ascontiguousarray(src)
    addr = _check_device(dest, src.nbytes, "cuMemcpyHtoD")
    ctypes.memmove(addr, src.ctypes.data, src.nbytes)
    _record("htod", src.nbytes)


def current_context() -> Context | None:
    """Test helper (not pycuda): the context current on this thread."""
    return Context.get_current()
