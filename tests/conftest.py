"""Shared pytest configuration. Server fixtures live in their own plugin modules."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytest_plugins = [
    m
    for m in ("tests.fixtures_servers", "tests.fixtures_rtsp", "tests.fixtures_models")
    if importlib.util.find_spec(m) is not None
]


def _has_cuda() -> bool:
    """A CUDA device the driver sees (libcuda, so the GPU image without torch counts too)."""
    from engines.cuda import probe_driver

    return probe_driver().ok


#: Fixtures that build models (bootstrap on a fresh machine, or a training run): a test that
#: uses one is ``slow``, so ``make unit`` (``-m "not integration and not slow"``) stays fast.
SLOW_FIXTURES = frozenset({"models_dir", "trained", "sample_clip"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = pytest.mark.slow
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(slow)
    if os.environ.get("ES_FORCE_GPU_TESTS") or _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
