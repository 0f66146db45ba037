from __future__ import annotations

import cv2
import numpy as np

from pipeline.core.types import Faces
from pipeline.stages.align import align_faces, similarity, template


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
