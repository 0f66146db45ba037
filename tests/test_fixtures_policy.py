"""The test suite's own rule for a missing RTSP server: fail, unless a skip is asked for outside CI."""

from __future__ import annotations

import pytest

from tests.fixtures_rtsp import rtsp_skip_allowed


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({}, False),
        ({"ES_ALLOW_SKIP_RTSP": "1"}, True),
        ({"ES_ALLOW_SKIP_RTSP": "1", "CI": "true"}, False),
        ({"ES_ALLOW_SKIP_RTSP": "0"}, False),
        ({"CI": "1"}, False),
    ],
)
def test_rtsp_skip_allowed_only_when_asked_outside_ci(env: dict[str, str], allowed: bool) -> None:
    assert rtsp_skip_allowed(env) is allowed
