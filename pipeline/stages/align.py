"""5-point similarity alignment of faces to the classifier's input (size and colour from its
``InputSpec.crop``: gray, RGB or BGR; square or not).

The five landmarks (eyes, nose, mouth corners) are mapped by a least-squares similarity
transform (Umeyama) onto a canonical template scaled to the output size, so every crop has
the eyes and mouth in the same place whatever the head's roll and scale.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from pipeline.core.enums import ColourOrder
from pipeline.core.types import CropSpec, Faces

#: ArcFace's 112x112 five-point template, the canonical face layout InsightFace aligns to.
_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    np.float32,
)


def template(size: int | tuple[int, int], margin: float = 0.15) -> npt.NDArray[np.float32]:
    """The template for a ``size`` (square side, or (height, width)) crop, zoomed out by
    ``margin`` so that brows and chin (which FER-2013 crops include) stay inside.

    A non-square crop scales the 112x112 layout to its shorter side and centres it along the
    longer one, so the face keeps its proportions."""
    h, w = (size, size) if isinstance(size, int) else size
    t = (_TEMPLATE_112 - 56.0) * (1.0 - margin) + 56.0
    t = (t * (min(h, w) / 112.0)).astype(np.float32)
    if h != w:
        side = min(h, w)
        t += np.array([(w - side) / 2.0, (h - side) / 2.0], np.float32)
    return t


def similarity(
    src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst, 2x3."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    var = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / max(var, 1e-12)
    m = np.zeros((2, 3), np.float32)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def align_faces(
    image_bgr: npt.NDArray[np.uint8],
    faces: Faces,
    crop: CropSpec | int = 64,
    margin: float = 0.15,
) -> npt.NDArray[np.uint8]:
    """Aligned crops for every face, in order, as ``crop`` says: uint8 (n, H, W) gray, or
    (n, H, W, 3) in RGB or BGR order. An int ``crop`` is a square gray crop of that side.

    One warp per face: gray warps the gray frame; colour warps the BGR frame and reorders the
    small crop's channels when RGB is wanted."""
    spec = CropSpec(crop, crop) if isinstance(crop, int) else crop
    out = np.zeros(spec.shape(len(faces)), np.uint8)
    if len(faces) == 0:
        return out
    src = (
        cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
        if spec.colour is ColourOrder.GRAY
        else image_bgr
    )
    dst = template((spec.height, spec.width), margin)
    dsize = (spec.width, spec.height)
    for i in range(len(faces)):
        m = similarity(faces.kps[i].astype(np.float32), dst)
        out[i] = cv2.warpAffine(
            src, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    if spec.colour is ColourOrder.RGB:
        out = np.ascontiguousarray(out[..., ::-1])
    return out
