"""What stands between the network and the HTTP ports (the view's ``--http`` and the worker's
metrics port): the bind rule, the ``Host`` allow-list, HTTP basic authentication from the web
configuration, and security headers on every answer.

``/healthz`` stays open (no login, any ``Host``) for liveness probes: it tells nothing but
"alive". Everything else (pages, API, previews, ``/metrics``, ``/readyz``) needs a login
when a web configuration is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.control.web.auth import BasicAuth, WebConfig, load_web_config, parse_basic
from pipeline.core.config import WebSettings
from pipeline.core.errors import ConfigError
from pipeline.core.redact import cut

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REALM = "emotion-stream"
#: Paths served to anyone, from any Host: liveness probes.
OPEN_PATHS = frozenset({"/healthz"})
#: Longest id (or other request-supplied text) echoed back in an answer.
ECHO_MAX = 64

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addrs = {str(info[4][0]).split("%")[0] for info in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def check_bind(host: str, web: WebSettings, flag: str) -> None:
    """Refuse to serve beyond this machine without a web configuration (unless insecure)."""
    if is_loopback(host) or web.config is not None:
        return
    if web.insecure:
        logger.warning(
            "%s %s: serving beyond this machine with no login and no TLS (--http-insecure)",
            flag,
            host,
        )
        return
    raise ConfigError(
        f"{flag} {host}: this listens beyond this machine, and there is no web config: pass"
        " --web-config FILE (basic_auth_users with hashes from `emotion-stream web"
        " hash-password`, tls_server_config), bind 127.0.0.1, or pass --http-insecure to"
        " serve it to anyone who can reach it"
    )


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def default_hosts(bound: str) -> set[str]:
    """The bound address, localhost, 127.0.0.1 and ::1; bound to all addresses, also this
    machine's names and addresses (a scraper that found the worker by DNS sends its IP)."""
    hosts = {bound.strip("[]").lower(), "localhost", "127.0.0.1", "::1"}
    if _is_unspecified(bound):
        names = {socket.gethostname(), socket.getfqdn()}
        hosts |= {n.lower() for n in names if n}
        for name in names:
            try:
                hosts |= {str(i[4][0]).split("%")[0] for i in socket.getaddrinfo(name, None)}
            except OSError:
                continue
        hosts |= local_addresses()
    return hosts


def local_addresses() -> set[str]:
    """The addresses of this machine's interfaces (Linux; empty where unknown)."""
    out: set[str] = set()
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as fh:
            for line in fh:
                raw = line.split()[0]
                out.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return out | _ipv4_addresses()


def _ipv4_addresses() -> set[str]:
    import fcntl
    import struct

    out: set[str] = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            except OSError:  # SIOCGIFADDR: no IPv4 address on that interface
                continue
            out.add(socket.inet_ntoa(packed[20:24]))
    return out


def host_of(header: str) -> str:
    """The host part of a ``Host`` header, lower-case, without port or IPv6 brackets."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header[1:]
    if header.count(":") == 1:
        return header.partition(":")[0]
    return header


class HostAllowList:
    """``*`` allows any host; ``*.example.com`` any subdomain of example.com."""

    def __init__(self, hosts: Iterable[str]) -> None:
        self.hosts = {h.strip().lower().strip("[]") for h in hosts if h.strip()}
        self.any = "*" in self.hosts
        self.suffixes = tuple(h[1:] for h in self.hosts if h.startswith("*."))

    def allows(self, header: str | None) -> bool:
        if self.any:
            return True
        if not header:
            return False
        host = host_of(header)
        return host in self.hosts or (bool(self.suffixes) and host.endswith(self.suffixes))


@dataclass
class Guard:
    """Everything the middleware needs; built once per server by ``make_guard``."""

    hosts: HostAllowList
    auth: BasicAuth | None
    config: WebConfig | None
    pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)


def make_guard(host: str, web: WebSettings, flag: str) -> Guard:
    """The bind rule, the web config and the Host list for a server bound to ``host``."""
    check_bind(host, web, flag)
    config = load_web_config(web.config) if web.config is not None else None
    if config is not None and config.tls is None and not is_loopback(host):
        logger.warning(
            "%s %s: %s has no tls_server_config: passwords and pictures cross the network"
            " in clear text",
            flag,
            host,
            config.path,
        )
    allowed = web.allowed_hosts or tuple(default_hosts(host))
    auth = BasicAuth(config.users) if config is not None and config.users else None
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="web-auth") if auth else None
    return Guard(HostAllowList(allowed), auth, config, pool)


async def _json(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": error}).encode()
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class GuardMiddleware:
    """ASGI middleware: security headers, then the Host check, then basic auth."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # no route speaks it: refused, never unguarded
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        if scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send_with_headers)
            return
        host = _header(scope, b"host")
        if not self.guard.hosts.allows(host):
            await _json(
                send_with_headers,
                400,
                f"Host {cut(host or '(none)', ECHO_MAX)!r} is not served here: open the address the"
                " worker listens on, or add the name to --http-allowed-hosts",
                [],
            )
            return
        if self.guard.auth is not None and not await self._authorised(scope):
            await _json(
                send_with_headers,
                401,
                "authentication required: log in with a user of the worker's web config",
                [(b"www-authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode())],
            )
            return
        await self.app(scope, receive, send_with_headers)

    async def _authorised(self, scope: Scope) -> bool:
        auth = self.guard.auth
        if auth is None:
            return True
        creds = parse_basic(_header(scope, b"authorization") or "")
        if creds is None:
            return False
        user, password = creds
        if auth.cached(user, password):
            return True
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self.guard.pool, auth.verify, user, password)
        if not ok:
            client = scope.get("client") or ("?", 0)
            logger.info("web: login refused for user %r from %s", cut(user, ECHO_MAX), client[0])
        return ok
