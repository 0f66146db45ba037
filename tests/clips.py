"""Small real H.264 clips composed in tests from photos that installed packages ship."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
import numpy.typing as npt


def write_h264(path: Path, frames: Iterable[npt.NDArray[np.uint8]], fps: int = 10) -> Path:
    """Encode BGR frames (all one even size) to an H.264 yuv420p MP4 at ``path``."""
    import av

    from pipeline.media.sample import _h264_encoder

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(_h264_encoder(), rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"crf": "18", "x264-params": "bframes=0:threads=1"}
        for i, img in enumerate(frames):
            if i == 0:
                stream.height, stream.width = img.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
