"""``emotion-stream doctor``: on this CPU machine every backend is named, TensorRT unusable with
the reason and fix; the backend verdicts for other machines come from synthetic probes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engines.cuda import PYCUDA_INSTALL, CudaDevice, DriverProbe
from pipeline.tools.doctor import DRIVER_FIX, backends, render

REPO = Path(__file__).resolve().parents[1]
NO_DRIVER = DriverProbe(False, "libcuda.so.1 is not loadable: no NVIDIA driver on this machine")
H100 = DriverProbe(True, "1 CUDA device(s)", "12.8", (CudaDevice(0, "NVIDIA H100", "9.0", 81559),))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def sw(
    trt: str | None = None,
    pycuda: bool = False,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> dict:  # type: ignore[type-arg]
    return {
        "onnxruntime": {
            "version": "1.0",
            "providers": list(providers),
            "status": "onnxruntime imports",
        },
        "tensorrt": {
            "version": trt,
            "status": "tensorrt imports" if trt else "tensorrt is not installed",
        },
        "pycuda": {
            "version": "2025.1" if pycuda else None,
            "status": "pycuda.driver imports" if pycuda else "pycuda.driver is not installed",
        },
        "torch": {"version": None, "status": "not installed"},
        "pyav": {"version": "18.1.0", "status": "av imports", "hw_devices": ["cuda"]},
    }


def by_name(rows: list) -> dict:  # type: ignore[type-arg]
    return {r.name: r for r in rows}


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here"
)
def test_doctor_json_on_cpu_machine_names_every_backend() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "doctor", "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    rows = {b["name"]: b for b in rep["backends"]}
    assert {
        "tensorrt",
        "onnxruntime",
        "torch",
        "onnxruntime-cuda",
        "detector-tensorrt",
        "decode-nvdec",
    } <= set(rows)
    trt = rows["tensorrt"]
    assert trt["usable"] is False and trt["reason"] == "tensorrt is not installed"
    assert "deploy/" in trt["fix"] and "nvidia" in trt["fix"].lower()
    assert all(r["fix"] for r in rows.values() if not r["usable"])
    assert rep["cpu"]["cores"] >= 1 and "providers" in rep["software"]["onnxruntime"]
    assert rep["emotion_backend_auto"] in ("onnxruntime", "onnxruntime-cuda")


def test_doctor_does_not_import_torch() -> None:
    code = "import sys; from pipeline.tools.doctor import report; report(); print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_doctor_tensorrt_without_pycuda_says_build_pycuda() -> None:
    rows = by_name(backends(sw(trt="10.8"), H100, (True, "ok")))
    assert not rows["tensorrt"].usable and rows["tensorrt"].fix == PYCUDA_INSTALL
    assert not rows["detector-tensorrt"].usable


def test_doctor_tensorrt_without_driver_says_install_driver() -> None:
    rows = by_name(backends(sw(trt="10.8", pycuda=True), NO_DRIVER, (False, "x")))
    assert not rows["tensorrt"].usable and rows["tensorrt"].fix == DRIVER_FIX
    assert "no NVIDIA driver" in rows["decode-nvdec"].reason
    same = by_name(backends(sw(), NO_DRIVER, (False, NO_DRIVER.reason)))
    assert same["decode-nvdec"].reason == NO_DRIVER.reason  # said once, not twice


def test_doctor_full_gpu_machine_is_all_usable() -> None:
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    rows = by_name(
        backends(sw(trt="10.8", pycuda=True, providers=providers), H100, (True, "NVDEC ok"))
    )
    assert all(
        rows[n].usable
        for n in ("tensorrt", "onnxruntime-cuda", "detector-tensorrt", "decode-nvdec")
    )


def test_doctor_render_lists_each_backend_and_fix() -> None:
    from dataclasses import asdict

    from pipeline.tools.doctor import _auto_choice, cpu_info, gpu_info

    rows = backends(sw(), NO_DRIVER, (False, "no cuda"))
    rep = {
        "cpu": cpu_info(),
        "gpu": gpu_info(NO_DRIVER),
        "software": sw(),
        "backends": [asdict(r) for r in rows],
        "emotion_backend_auto": _auto_choice(rows),
    }
    text = render(rep)
    assert "gpu       none (libcuda.so.1" in text and text.count("fix:") == sum(
        not r.usable for r in rows
    )
    assert text.rstrip().endswith("emotion backend auto -> onnxruntime")
