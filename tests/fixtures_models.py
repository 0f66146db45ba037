"""Pytest plugin: the bootstrapped default models (shared by the session) and test images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

REPO = Path(__file__).resolve().parents[1]


def t1_path() -> Path:
    """insightface's ``data/images/t1.jpg`` (6 faces)."""
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations, "insightface is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "t1.jpg"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<repo>/models`` when its manifest verifies (``make test`` builds it), else a fresh build."""
    from pipeline.tools.model_zoo.manifest import bootstrap, verify

    repo_models = REPO / "models"
    if verify(repo_models):
        return repo_models
    out = tmp_path_factory.mktemp("models")
    bootstrap(out)
    return out


@pytest.fixture(scope="session")
def t1_image() -> npt.NDArray[np.uint8]:
    """t1.jpg as a BGR uint8 array."""
    img = cv2.imread(str(t1_path()))
    assert img is not None
    return np.asarray(img, np.uint8)
