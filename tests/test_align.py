from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.types import Faces, Pixels
from pipeline.stages.align import align_faces, similarities, similarity, template


def test_similarity_recovers_known_transform() -> None:
    src = template(64)
    angle, scale, t = np.deg2rad(20), 1.7, np.array([30.0, -12.0])
    r = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = (src @ r.T + t).astype(np.float32)
    m = similarity(src, dst)
    np.testing.assert_allclose(m[:, :2], r, atol=1e-4)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-3)


def test_align_faces_rotated_face_lands_on_template() -> None:
    # Draw five dots at template positions, rotate + scale the image, align back.
    size = 64
    canvas = np.zeros((300, 300, 3), np.uint8)
    pts = template(size) * 3 + 50
    for x, y in pts:
        cv2.circle(canvas, (round(x), round(y)), 4, (255, 255, 255), -1)
    rot = cv2.getRotationMatrix2D((150, 150), 25, 0.8)
    warped = cv2.warpAffine(canvas, rot, (300, 300))
    kps = (np.c_[pts, np.ones(5)] @ rot.T).astype(np.float32)
    faces = Faces.create([[0, 0, 300, 300]], [0.9], kps[None])
    crop = align_faces(warped, faces, size)[0]
    for x, y in template(size):
        assert crop[round(y), round(x)] > 100


def test_align_faces_empty_returns_empty() -> None:
    img = np.zeros((10, 10, 3), np.uint8)
    assert align_faces(img, Faces.empty(), 48).shape == (0, 48, 48)


def _bilinear_reference(
    gray: np.ndarray, mat: np.ndarray, size: int, shift: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """NumPy's own bilinear sampling of ``gray`` through the inverse of the 2x3 similarity
    ``mat`` (source -> crop), edges replicated: what ``cv2.warpAffine`` is asked to do.
    ``shift``: source pixels added to every sample position."""
    inv = np.linalg.inv(np.vstack([mat.astype(np.float64), [0.0, 0.0, 1.0]]))[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    sx, sy = sx + shift[0], sy + shift[1]
    h, w = gray.shape
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    img = gray.astype(np.float64)

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        return img[np.clip(yy, 0, h - 1).astype(int), np.clip(xx, 0, w - 1).astype(int)]

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bottom * fy


def test_align_faces_default_gray_64_matches_numpy_bilinear_reference() -> None:
    # The default mini-Xception input, against an independent computation of the same warp
    # (bilinear, replicated edges) of the same luma, and that luma against BT.601's weights.
    # OpenCV computes both in fixed point, so each may differ by 1 grey level from the float
    # reference; these tolerances hold across OpenCV 4.x and 5.x where exact bytes do not.
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    kps = np.array(
        [
            [[100, 80], [130, 78], [115, 95], [103, 110], [128, 109]],
            [[200, 120], [225, 130], [210, 140], [200, 155], [220, 160]],
        ],
        np.float32,
    )
    faces = Faces.create([[90, 60, 140, 120], [190, 110, 235, 170]], [0.9, 0.8], kps)
    crops = align_faces(img, faces, 64)
    assert crops.shape == (2, 64, 64) and crops.dtype == np.uint8
    luma = Pixels.of_bgr(img).luma()
    b, g, r = (img[..., c].astype(np.float64) for c in range(3))
    assert np.abs(luma - (0.114 * b + 0.587 * g + 0.299 * r)).max() <= 1.0
    mats = similarities(kps, template(64))
    # OpenCV 4.x places its bilinear samples on a 1/32-pixel grid, from positions and weights
    # it computes in fixed point (5.1 samples at the exact position and is within 0.5 levels
    # of it): each crop pixel must lie within 2 grey levels of the values the exact sampling
    # takes within 1/16 pixel of the true position (4.14: 0.5 levels at worst; a warp off by
    # half a pixel is 90 levels outside on this noise).
    offsets = np.linspace(-1 / 16, 1 / 16, 5)
    shifts = [(dx, dy) for dx in offsets for dy in offsets]
    for crop, mat in zip(crops, mats, strict=True):
        refs = np.stack([_bilinear_reference(luma, mat, 64, s) for s in shifts])
        got = crop.astype(np.float64)
        below, above = refs.min(0) - 2.0 - got, got - refs.max(0) - 2.0
        worst = max(below.max(), above.max())
        assert worst <= 0, f"{worst:.2f} grey levels outside the 1/16-pixel envelope"
        assert np.abs(got - refs[len(shifts) // 2]).mean() < 1.0  # near exact sampling on average
        assert crop.std() > 20  # a real crop of the noise, not a flat fill


def test_template_non_square_keeps_proportions_centred() -> None:
    square = template(96)
    tall = template((112, 96))
    np.testing.assert_allclose(tall, square + np.array([0.0, 8.0], np.float32), atol=1e-5)


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The SVD least-squares similarity (Umeyama 1991), the reference."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d0.T @ s0 / len(src))
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / (s0**2).sum(axis=1).mean()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def test_similarities_closed_form_equals_umeyama_svd() -> None:
    rng = np.random.default_rng(0)
    dst = template(64).astype(np.float64)
    src = rng.normal(size=(300, 5, 2)) * 30 + 200
    src[1::2] = src[1::2, :, ::-1]  # mirrored layouts: the reflection case of Umeyama
    got = similarities(src.astype(np.float32), dst.astype(np.float32))
    want = np.stack([_umeyama(s, dst) for s in src])
    assert got.shape == (300, 2, 3)
    assert np.abs(got - want).max() < 1e-3
