"""A worker's HTTP endpoints on one port: ``/healthz`` (alive: the control loop is turning),
``/readyz`` (joined the group and holds an assignment) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import errno
import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)

CheckFn = Callable[[], tuple[bool, dict[str, Any]]]


def _bind_error(host: str, port: int, exc: OSError) -> str:
    """One line for a port that cannot be bound, naming the flag that changes it."""
    if exc.errno == errno.EADDRINUSE:
        why = "is already in use (another worker on this host?)"
    elif exc.errno == errno.EACCES:
        why = "needs privileges"
    else:
        why = f"cannot be bound ({exc.strerror or exc})"
    return (
        f"metrics port {port} on {host} {why}: pass another --metrics-port"
        " (or ES_METRICS_PORT; 0: any free port, -1: off)"
    )


class HealthServer:
    """Serves the three endpoints from a daemon thread; ``port=0`` picks a free port."""

    def __init__(
        self,
        host: str,
        port: int,
        live: CheckFn,
        ready: CheckFn,
        metrics: Callable[[], bytes] | None = None,
    ) -> None:
        checks: dict[str, CheckFn] = {"/healthz": live, "/readyz": ready}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and metrics is not None:
                    self._send(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                    return
                check = checks.get(path)
                if check is None:
                    self._send(404, b"not found\n", "text/plain")
                    return
                try:
                    ok, detail = check()
                except Exception as exc:
                    ok, detail = False, {"error": str(exc)}
                body = json.dumps({"ok": ok, **detail}).encode()
                self._send(200 if ok else 503, body, "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http: %s", format % args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(_bind_error(host, port, exc)) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        logger.info("serving /healthz /readyz /metrics on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
