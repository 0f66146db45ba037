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
from pipeline.core.types import CropSpec, Faces, Pixels

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
    return similarities(src[None], dst)[0]


def similarities(
    src: npt.NDArray[np.float32], dst: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """Least-squares similarities mapping each of ``src`` (n, k, 2) onto ``dst`` (k, 2), as
    (n, 2, 3) matrices. In 2-D the Umeyama solution has a closed form: with centred points,
    ``a = sum(s.d) / sum(|s|^2)`` and ``b = sum(s x d) / sum(|s|^2)`` give the matrix
    ``[[a, -b], [b, a]]`` (a proper rotation times a scale), no SVD needed."""
    s = src.astype(np.float64)
    d = dst.astype(np.float64)[None]
    mu_s, mu_d = s.mean(axis=1, keepdims=True), d.mean(axis=1, keepdims=True)
    s0, d0 = s - mu_s, d - mu_d
    var = np.maximum((s0**2).sum(axis=(1, 2)), 1e-12)
    a = (s0 * d0).sum(axis=(1, 2)) / var
    b = (s0[..., 0] * d0[..., 1] - s0[..., 1] * d0[..., 0]).sum(axis=1) / var
    m = np.empty((len(s), 2, 3), np.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a, -b, b, a
    m[:, :, 2] = mu_d[:, 0] - np.einsum("nij,nj->ni", m[:, :, :2], mu_s[:, 0])
    return m.astype(np.float32)


def align_faces(
    image: Pixels | npt.NDArray[np.uint8],
    faces: Faces,
    crop: CropSpec | int = 64,
    margin: float = 0.15,
) -> npt.NDArray[np.uint8]:
    """Aligned crops for every face, in order, as ``crop`` says: uint8 (n, H, W) gray, or
    (n, H, W, 3) in RGB or BGR order. An int ``crop`` is a square gray crop of that side.
    ``image`` is the frame's ``Pixels`` (gray crops then never need its BGR) or a BGR array.

    One warp per face: gray warps the frame's luma (then stretched to full range); colour warps the BGR frame and reorders the
    small crop's channels when RGB is wanted."""
    spec = CropSpec(crop, crop) if isinstance(crop, int) else crop
    out = np.zeros(spec.shape(len(faces)), np.uint8)
    if len(faces) == 0:
        return out
    px = image if isinstance(image, Pixels) else Pixels.of_bgr(image)
    gray = spec.colour is ColourOrder.GRAY
    src = px.luma() if gray else px.bgr()
    dsize = (spec.width, spec.height)
    mats = similarities(faces.kps, template((spec.height, spec.width), margin))
    for i in range(len(faces)):
        out[i] = cv2.warpAffine(
            src, mats[i], dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    if gray:
        return px.stretch(out)  # limited-range luma: stretch the small crops, not the frame
    if spec.colour is ColourOrder.RGB:
        out = np.ascontiguousarray(out[..., ::-1])
    return out
