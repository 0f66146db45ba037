"""A worker's HTTP endpoints on one port: ``/healthz`` (alive: the control loop is turning),
``/readyz`` (joined the group and holds an assignment) and ``/metrics`` (Prometheus).

Served by the same Starlette/uvicorn stack as the web view (``pipeline.control.web``); with
``--http`` the view serves these three routes too."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette

from pipeline.control.web.app import health_routes, json_errors
from pipeline.control.web.server import WebServer
from pipeline.core.config import WebSettings

logger = logging.getLogger(__name__)

CheckFn = Callable[[], tuple[bool, dict[str, Any]]]


class HealthServer:
    """Serves the three endpoints from a daemon thread; ``port=0`` picks a free port.
    ``web`` protects ``/readyz`` and ``/metrics`` as it protects the view (``/healthz`` stays
    open); without a web config only a loopback ``host`` is accepted."""

    def __init__(
        self,
        host: str,
        port: int,
        live: CheckFn,
        ready: CheckFn,
        metrics: Callable[[], bytes] | None = None,
        web: WebSettings | None = None,
    ) -> None:
        app = Starlette(
            routes=health_routes(live, ready, metrics), exception_handlers=json_errors()
        )
        self._server = WebServer(app, host, port, name="health", flag="--metrics-port", web=web)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> HealthServer:
        self._server.start()
        logger.info(
            "serving /healthz /readyz /metrics on port %d (%s)", self.port, self._server.url
        )
        return self

    def close(self) -> None:
        self._server.close()
