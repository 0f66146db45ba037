"""NVDEC decode selection (pipeline/media/hwaccel.py): probe, fallback log line, required mode,
and real H.264 decoded through the hook in VideoSource; the NVDEC decode itself is a gpu test."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.core.config import DecodeMode, SourceSettings
from pipeline.core.errors import SourceError
from pipeline.media import hwaccel
from pipeline.media.sources import VideoSource, parse_source


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    hwaccel.nvdec_status.cache_clear()
    monkeypatch.setattr(hwaccel, "_logged", type(hwaccel._logged)())


def clip(path: Path, n: int = 12) -> Path:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        for i in range(n):
            img = np.full((120, 160, 3), (i * 20) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def decode_all(path: Path, mode: DecodeMode) -> list[np.ndarray]:
    src = VideoSource(parse_source(str(path)), SourceSettings(decode=mode, queue_size=64))
    src.start()
    frames = []
    while (f := src.get(timeout=10)) is not None:
        frames.append(f.image)
    src.stop()
    return frames


def test_nvdec_status_answers_with_a_reason(fresh: None) -> None:
    ok, why = hwaccel.nvdec_status()
    assert isinstance(ok, bool) and why
    assert hwaccel.nvdec_status() is hwaccel.nvdec_status()  # probed once per process


def test_decode_auto_without_nvdec_logs_one_line_and_uses_cpu(
    fresh: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hwaccel, "nvdec_status", lambda: (False, "no NVIDIA driver"))
    with caplog.at_level(logging.INFO, logger="pipeline.media.hwaccel"):
        assert hwaccel.decode_options(DecodeMode.AUTO, "cam1") == {}
        assert hwaccel.decode_options(DecodeMode.AUTO, "cam2") == {}
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["decoding on the CPU: NVDEC not usable (no NVIDIA driver)"]


def test_decode_nvdec_required_but_absent_is_source_error(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hwaccel, "nvdec_status", lambda: (False, "no NVIDIA driver"))
    with pytest.raises(SourceError, match=r"cam1: decode=nvdec .*no NVIDIA driver.*--decode auto"):
        hwaccel.decode_options(DecodeMode.NVDEC, "cam1")


def test_decode_cpu_never_probes(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> tuple[bool, str]:
        raise AssertionError("probed")

    monkeypatch.setattr(hwaccel, "nvdec_status", boom)
    assert hwaccel.decode_options(DecodeMode.CPU, "cam1") == {}


def test_decode_nvdec_usable_passes_cuda_hwaccel(
    fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hwaccel, "nvdec_status", lambda: (True, "probe ok"))
    opts = hwaccel.decode_options(DecodeMode.AUTO, "cam1")
    assert set(opts) == {"hwaccel"} and type(opts["hwaccel"]).__name__ == "HWAccel"


def test_source_decode_auto_decodes_real_h264(fresh: None, tmp_path: Path) -> None:
    frames = decode_all(clip(tmp_path / "c.mp4"), DecodeMode.AUTO)
    assert len(frames) == 12 and frames[0].shape == (120, 160, 3)
    assert abs(int(frames[5].mean()) - 100) <= 3  # gray level 5 * 20 survives the codec


@pytest.mark.gpu
def test_gpu_nvdec_decode_matches_cpu_decode(fresh: None, tmp_path: Path) -> None:
    ok, why = hwaccel.nvdec_status()
    assert ok, why
    path = clip(tmp_path / "c.mp4")
    gpu, cpu = decode_all(path, DecodeMode.NVDEC), decode_all(path, DecodeMode.CPU)
    assert len(gpu) == len(cpu) == 12
    diff = max(
        float(np.abs(g.astype(int) - c.astype(int)).mean()) for g, c in zip(gpu, cpu, strict=True)
    )
    assert diff < 2.0
