"""Decoded pictures: BGR only when asked for, gray from the luma plane in full range."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest

from pipeline.core.types import Frame, Pixels
from pipeline.media.pictures import pixels_of
from tests.fixtures_models import t1_path


def _yuv_frame(fmt: str) -> av.VideoFrame:
    bgr = cv2.resize(cv2.imread(str(t1_path())), (320, 240))
    return av.VideoFrame.from_ndarray(bgr, format="bgr24").reformat(format=fmt)


@pytest.mark.parametrize("fmt", ["yuv420p", "yuvj420p", "nv12"])
def test_pixels_of_gray_from_luma_matches_bgr_to_gray(fmt: str) -> None:
    vf = _yuv_frame(fmt)
    px = pixels_of(vf)
    gray = px.gray()
    assert not px.converted  # gray never needed BGR
    assert px.luma().base is not None  # the Y plane itself, not a copy
    want = cv2.cvtColor(vf.to_ndarray(format="bgr24"), cv2.COLOR_BGR2GRAY)
    assert gray.shape == want.shape == (240, 320) and gray.dtype == np.uint8
    diff = np.abs(gray.astype(int) - want.astype(int))
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 4


def test_pixels_of_other_format_converts_once() -> None:
    vf = _yuv_frame("rgb24")
    px = pixels_of(vf)
    gray = px.gray()
    assert px.converted
    assert px.bgr() is px.bgr()
    assert np.array_equal(gray, cv2.cvtColor(px.bgr(), cv2.COLOR_BGR2GRAY))


def test_frame_wraps_bgr_array_and_rejects_bad_shapes() -> None:
    img = np.zeros((4, 6, 3), np.uint8)
    f = Frame("s", 0, 0.0, 1.0, img)
    assert f.image is img and (f.width, f.height) == (6, 4) and f.gray.shape == (4, 6)
    with pytest.raises(ValueError, match="HxWx3 uint8 BGR"):
        Frame("s", 0, 0.0, 1.0, np.zeros((4, 6), np.uint8))


def test_pixels_decoder_size_mismatch_is_clear() -> None:
    px = Pixels(8, 8, lambda: np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        px.bgr()
