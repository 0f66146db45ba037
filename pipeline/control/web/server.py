"""Runs an ASGI app on uvicorn in a daemon thread of the worker, on a socket bound up front
(so a port in use is one clear error, and port 0 picks a free port)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import threading
from typing import Any

from pipeline.control.web.auth import TlsFiles, load_web_config
from pipeline.control.web.guard import GuardMiddleware, check_bind, make_guard
from pipeline.core.config import WebSettings, WorkerSettings
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


def check_http_settings(settings: WorkerSettings, metrics_port: bool = False) -> None:
    """The bind rule and the web config of the HTTP ports ``settings`` open (the view; with
    ``metrics_port``, the worker's metrics port too), checked before anything slow starts."""
    web = settings.web
    hosts = []
    if settings.view.http:
        hosts.append((parse_http(settings.view.http)[0], "--http"))
    if metrics_port and settings.metrics.port >= 0:
        hosts.append((settings.metrics.host, "--metrics-host"))
    for host, flag in hosts:
        check_bind(host, web, flag)
    if hosts and web.config is not None:
        load_web_config(web.config)


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
    """``start()`` serves ``app`` from a daemon thread; ``close()`` stops it within seconds.

    ``web`` (default: no web config, loopback only) decides who may use it: the bind rule,
    the Host allow-list, basic auth and TLS (``pipeline.control.web.guard``); every answer
    carries the security headers."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        name: str = "web",
        flag: str = "--http",
        web: WebSettings | None = None,
    ) -> None:
        import uvicorn

        host_flag = "--metrics-host" if flag == "--metrics-port" else flag
        self.guard = make_guard(host, web or WebSettings(), host_flag)
        tls = self.guard.config.tls if self.guard.config is not None else None
        self._sock = bind(host, port, flag)
        self.host = host
        self.scheme = "https" if tls is not None else "http"
        config = uvicorn.Config(
            GuardMiddleware(app, self.guard),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
            **_tls_options(tls),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name=f"{name}-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

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
        self.guard.close()


def _tls_options(tls: TlsFiles | None) -> dict[str, Any]:
    """uvicorn's ssl_* options for ``tls`` (none for plain HTTP)."""
    if tls is None:
        return {}
    opts: dict[str, Any] = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
    if tls.client_ca_file is not None:
        opts.update(ssl_ca_certs=str(tls.client_ca_file), ssl_cert_reqs=tls.client_cert_reqs)
    return opts
