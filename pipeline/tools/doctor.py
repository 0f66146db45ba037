"""``emotion-stream doctor``: what this machine has for the pipeline, and what it cannot run and why.

It looks without importing torch (a multi-second, GB-sized import): the GPU and driver come
from ``libcuda`` through ctypes (``engines.cuda.probe_driver``) and ``nvidia-smi`` when present;
torch is reported from its package metadata. TensorRT, pycuda and ONNX Runtime are imported
(that is the check). PyAV's hardware devices come from ``av.codec.hwaccel`` and NVDEC is probed
with a real decode (``pipeline.media.hwaccel``). Every unusable backend carries the exact
reason and the fix. The report is a plain dict (``--json`` prints it as is).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass
from typing import Any

from engines.cuda import PYCUDA_INSTALL, DriverProbe, probe_driver
from engines.trt_builder import TRT_INSTALL

DRIVER_FIX = (
    "install the NVIDIA driver and run on a machine with an NVIDIA GPU "
    "(in Docker: the NVIDIA Container Toolkit and `--gpus all`)"
)


@dataclass(frozen=True, slots=True)
class Usable:
    """One backend or path: usable here or not, why, and the fix when not."""

    name: str
    usable: bool
    reason: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _import(module: str) -> tuple[Any, str]:
    """(module or None, what happened)."""
    if importlib.util.find_spec(module.split(".", maxsplit=1)[0]) is None:
        return None, f"{module} is not installed"
    try:
        return importlib.import_module(module), f"{module} imports"
    except Exception as exc:  # a broken install raises anything
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"{module} does not import ({type(exc).__name__}: {first})"


def cpu_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"found": False, "reason": "nvidia-smi is not on PATH"}
    query = "name,memory.total,driver_version"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return {"found": True, "error": f"{type(exc).__name__}: {exc}"}
    gpus = []
    for line in out.strip().splitlines():
        name, mem, driver = (p.strip() for p in line.split(","))
        gpus.append({"name": name, "memory_mib": int(float(mem)), "driver_version": driver})
    return {"found": True, "gpus": gpus}


def gpu_info(driver: DriverProbe) -> dict[str, Any]:
    return {
        "cuda_driver": driver.ok,
        "reason": driver.reason,
        "driver_cuda_version": driver.driver_cuda_version,
        "devices": [asdict(d) for d in driver.devices],
        "nvidia_smi": nvidia_smi(),
    }


def software() -> dict[str, Any]:
    ort, ort_why = _import("onnxruntime")
    trt, trt_why = _import("tensorrt")
    _pycuda, pycuda_why = _import("pycuda.driver")
    av, av_why = _import("av")
    hw: list[str] = []
    if av is not None:
        from av.codec.hwaccel import hwdevices_available

        hw = list(hwdevices_available())
    return {
        "onnxruntime": {
            "version": getattr(ort, "__version__", None),
            "providers": list(ort.get_available_providers()) if ort is not None else [],
            "status": ort_why,
        },
        "tensorrt": {"version": getattr(trt, "__version__", None), "status": trt_why},
        "pycuda": {"version": _version("pycuda"), "status": pycuda_why},
        "torch": {
            "version": _version("torch"),
            "status": "installed (not imported by doctor)"
            if _version("torch")
            else "not installed",
        },
        "pyav": {
            "version": getattr(av, "__version__", None),
            "status": av_why,
            "hw_devices": hw,
        },
    }


def _tensorrt(sw: dict[str, Any], driver: DriverProbe) -> Usable:
    if sw["tensorrt"]["version"] is None:
        return Usable("tensorrt", False, sw["tensorrt"]["status"], TRT_INSTALL)
    if sw["pycuda"]["status"] != "pycuda.driver imports":
        return Usable("tensorrt", False, sw["pycuda"]["status"], PYCUDA_INSTALL)
    if not driver.ok:
        return Usable("tensorrt", False, driver.reason, DRIVER_FIX)
    return Usable(
        "tensorrt", True, f"TensorRT {sw['tensorrt']['version']}, pycuda, {driver.reason}"
    )


def backends(sw: dict[str, Any], driver: DriverProbe, nvdec: tuple[bool, str]) -> list[Usable]:
    """Every engine backend, the detector runtimes and the decoders: usable, why, fix."""
    ort = sw["onnxruntime"]
    ort_cuda = "CUDAExecutionProvider" in ort["providers"]
    trt = _tensorrt(sw, driver)
    out = [trt]
    if ort["version"] is None:
        out.append(Usable("onnxruntime", False, ort["status"], "pip install onnxruntime"))
    else:
        out.append(
            Usable(
                "onnxruntime", True, f"onnxruntime {ort['version']}: {', '.join(ort['providers'])}"
            )
        )
    if ort["version"] is not None and not ort_cuda:
        out.append(
            Usable(
                "onnxruntime-cuda",
                False,
                "this onnxruntime has no CUDAExecutionProvider",
                "pip install onnxruntime-gpu (instead of onnxruntime) on a CUDA machine",
            )
        )
    elif ort_cuda and not driver.ok:
        out.append(Usable("onnxruntime-cuda", False, driver.reason, DRIVER_FIX))
    elif ort_cuda:
        out.append(Usable("onnxruntime-cuda", True, "CUDAExecutionProvider and a CUDA device"))
    if sw["torch"]["version"] is None:
        out.append(Usable("torch", False, "torch is not installed", "pip install torch"))
    else:
        out.append(
            Usable(
                "torch",
                True,
                f"torch {sw['torch']['version']} installed (CPU; CUDA when its build and a GPU allow)",
            )
        )
    out.append(Usable("detector-tensorrt", trt.usable, trt.reason, trt.fix))
    out.append(
        Usable(
            "decode-nvdec",
            nvdec[0],
            nvdec[1]
            if nvdec[0] or driver.ok or driver.reason in nvdec[1]
            else f"{driver.reason}; {nvdec[1]}",
            ""
            if nvdec[0]
            else "an FFmpeg/PyAV build with CUDA hwaccel and an NVIDIA driver; --decode auto falls back to the CPU",
        )
    )
    return out


def report() -> dict[str, Any]:
    """The whole picture, as plain data."""
    from pipeline.media.hwaccel import nvdec_status

    driver = probe_driver()
    sw = software()
    nvdec = nvdec_status() if sw["pyav"]["version"] else (False, sw["pyav"]["status"])
    rows = backends(sw, driver, nvdec)
    return {
        "cpu": cpu_info(),
        "gpu": gpu_info(driver),
        "software": sw,
        "backends": [asdict(r) for r in rows],
        "emotion_backend_auto": _auto_choice(rows),
    }


def _auto_choice(rows: list[Usable]) -> str:
    usable = {r.name for r in rows if r.usable}
    for name in ("tensorrt", "onnxruntime-cuda", "onnxruntime"):
        if name in usable:
            return name
    return "none"


def render(rep: dict[str, Any]) -> str:
    """The report as text for a terminal or a bug report."""
    cpu, gpu, sw = rep["cpu"], rep["gpu"], rep["software"]
    lines = [f"cpu       {cpu['model']} ({cpu['cores']} cores), Python {cpu['python']}"]
    if gpu["devices"]:
        for d in gpu["devices"]:
            lines.append(
                f"gpu {d['index']}     {d['name']}, {d['memory_mib']} MiB, compute {d['compute_capability']}"
            )
        lines.append(f"driver    CUDA {gpu['driver_cuda_version']}")
    else:
        lines.append(f"gpu       none ({gpu['reason']})")
    lines.append(
        f"onnxrt    {sw['onnxruntime']['version']}: {', '.join(sw['onnxruntime']['providers'])}"
    )
    lines.append(f"tensorrt  {sw['tensorrt']['version'] or sw['tensorrt']['status']}")
    lines.append(f"pycuda    {sw['pycuda']['version'] or sw['pycuda']['status']}")
    lines.append(f"torch     {sw['torch']['version'] or 'not installed'}")
    lines.append(
        f"pyav      {sw['pyav']['version']}, hardware devices: {', '.join(sw['pyav']['hw_devices']) or 'none'}"
    )
    lines.append("")
    for b in rep["backends"]:
        mark = "ok " if b["usable"] else "no "
        lines.append(f"{mark} {b['name']:18s} {b['reason']}")
        if b["fix"]:
            lines.append(f"    {'':18s} fix: {b['fix']}")
    lines.append(f"\nemotion backend auto -> {rep['emotion_backend_auto']}")
    return "\n".join(lines)
