"""The worker's web view: ``start_view`` wires a preview hub into the worker's streams and
serves the Starlette app (pages, previews, JSON, health and metrics) on ``--http``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pipeline.control.web.app import CheckFn, ViewContext, create_app
from pipeline.control.web.live import LiveStats
from pipeline.control.web.preview import PreviewHub
from pipeline.control.web.server import WebServer, check_http_settings, parse_http
from pipeline.core.config import RedisSettings, ViewSettings, WebSettings

logger = logging.getLogger(__name__)

__all__ = ["WebView", "check_http_settings", "start_view"]


class WebView:
    """A running view; ``close()`` stops serving (the worker keeps running)."""

    def __init__(self, ctx: ViewContext, server: WebServer) -> None:
        self.ctx = ctx
        self.server = server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def close(self) -> None:
        self.ctx.closing.set()
        self.server.close()
        self.ctx.live.close()
        self.ctx.hub.close()
        if self.ctx.redis is not None:
            self.ctx.redis.close()


def start_view(
    worker: Any,
    settings: ViewSettings,
    redis: RedisSettings | None = None,
    healthz: CheckFn | None = None,
    readyz: CheckFn | None = None,
    metrics: Callable[[], bytes] | None = None,
    web: WebSettings | None = None,
) -> WebView:
    """Serve the view of ``worker`` (a ``pipeline.runtime.worker.Worker``) on
    ``settings.http``; call before adding streams so that each stream reports to the view.
    ``web``: login, TLS and allowed hosts (default: none, which allows loopback only)."""
    if not settings.http:
        raise ValueError("start_view needs settings.http")
    host, port = parse_http(settings.http)
    hub = PreviewHub(settings.blur_faces, settings.jpeg_quality)
    worker.set_observer(hub)
    client = None
    if redis is not None and redis.url:
        from pipeline.sinks.redis_agg import connect

        client = connect(redis.url, redis.secret())
    ctx = ViewContext(
        hub=hub,
        live=LiveStats(worker.stats),
        settings=settings,
        metrics=metrics,
        redis=client,
        redis_prefix=redis.key_prefix if redis is not None else "es",
    )
    if healthz is not None:
        ctx.healthz = healthz
    if readyz is not None:
        ctx.readyz = readyz
    try:
        server = WebServer(create_app(ctx), host, port, name="view", web=web).start()
    except BaseException:
        hub.close()
        if client is not None:
            client.close()
        raise
    ctx.live.start()
    logger.info("web view on %s", server.url)
    return WebView(ctx, server)
