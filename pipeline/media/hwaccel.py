"""Decode on the GPU where present: NVDEC through PyAV's ``av.codec.hwaccel`` (CUDA device).

``decode_options(mode, display)`` gives the extra ``av.open`` arguments for a source:

- ``cpu``: none (FFmpeg's software decoders);
- ``auto``: ``hwaccel=HWAccel("cuda", allow_software_fallback=True)`` when NVDEC works here,
  else none, with one log line (once per process) saying why decoding stays on the CPU;
- ``nvdec``: NVDEC or a ``SourceError`` naming the reason and the fix.

Whether NVDEC works is probed once per process (``nvdec_status``): the FFmpeg build must list
a CUDA hardware device, and a real decode must succeed: a few frames of H.264 are encoded in
memory and decoded with the CUDA device and no software fallback (creating the device fails
without an NVIDIA driver or GPU). Frames decoded on NVDEC are copied back to system memory by
PyAV, so the rest of the pipeline sees the same ``Frame`` either way.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
from typing import Any

from pipeline.core.config import DecodeMode
from pipeline.core.errors import SourceError

logger = logging.getLogger(__name__)

_logged = threading.Event()


def _probe_clip() -> bytes:
    """A few frames of 128x128 H.264 in an MP4, encoded in memory."""
    import av
    import numpy as np

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width = stream.height = 128
        stream.pix_fmt = "yuv420p"
        for i in range(3):
            img = np.full((128, 128, 3), 40 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@functools.cache
def nvdec_status() -> tuple[bool, str]:
    """(usable, why): whether PyAV decodes H.264 on NVDEC here, probed once per process."""
    try:
        import av
        from av.codec.hwaccel import HWAccel, hwdevices_available
    except ImportError as exc:
        return False, f"this PyAV has no hardware acceleration API ({exc})"
    from engines.cuda import probe_driver

    driver = probe_driver()
    if not driver.ok:  # no GPU: skip encoding and decoding a probe clip at every start
        return False, driver.reason
    devices = list(hwdevices_available())
    if "cuda" not in devices:
        return (
            False,
            f"this FFmpeg build has no CUDA hwaccel (hardware devices: {', '.join(devices) or 'none'})",
        )
    try:
        clip = _probe_clip()
        accel = HWAccel(device_type="cuda", allow_software_fallback=False)
        with av.open(io.BytesIO(clip), mode="r", hwaccel=accel) as probe:
            frames = len(list(probe.decode(video=0)))
    except Exception as exc:
        return False, f"the CUDA device cannot be opened for decoding ({type(exc).__name__}: {exc})"
    if frames == 0:
        return False, "NVDEC decoded no frame of the probe clip"
    return True, f"NVDEC decoded {frames} probe frames (PyAV {av.__version__})"


def decode_options(mode: DecodeMode, display: str) -> dict[str, Any]:
    """Extra ``av.open`` keyword arguments for ``mode`` (see the module docstring)."""
    if mode is DecodeMode.CPU:
        return {}
    ok, why = nvdec_status()
    if not ok:
        if mode is DecodeMode.NVDEC:
            raise SourceError(
                f"{display}: decode=nvdec but NVDEC is not usable here ({why}): use --decode auto or cpu"
            )
        if not _logged.is_set():
            _logged.set()
            logger.info("decoding on the CPU: NVDEC not usable (%s)", why)
        return {}
    from av.codec.hwaccel import HWAccel

    if not _logged.is_set():
        _logged.set()
        logger.info("decoding on NVDEC where the codec allows (%s)", why)
    return {"hwaccel": HWAccel(device_type="cuda", allow_software_fallback=True)}
