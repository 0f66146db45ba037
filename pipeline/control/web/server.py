"""Runs an ASGI app on uvicorn in a daemon thread of the worker, on a socket bound up front
(so a port in use is one clear error, and port 0 picks a free port)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from typing import Any

from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (loopback unless a host is given)."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "", value
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def bind(host: str, port: int, flag: str = "--http") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(bind_error(host, port, exc, flag)) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def bind_error(host: str, port: int, exc: OSError, flag: str) -> str:
    """One line for a port that cannot be bound, naming the flag that changes it."""
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use (another worker on this host?)"
    elif exc.errno == errno.EACCES:
        why = "needs privileges"
    else:
        why = f"cannot be bound ({exc.strerror or exc})"
    if flag == "--metrics-port":
        return (
            f"metrics port {port} on {host} {why}: pass another --metrics-port"
            " (or ES_METRICS_PORT; 0: any free port, -1: off)"
        )
    return f"{flag} {host}:{port}: cannot listen, the port {why}: pass another {flag} (port 0: any free port)"


class WebServer:
    """``start()`` serves ``app`` from a daemon thread; ``close()`` stops it within seconds."""

    def __init__(
        self, app: Any, host: str, port: int, name: str = "web", flag: str = "--http"
    ) -> None:
        import uvicorn

        self._sock = bind(host, port, flag)
        self.host = host
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"{name}-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _serve(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except Exception:
            logger.exception("web server on port %d failed", self.port)

    def start(self) -> WebServer:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()
