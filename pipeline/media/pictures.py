"""Decoded PyAV frames as ``Pixels``: BGR converted only when asked for, gray read from the
luma plane.

For 8-bit YUV and NV12 pictures (what H.264/H.265 decoders and NVDEC give) the luma plane
*is* the gray picture, up to range: limited-range (MPEG) luma 16..235 stretched to 0..255 is
what a BGR conversion followed by a BGR-to-gray conversion gives (the chroma terms cancel in
BT.601 gray), within about one grey level on average. ``Pixels`` keeps the plane as it is and
says whether it is limited; other formats convert to BGR first.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from pipeline.core.types import Image, Pixels

#: 8-bit formats whose first plane is full-resolution luma.
_LUMA_FIRST = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray"}
)
_FULL_RANGE_FORMATS = frozenset({"yuvj420p", "yuvj422p", "yuvj444p", "gray"})
_AVCOL_RANGE_JPEG = 2


def pixels_of(vf: Any) -> Pixels:
    """``Pixels`` of a decoded ``av.VideoFrame`` (kept referenced until converted)."""
    fmt = vf.format.name
    to_bgr = lambda: cast(Image, vf.to_ndarray(format="bgr24"))  # noqa: E731
    if fmt not in _LUMA_FIRST:
        return Pixels(vf.width, vf.height, to_bgr)
    full = fmt in _FULL_RANGE_FORMATS or getattr(vf, "color_range", 0) == _AVCOL_RANGE_JPEG
    return Pixels(vf.width, vf.height, to_bgr, lambda: luma(vf), limited=not full)


def luma(vf: Any) -> Image:
    """The first plane of ``vf`` as an HxW uint8 array (a view of the decoder's buffer)."""
    plane = vf.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return y[:, : vf.width]
