"""deploy/gpu-check.sh: valid bash, shellcheck-clean, and on a machine without a GPU a dry run
exits 0 with a JSON report saying so (nothing measured)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines.cuda import probe_driver

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "gpu-check.sh"


def test_gpu_check_script_is_valid_bash() -> None:
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_gpu_check_script_passes_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    assert exe, "shellcheck is missing: deploy/scripts/ensure-system-deps.sh installs it"
    out = subprocess.run([exe, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(probe_driver().ok, reason="a GPU is present: run the script for real")
def test_gpu_check_without_gpu_reports_no_gpu_and_exits_0(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHON": sys.executable,
        "ES_BIN": str(Path(sys.executable).with_name("emotion-stream")),
    }
    out = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "gc")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep == json.loads((tmp_path / "gc" / "report.json").read_text())
    assert rep["gpu_present"] is False and rep["measured_path"] == "none"
    assert rep["note"].startswith("no GPU here (") and rep["gpus"] == []
    assert rep["backends"]["tensorrt"]["usable"] is False
    assert rep["streams_1080p30"]["trials"] == [] and rep["streams_1080p30"]["goal"] == 64


def test_gpu_check_letterbox_matches_scrfd_input_layout() -> None:
    import numpy as np

    from pipeline.tools.gpu_check import letterbox_rgb

    img = np.zeros((540, 960, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    out = letterbox_rgb(img, (640, 640))
    assert out.shape == (640, 640, 3)
    assert out[:360, :, 2].min() == 255 and out[:360, :, 0].max() == 0  # RGB, top-left
    assert out[360:].max() == 0  # zero padding below


def test_gpu_check_iou_matrix() -> None:
    import numpy as np

    from pipeline.tools.gpu_check import iou_matrix

    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6)
