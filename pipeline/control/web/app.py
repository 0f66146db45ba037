"""The worker's web view (Starlette): pages, previews, JSON, and /healthz /readyz /metrics.

Routes: ``/`` (stream cards with live previews), ``/streams/{id}/snapshot.jpg``,
``/streams/{id}/preview.mjpg``, ``/api/streams``, ``/sessions/{id}`` and
``/api/sessions/{id}`` (Redis aggregates and per-minute chart), ``/healthz``, ``/readyz``,
``/metrics``. Unknown streams and sessions answer 404 with a JSON ``error``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from pipeline.control.web.guard import ECHO_MAX
from pipeline.control.web.live import LiveStats
from pipeline.control.web.preview import EMOTION_COLORS, PreviewHub, css_color
from pipeline.core.config import ViewSettings
from pipeline.core.ids import id_problem
from pipeline.core.redact import cut
from pipeline.core.types import EMOTIONS

logger = logging.getLogger(__name__)

CheckFn = Callable[[], tuple[bool, dict[str, Any]]]
BOUNDARY = "frame"


def _always_ok() -> tuple[bool, dict[str, Any]]:
    return True, {}


@dataclass
class ViewContext:
    """What the view reads: the worker's stats, the preview hub, checks, metrics, Redis."""

    hub: PreviewHub
    live: LiveStats
    settings: ViewSettings
    healthz: CheckFn = _always_ok
    readyz: CheckFn = _always_ok
    metrics: Callable[[], bytes] | None = None
    redis: Any = None
    redis_prefix: str = "es"
    closing: threading.Event = field(default_factory=threading.Event)
    #: preview.mjpg answers being streamed now (all streams); capped by settings.max_watchers
    watching: int = 0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _unknown_stream(sid: str) -> JSONResponse:
    return _error(
        404, f"unknown stream {cut(sid, ECHO_MAX)!r}: see /api/streams for this worker's streams"
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, wrong method) as JSON."""
    code = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(code, f"{cut(str(detail), ECHO_MAX)}: {cut(request.url.path, ECHO_MAX)}")


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: logged once, answered as JSON without a traceback."""
    logger.error("view: %s %s failed: %r", request.method, cut(request.url.path, ECHO_MAX), exc)
    return _error(500, "internal error: see the worker's log")


