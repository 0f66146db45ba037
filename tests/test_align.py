from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.types import Faces
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


def test_align_faces_default_gray_64_is_unchanged() -> None:
    # sha256 of the default mini-Xception input, so a change to it is noticed (it changed
    # once on purpose: the closed-form similarity, equal to the SVD one within 2e-5 px).
    import hashlib

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
    assert crops.shape == (2, 64, 64)
    assert (
        hashlib.sha256(crops.tobytes()).hexdigest()
        == "4ab4e2b2054f315a5ca7c66bea7e7371eeb109bd5c56c96bd2b698a1071f1941"
    )


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
