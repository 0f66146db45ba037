"""Pytest plugin: the sample clip and a real RTSP server (Debian's GStreamer RTSP server).

The server runs ``tests/gst_rtsp_serve.py`` under ``/usr/bin/python3`` (where ``gi`` and
GstRtspServer import); ``make system`` installs those packages.

Where the server cannot run, the RTSP tests FAIL with the reason and the fix: ``make system``
(which ``make test`` runs) should have installed it, so a skip would hide a broken setup. Only
``ES_ALLOW_SKIP_RTSP=1`` turns the failure into a skip, and never when ``CI`` is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVE_SCRIPT = Path(__file__).with_name("gst_rtsp_serve.py")
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gst_rtsp_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return (
            f"{SYSTEM_PYTHON} not found: run `make system` (python3-gi, gir1.2-gst-rtsp-server-1.0)"
        )
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", _PROBE], check=False, capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer RTSP server unavailable ({last}): run `make system`"
    return None


class RtspServer:
    """``tests/gst_rtsp_serve.py`` on a free loopback port; ``url`` is rtsp://127.0.0.1:P/cam."""

    def __init__(self, clip: Path, port: int | None = None, path: str = "/cam") -> None:
        self.clip = Path(clip)
        self.port = port or free_port()
        self.path = path
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"

    def start(self, timeout: float = 30.0) -> None:
        cmd = [
            SYSTEM_PYTHON,
            str(SERVE_SCRIPT),
            "--port",
            str(self.port),
            "--file",
            str(self.clip),
            "--path",
            self.path,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.append(line.rstrip())
                if line.startswith("READY"):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"RTSP server on port {self.port} did not start: {' | '.join(self.log[-5:])}"
                )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        self.start()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def sample_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample clip (t1.jpg's 6 faces, 4 s at 25 fps, H.264 MP4), built once per session."""
    from pipeline.media.sample import make_sample_clip

    return make_sample_clip(tmp_path_factory.mktemp("media") / "sample.mp4", seconds=4.0, fps=25)


def rtsp_skip_allowed(env: Mapping[str, str]) -> bool:
    """Whether a missing RTSP server may skip its tests: only when ``ES_ALLOW_SKIP_RTSP=1``
    and ``CI`` is not set."""
    return env.get("ES_ALLOW_SKIP_RTSP") == "1" and not env.get("CI")


@pytest.fixture(scope="session")
def _gst_available() -> None:
    why = gst_rtsp_missing()
    if why is None:
        return
    if rtsp_skip_allowed(os.environ):
        pytest.skip(why)
    pytest.fail(f"{why} (or set ES_ALLOW_SKIP_RTSP=1 where GStreamer cannot be installed)")


@pytest.fixture(scope="session")
def rtsp_server(sample_clip: Path, _gst_available: None) -> Iterator[RtspServer]:
    """A real RTSP server looping the sample clip, shared by the session. Do not restart it."""
    with RtspServer(sample_clip) as server:
        yield server


@pytest.fixture
def rtsp_server_private(sample_clip: Path, _gst_available: None) -> Iterator[RtspServer]:
    """An RTSP server of this test alone (it may stop / restart it)."""
    with RtspServer(sample_clip) as server:
        yield server
