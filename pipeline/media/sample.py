"""The sample clip: a deterministic H.264 MP4 made from insightface's ``t1.jpg`` (6 real faces).

A slow, looping pan/zoom over the photo keeps all six faces fully in view on every frame
while they move a few pixels per frame, so detection and tracking are both exercised.
The motion is one full period over the clip, so a looped clip (RTSP simulator) is seamless.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.errors import MissingDependencyError, SourceError

logger = logging.getLogger(__name__)

# The union of the six face boxes of t1.jpg (1280x886) with a margin, in source pixels.
_FACES_X = (52.0, 1225.0)
_FACES_Y = (57.0, 471.0)
_MARGIN = 12.0
_H264_ENCODERS = ("libx264", "h264", "libopenh264", "h264_v4l2m2m")


def t1_photo() -> Path:
    """insightface's ``data/images/t1.jpg``; a one-line error when it is not there."""
    spec = importlib.util.find_spec("insightface")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("insightface", "the sample clip", "pip install insightface")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"
    if not path.is_file():
        raise SourceError(f"{path}: insightface's sample photo is missing; reinstall insightface")
    return path


def _window(i: int, n: int, aspect: float) -> tuple[float, float, float]:
    """Crop window (centre x, centre y, width) of frame i of n, in source pixels."""
    phase = 2.0 * math.pi * i / max(n, 1)
    width = 1265.0 + 25.0 * math.sin(phase)  # 1240..1290: a gentle zoom
    half_w = width / 2.0
    lo = _FACES_X[1] + _MARGIN - half_w  # leftmost centre that keeps the rightmost face in view
    hi = _FACES_X[0] - _MARGIN + half_w
    cx = (lo + hi) / 2.0 + (hi - lo) / 2.0 * 0.8 * math.sin(2.0 * phase)
    half_h = width / aspect / 2.0
    lo_y = _FACES_Y[1] + _MARGIN - half_h
    hi_y = _FACES_Y[0] - _MARGIN + half_h
    cy = (lo_y + hi_y) / 2.0 + (hi_y - lo_y) / 2.0 * 0.5 * math.cos(phase)
    return cx, cy, width


def render_frame(
    photo: npt.NDArray[np.uint8], i: int, n: int, size: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Frame i of n as a BGR image of ``size`` (width, height)."""
    out_w, out_h = size
    cx, cy, width = _window(i, n, out_w / out_h)
    scale = out_w / width
    m = np.array(
        [[scale, 0.0, out_w / 2.0 - scale * cx], [0.0, scale, out_h / 2.0 - scale * cy]], np.float64
    )
    img = cv2.warpAffine(
        photo,
        m,
        (out_w, out_h),
        flags=cv2.INTER_AREA,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(32, 32, 32),
    )
    return np.ascontiguousarray(img, dtype=np.uint8)


def _h264_encoder() -> str:
    import av

    for name in _H264_ENCODERS:
        try:
            av.codec.Codec(name, "w")
        except Exception:
            continue
        return name
    raise MissingDependencyError("av (with an H.264 encoder)", "the sample clip", "pip install av")


def make_sample_clip(
    out: Path,
    seconds: float = 4.0,
    fps: int = 25,
    size: tuple[int, int] = (960, 540),
    slices: int = 1,
) -> Path:
    """Write the sample clip to ``out`` (H.264, yuv420p, MP4, a key frame every second).

    ``slices`` > 1 encodes every frame in that many slices (x264 ``slices=N``), as many IP
    cameras do: over RTSP each slice then arrives in its own packet."""
    import av

    if seconds <= 0 or fps <= 0 or size[0] % 2 or size[1] % 2:
        raise SourceError(
            f"{out}: sample clip needs seconds > 0, fps > 0 and an even size, got {seconds}, {fps}, {size}"
        )
    raw = cv2.imread(str(t1_photo()))
    if raw is None:
        raise SourceError(
            f"{t1_photo()}: cannot read insightface's sample photo; reinstall insightface"
        )
    photo = np.ascontiguousarray(raw, dtype=np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(seconds * fps))
    codec = _h264_encoder()
    with av.open(str(out), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = fps
        if codec in ("libx264", "h264"):
            stream.options = {
                "preset": "veryfast",
                "crf": "20",
                "x264-params": f"keyint={fps}:min-keyint={fps}:scenecut=0:bframes=0:threads=1"
                + (f":slices={slices}" if slices > 1 else ""),
            }
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(render_frame(photo, i, n, size), format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    logger.info(
        "sample clip: %s frames at %s fps, %sx%s, %s -> %s", n, fps, size[0], size[1], codec, out
    )
    return out