class WatchedStream(StreamingResponse):
    """A preview.mjpg answer that holds one watcher slot and gives it back when the answer
    ends for any reason (client gone, view closing, error)."""

    def __init__(self, content: Any, release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _static(name: str) -> str:
    return resources.files("pipeline.control.web").joinpath(f"static/{name}").read_text("utf-8")


def stream_item(s: dict[str, Any], hub: PreviewHub) -> dict[str, Any]:
    """One stream of ``/api/streams``."""
    sid = s["stream_id"]
    latest = hub.latest(sid)
    faces_now = len(latest.faces) if latest is not None else 0
    return {
        "id": sid,
        "url": s.get("url"),
        "session_id": s.get("session_id"),
        "state": s["state"],
        "error": s.get("error"),
        "fps": round(float(s.get("fps_recent", 0.0)), 2),
        "fps_mean": round(float(s.get("fps", 0.0)), 2),
        "frames_processed": s.get("processed", 0),
        "frames_dropped": s.get("dropped", 0),
        "faces": faces_now,
        "faces_total": s.get("faces", 0),
        "tracks": len(set(latest.faces.track_id.tolist())) if latest is not None else 0,
        "tracks_total": s.get("tracks", 0),
        "emotions_last_minute": s["emotions_last_minute"],
        "watchers": hub.watchers.get(sid, 0),
        "preview": latest is not None,
    }


def create_app(view: ViewContext) -> Starlette:
    hub, live = view.hub, view.live

    def known(sid: str) -> dict[str, Any] | None:
        return live.streams().get(sid)

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(_static("index.html"))

    async def api_streams(request: Request) -> JSONResponse:
        streams = live.streams()
        for sid in hub.stream_ids():
            if sid not in streams:
                hub.forget(sid)
        return JSONResponse([stream_item(s, hub) for s in streams.values()])

    async def api_meta(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "emotions": list(EMOTIONS),
                "colors": {n: css_color(n) for n in EMOTION_COLORS},
                "blur_faces": view.settings.blur_faces,
                "preview_fps": view.settings.preview_fps,
                "redis": view.redis is not None,
            }
        )

    async def snapshot(request: Request) -> Response:
        sid = request.path_params["stream_id"]
        if known(sid) is None:
            return _unknown_stream(sid)
        data = await asyncio.get_running_loop().run_in_executor(hub.executor, hub.jpeg, sid)
        if data is None:
            return _error(
                503, f"stream {cut(sid, ECHO_MAX)!r} has no processed frame yet: retry in a moment"
            )
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def preview(request: Request) -> Response:
        sid = request.path_params["stream_id"]
        if known(sid) is None:
            return _unknown_stream(sid)
        cap = view.settings.max_watchers
        if view.watching >= cap:
            return _error(
                503,
                f"{cap} previews are being watched already (view.max_watchers): retry later",
                {"Retry-After": "10"},
            )
        view.watching += 1
        hub.watchers[sid] = hub.watchers.get(sid, 0) + 1

        def release() -> None:
            view.watching -= 1
            hub.watchers[sid] -= 1

        return WatchedStream(
            _mjpeg(view, sid),
            release,
            media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            headers={"Cache-Control": "no-store"},
        )

    def session_data(sid: str) -> tuple[int, dict[str, Any]]:
        if (problem := id_problem("session id", sid)) is not None:
            return 400, {"error": problem}
        if view.redis is None:
            return 503, {"error": "no Redis sink: start the worker with --redis URL for sessions"}
        try:
            return _session_body(sid)
        except Exception as exc:  # Redis down or a key not ours: an answer, never a 500
            logger.warning("session %s: reading Redis failed: %s", sid, str(exc)[:200])
            return 503, {"error": "reading the session from Redis failed: retry later"}

    def _session_body(sid: str) -> tuple[int, dict[str, Any]]:
        from pipeline.sinks.redis_agg import read_minutes, read_session, read_tracks

        agg = read_session(view.redis, view.redis_prefix, sid)
        if not agg["frames"] and not agg["faces"]:
            return 404, {"error": f"unknown session {cut(sid, ECHO_MAX)!r}: no aggregates in Redis"}
        agg["minutes"] = read_minutes(view.redis, view.redis_prefix, sid)
        agg["track_list"] = read_tracks(view.redis, view.redis_prefix, sid)[:200]
        return 200, agg

    def api_session(request: Request) -> JSONResponse:
        code, body = session_data(request.path_params["session_id"])
        return JSONResponse(body, status_code=code)

    def session_page(request: Request) -> Response:
        code, body = session_data(request.path_params["session_id"])
        if code != 200:
            return JSONResponse(body, status_code=code)
        return HTMLResponse(_static("session.html"))

    routes = [
        Route("/", index),
        Route("/api/streams", api_streams),
        Route("/api/meta", api_meta),
        Route("/api/sessions/{session_id}", api_session),
        Route("/sessions/{session_id}", session_page),
        Route("/streams/{stream_id}/snapshot.jpg", snapshot),
        Route("/streams/{stream_id}/preview.mjpg", preview),
        Mount(
            "/static",
            app=StaticFiles(packages=[("pipeline.control.web", "static")]),
            name="static",
        ),
        *health_routes(view.healthz, view.readyz, view.metrics),
    ]
    return Starlette(routes=routes, exception_handlers=json_errors())


def json_errors() -> dict[Any, Any]:
    """Exception handlers that answer unknown paths, wrong methods and failures as JSON."""
    return {404: _http_error, 405: _http_error, Exception: _server_error}


async def _mjpeg(view: ViewContext, sid: str) -> AsyncIterator[bytes]:
    """JPEG parts at most ``preview_fps`` a second, a part only when a new frame was processed;
    encoding happens only here, so an unwatched stream costs nothing."""
    hub = view.hub
    period = 1.0 / view.settings.preview_fps
    loop = asyncio.get_running_loop()
    last: bytes | None = None
    while not view.closing.is_set():
        data = await loop.run_in_executor(hub.executor, hub.jpeg, sid)
        if data is not None and data is not last:
            last = data
            head = (
                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
            )
            yield head.encode() + data + b"\r\n"
        await asyncio.sleep(period)


def health_routes(
    healthz: CheckFn, readyz: CheckFn, metrics: Callable[[], bytes] | None
) -> list[Route]:
    """``/healthz``, ``/readyz`` (200 or 503 with JSON detail) and ``/metrics``."""

    def check(fn: CheckFn) -> Callable[[Request], JSONResponse]:
        def endpoint(request: Request) -> JSONResponse:
            try:
                ok, detail = fn()
            except Exception as exc:
                ok, detail = False, {"error": str(exc)}
            return JSONResponse({"ok": ok, **detail}, status_code=200 if ok else 503)

        return endpoint

    routes = [Route("/healthz", check(healthz)), Route("/readyz", check(readyz))]
    if metrics is not None:

        def metrics_endpoint(request: Request) -> Response:
            return Response(metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

        routes.append(Route("/metrics", metrics_endpoint))
    return routes
