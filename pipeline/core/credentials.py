"""Credentials that belong to hosts (``source.credentials``).

The setting maps ``HOST[:PORT]`` to a username and a password taken from an environment
variable (``password_env``) or a file (``password_file``), read at each connect so that a
rotated secret is picked up. A URL gets the entry of its own host and port (or, failing that,
the port-less entry of its host) and nothing else: a URL with no matching entry gets none, and
a URL that names its own ``user:password@`` keeps them. The password itself never appears in a
log line or an error: errors name the setting and the variable or file.

Stream URLs from the control topic are never expanded from the worker's environment; this
table is how a control-topic stream gets credentials.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import quote, urlsplit, urlunsplit

from pipeline.core.config import HostCredentials
from pipeline.core.errors import ConfigError

#: Default port of each scheme, so that ``cam:554`` matches ``rtsp://cam/x``.
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443, "rtmp": 1935, "rtmps": 443}
#: Schemes that carry user-info to the server (RTSP and HTTP authentication).
CREDENTIAL_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https"})


def _host_text(host: str) -> str:
    host = host.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def normalise_host_key(key: str) -> str:
    """``HOST[:PORT]`` in one spelling (lower case, IPv6 in brackets); ValueError if malformed."""
    text = key.strip()
    host, port = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise ValueError(f"credentials key {key[:100]!r}: use HOST[:PORT] or [IPV6][:PORT]")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or any(c in host for c in "/@?#% \t") or (port and not port.isdigit()):
        raise ValueError(f"credentials key {key[:100]!r}: use HOST[:PORT] or [IPV6][:PORT]")
    if port and not 0 < int(port) < 65536:
        raise ValueError(f"credentials key {key[:100]!r}: port {port} is not 1-65535")
    host = _host_text(host)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{int(port)}" if port else shown


def entry_for(url: str, table: Mapping[str, HostCredentials]) -> tuple[str, HostCredentials] | None:
    """The (key, entry) of ``url``'s host and port, else of its host alone, else None."""
    if not table:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return None
    host = _host_text(parts.hostname)
    shown = f"[{host}]" if ":" in host else host
    port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    for key in (f"{shown}:{port}" if port else None, shown):
        if key is not None and key in table:
            return key, table[key]
    return None


def password_of(key: str, cred: HostCredentials, environ: Mapping[str, str] | None = None) -> str:
    """The entry's password, read now; ConfigError names the setting (never the value)."""
    environ = os.environ if environ is None else environ
    where = f"source.credentials[{key!r}]"
    if cred.password_env is not None:
        value = environ.get(cred.password_env)
        if value is None:
            raise ConfigError(
                f"{where}: environment variable {cred.password_env} is not set: set it in the"
                " worker's environment"
            )
        return value
    if cred.password_file is not None:
        try:
            return cred.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"{where}: cannot read password_file {cred.password_file} ({why}): fix the path"
            ) from None
    return ""


def with_credentials(
    url: str, table: Mapping[str, HostCredentials], environ: Mapping[str, str] | None = None
) -> str:
    """``url`` with the user-info of its host's entry; unchanged when the URL has its own
    user-info, its scheme carries none, or no entry matches."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in CREDENTIAL_SCHEMES or "@" in parts.netloc:
        return url
    found = entry_for(url, table)
    if found is None:
        return url
    key, cred = found
    user = quote(cred.username, safe="")
    password = quote(password_of(key, cred, environ), safe="")
    userinfo = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
