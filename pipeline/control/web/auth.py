"""The web configuration of the HTTP ports (the view's ``--http`` and the worker's metrics
port), in the format of Prometheus' exporter-toolkit::

    basic_auth_users:            # user -> bcrypt hash (`emotion-stream web hash-password`)
      prometheus: $2b$12$...
    tls_server_config:           # optional: serve HTTPS
      cert_file: server.crt      # relative paths are relative to this file's folder
      key_file: server.key
      client_ca_file: ca.crt     # optional: with client_auth_type, ask for client certificates
      client_auth_type: RequireAndVerifyClientCert

``load_web_config`` checks all of it up front (the file, the YAML, every hash, that the
certificate and key load) and raises one ``ConfigError`` naming the file and the fix.
``BasicAuth`` checks credentials with bcrypt (constant time; an unknown user costs the same
as a wrong password) and remembers successful checks briefly, so that a page polling the API
and showing MJPEG previews does not pay one bcrypt per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError

#: bcrypt hashes as htpasswd, Python's bcrypt and Go's x/crypto/bcrypt write them.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
#: bcrypt reads at most this many bytes of a password.
BCRYPT_MAX_BYTES = 72
TLS_KEYS = {"cert_file", "key_file", "client_ca_file", "client_auth_type"}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
HASH_FIX = "make one with `emotion-stream web hash-password`"


@dataclass(frozen=True)
class TlsFiles:
    """What uvicorn needs to serve HTTPS."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_cert_reqs: int = ssl.CERT_NONE


@dataclass(frozen=True)
class WebConfig:
    """A loaded, checked web configuration."""

    path: Path
    users: dict[str, bytes] = field(default_factory=dict)
    tls: TlsFiles | None = None


def hash_password(password: str, cost: int = 12) -> str:
    """The bcrypt hash of ``password`` (``$2b$COST$...``)."""
    import bcrypt

    raw = password.encode("utf-8")
    if not raw:
        raise ConfigError("the password is empty: give a password on standard input")
    if len(raw) > BCRYPT_MAX_BYTES:
        raise ConfigError(
            f"the password is longer than {BCRYPT_MAX_BYTES} bytes, which bcrypt cannot use"
            " whole: give a shorter one"
        )
    return bcrypt.hashpw(raw, bcrypt.gensalt(cost)).decode("ascii")


def load_web_config(path: Path) -> WebConfig:
    """The web configuration in ``path``; every fault is one ``ConfigError``."""
    where = f"--web-config {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{where}: cannot read it ({why}): fix the path or its permissions"
        ) from None
    data = _parse_yaml(text, where)
    unknown = sorted(set(data) - {"basic_auth_users", "tls_server_config"})
    if unknown:
        raise ConfigError(
            f"{where}: unsupported key {unknown[0]!r}: emotion-stream reads basic_auth_users"
            " and tls_server_config only; remove it"
        )
    users = _users(data.get("basic_auth_users"), where)
    tls = _tls(data.get("tls_server_config"), path, where)
    if not users and tls is None:
        raise ConfigError(
            f"{where}: neither basic_auth_users nor tls_server_config is set: add at least"
            f" one user ({HASH_FIX})"
        )
    return WebConfig(path, users, tls)


def _parse_yaml(text: str, where: str) -> dict[str, Any]:
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe", pure=True).load(text)
    except Exception as exc:  # the YAML parser's own error types
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(f"{where}: not valid YAML ({detail}): fix it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping with basic_auth_users and tls_server_config"
        )
    return data


def _users(raw: Any, where: str) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: basic_auth_users must map user names to bcrypt hashes")
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        name = str(user)
        if not name or ":" in name:
            raise ConfigError(f"{where}: user {name[:64]!r}: a user name is non-empty, no ':'")
        if not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            raise ConfigError(
                f"{where}: the password of user {name[:64]!r} is not a bcrypt hash"
                f" ($2b$12$ followed by 53 characters): {HASH_FIX}"
            )
        users[name] = hashed.encode("ascii")
    return users


def _tls(raw: Any, path: Path, where: str) -> TlsFiles | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: tls_server_config must be a mapping (cert_file, key_file)")
    unknown = sorted(set(raw) - TLS_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: tls_server_config.{unknown[0]} is not supported here: remove it"
            f" (supported: {', '.join(sorted(TLS_KEYS))})"
        )
    if not raw.get("cert_file") or not raw.get("key_file"):
        raise ConfigError(f"{where}: tls_server_config needs both cert_file and key_file")
    base = path.parent
    cert, key = base / str(raw["cert_file"]), base / str(raw["key_file"])
    ca = base / str(raw["client_ca_file"]) if raw.get("client_ca_file") else None
    mode = str(raw.get("client_auth_type") or ("RequireAndVerifyClientCert" if ca else ""))
    reqs = CLIENT_AUTH.get(mode or "NoClientCert")
    if reqs is None:
        raise ConfigError(
            f"{where}: tls_server_config.client_auth_type {mode[:64]!r}: use one of"
            f" {', '.join(CLIENT_AUTH)}"
        )
    if reqs != ssl.CERT_NONE and ca is None:
        raise ConfigError(f"{where}: client_auth_type {mode} needs client_ca_file")
    tls = TlsFiles(cert, key, ca, reqs)
    _check_tls(tls, where)
    return tls


def _check_tls(tls: TlsFiles, where: str) -> None:
    """Load the certificate, key and CA now, so that a bad file is an error at start."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(tls.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigError(
            f"{where}: tls_server_config: the certificate {tls.cert_file} and key"
            f" {tls.key_file} do not load ({why}): fix the paths, or give a PEM certificate"
            " and its unencrypted PEM key"
        ) from None


def parse_basic(header: str) -> tuple[str, str] | None:
    """``Basic base64(user:password)`` -> (user, password); None when malformed."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value or len(value) > 4096:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    """Checks ``(user, password)`` against the configuration's bcrypt hashes.

    A successful check is remembered for ``ttl_s`` under a keyed hash of the credentials
    (never the password itself), at most ``max_entries`` of them; failures are not cached.
    """

    def __init__(
        self, users: dict[str, bytes], ttl_s: float = 60.0, max_entries: int = 256
    ) -> None:
        import bcrypt

        self._users = users
        self._ttl = ttl_s
        self._max = max_entries
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()
        #: an unknown user is checked against this, so that it costs as long as a known one
        cost = next(iter(users.values()))[4:6] if users else b"12"
        self._dummy = bcrypt.hashpw(b"no such user", b"$2b$" + cost + b"$" + b"." * 22)

    def _digest(self, user: str, password: str) -> bytes:
        msg = user.encode("utf-8", "surrogatepass") + b"\0" + password.encode("utf-8", "replace")
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def cached(self, user: str, password: str) -> bool:
        """True when these credentials were verified less than ``ttl_s`` ago."""
        digest = self._digest(user, password)
        now = time.monotonic()
        with self._lock:
            expiry = self._ok.get(digest)
            if expiry is None:
                return False
            if expiry < now:
                del self._ok[digest]
                return False
            return True

    def verify(self, user: str, password: str) -> bool:
        """The bcrypt check (slow on purpose: run it off the event loop)."""
        import bcrypt

        raw = password.encode("utf-8", "replace")[:BCRYPT_MAX_BYTES]
        hashed = self._users.get(user)
        ok = bcrypt.checkpw(raw, hashed if hashed is not None else self._dummy)
        ok = ok and hashed is not None
        if ok:
            with self._lock:
                self._ok[self._digest(user, password)] = time.monotonic() + self._ttl
                while len(self._ok) > self._max:
                    self._ok.popitem(last=False)
        return ok
