"""The explicit registry of engine backends and ``load_engine``, which returns a warm engine.

Backends are named here as ``"module:Class"`` and imported only when chosen, so a missing
optional dependency (tensorrt, torch, onnxruntime) fails only the backend that needs it.

``backend="auto"``: a ``.plan``/``.engine`` file -> tensorrt; a ``.pt`` -> torch; an ``.onnx``
-> tensorrt when ``tensorrt`` imports and CUDA is present (the plan is built or taken from the
cache), else onnxruntime with its CUDA execution provider, else torch on CUDA when a TorchScript
``MODEL.pt`` sits beside the ONNX (GPU machines with a CPU-only onnxruntime), else onnxruntime
on CPU. The choice and its
reason are logged; ``engine.name`` and ``engine.precision`` say what runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.backends import check_precision, require_file
from engines.base import Engine
from pipeline.core.errors import ConfigError, MissingDependencyError

logger = logging.getLogger(__name__)

#: backend name -> "module:Class" (imported lazily).
BACKENDS: dict[str, str] = {
    "tensorrt": "engines.backends.tensorrt:TensorRTEngine",
    "onnxruntime": "engines.backends.onnxruntime:OnnxRuntimeEngine",
    "torch": "engines.backends.torch:TorchEngine",
}

#: backend name -> (package it imports, how to install it).
REQUIREMENTS: dict[str, tuple[str, str]] = {
    "tensorrt": (
        "tensorrt",
        "TensorRT is not on the package registries: use the GPU image of deploy/ (NVIDIA base image) "
        "or `pip install tensorrt --extra-index-url https://pypi.nvidia.com` on a CUDA machine",
    ),
    "onnxruntime": ("onnxruntime", "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA)"),
    "torch": ("torch", "pip install torch"),
}

#: model file suffixes each backend reads.
SUFFIXES: dict[str, tuple[str, ...]] = {
    "tensorrt": (".onnx", ".plan", ".engine"),
    "onnxruntime": (".onnx",),
    "torch": (".pt", ".pth", ".ts"),
}


@dataclass(frozen=True, slots=True)
class Availability:
    backend: str
    available: bool
    reason: str


def cuda_available() -> bool:
    """True when the CUDA driver reports a device (asked through ``libcuda``, never torch,
    so the CPU worker path stays free of torch's import time and ~300 MB of RSS)."""
    return cuda_device_count() > 0


def cuda_device_count() -> int:
    """CUDA devices the driver library sees (0 without a driver or a device)."""
    import ctypes
    import ctypes.util

    names = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.insert(0, found)
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:
            return 0
        return int(count.value)
    return 0


def _importable(package: str) -> tuple[bool, str]:
    try:
        importlib.import_module(package)
    except Exception as exc:
        return (
            False,
            f"{package} does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )
    return True, f"{package} imports"


def availability(backend: str) -> Availability:
    """Whether ``backend`` can run here, and why (not)."""
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown engine backend {backend!r}: pick one of auto, {', '.join(BACKENDS)}"
        )
    package, install = REQUIREMENTS[backend]
    ok, why = _importable(package)
    if not ok:
        return Availability(backend, False, f"{why}; {install}")
    if backend == "tensorrt" and not cuda_available():
        return Availability(backend, False, "tensorrt imports but no CUDA device is visible")
    if backend == "onnxruntime":
        import onnxruntime

        return Availability(
            backend,
            True,
            f"onnxruntime {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}",
        )
    if backend == "torch":
        import torch

        return Availability(
            backend, True, f"torch {torch.__version__}, cuda={'yes' if cuda_available() else 'no'}"
        )
    return Availability(backend, True, why)


def list_backends() -> list[Availability]:
    return [availability(b) for b in BACKENDS]


def resolve_backend(model: Path, backend: str = "auto") -> tuple[str, str]:
    """The backend to use for ``model`` and the reason for the choice."""
    suffix = Path(model).suffix.lower()
    if backend != "auto":
        a = availability(backend)
        if not a.available:
            package, install = REQUIREMENTS[backend]
            if backend == "tensorrt" and a.reason.startswith("tensorrt imports"):
                raise ConfigError(
                    f"tensorrt backend for {model} needs a CUDA GPU and none is visible: use --backend onnxruntime"
                )
            raise MissingDependencyError(package, f"the {backend} engine backend", install)
        return backend, "asked for"
    if suffix in (".plan", ".engine"):
        return "tensorrt", f"{suffix} is a TensorRT plan"
    if suffix in SUFFIXES["torch"]:
        return "torch", f"{suffix} is a TorchScript model"
    trt = availability("tensorrt")
    if trt.available:
        return "tensorrt", "tensorrt imports and a CUDA device is present"
    why = f"tensorrt not usable ({trt.reason.split(';')[0]})"
    if _ort_has_cuda():
        return "onnxruntime", f"{why}; onnxruntime has the CUDA execution provider"
    if cuda_available() and Path(model).with_suffix(".pt").is_file():
        return (
            "torch",
            f"{why}; onnxruntime has no CUDA provider, torch CUDA runs the TorchScript beside it",
        )
    return "onnxruntime", f"{why}; onnxruntime on CPU"


def _ort_has_cuda() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def backend_class(backend: str) -> type[Engine]:
    if backend not in BACKENDS:
        raise ConfigError(
            f"unknown engine backend {backend!r}: pick one of auto, {', '.join(BACKENDS)}"
        )
    module_name, _, cls_name = BACKENDS[backend].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package, install = REQUIREMENTS[backend]
        raise MissingDependencyError(package, f"the {backend} engine backend", install) from exc
    cls: type[Engine] = getattr(module, cls_name)
    return cls


def load_engine(
    model: str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    max_batch: int = 32,
    device: str | None = None,
    config: Any = None,
    warmup: bool = True,
) -> Engine:
    """Load ``model`` on ``backend`` and warm it up at batch 1 and ``max_batch``."""
    model = Path(model)
    precision = check_precision(precision)
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}: pass a positive batch size")
    require_file(model, tuple(s for v in SUFFIXES.values() for s in v), "emotion")
    name, reason = resolve_backend(model, backend)
    if backend == "auto" and name == "torch" and model.suffix.lower() == ".onnx":
        model = model.with_suffix(".pt")
    if model.suffix.lower() not in SUFFIXES[name]:
        raise ConfigError(
            f"the {name} backend cannot read {model} (wants {'/'.join(SUFFIXES[name])}): pick another --backend or model"
        )
    logger.info(
        "emotion engine: %s for %s (%s), %s, max batch %d",
        name,
        model,
        reason,
        precision,
        max_batch,
    )
    cls = backend_class(name)
    kwargs: dict[str, Any] = {"precision": precision, "max_batch": max_batch, "device": device}
    if config is not None:
        kwargs["config"] = config
    engine = cls(model, **kwargs)  # type: ignore[call-arg]
    if warmup:
        engine.warmup(tuple(sorted({1, max_batch})))
    return engine
