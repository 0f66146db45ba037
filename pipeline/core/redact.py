"""Redaction of credentials in URLs: every URL that reaches a log or an error goes through here."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"

#: Query parameters whose values are secrets (compared case-insensitively).
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "access_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "secret",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "client_secret",
        "refresh_token",
        "id_token",
        "private_token",
        "session_token",
        "jwt",
        "credential",
        "credentials",
    }
)

# user[:password]@ right after a scheme, for strings urlsplit cannot take apart.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        return query
    redacted = [(k, REDACTED if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs]
    return urlencode(redacted, safe="*")


def redact_url(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***:***@`` and secret query values by ``***``.

    Host, port, path and the other query parameters are kept. Strings that are not URLs
    (file paths) come back unchanged.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}:{REDACTED}@", url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}:{REDACTED}@" + netloc.rsplit("@", 1)[1]
    return urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path,
            _redact_query(parts.query),
            _redact_query(parts.fragment) if "=" in parts.fragment else parts.fragment,
        )
    )


# scheme://user[:password]@ anywhere in a text, and secret query values (?token=... &sig=...).
_TEXT_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s\"']*@")
_TEXT_QUERY = re.compile(
    r"(?P<sep>[?&;])(?P<key>[A-Za-z0-9_.-]+)=(?P<value>[^&#\s\"']*)",
)


def redact_text(text: str) -> str:
    """``text`` (a log line, a raw record) with the user-info of every URL in it and the values
    of secret query parameters replaced by ``***``; for text that may not parse as one URL."""
    out = _TEXT_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}:{REDACTED}@", text)

    def query(m: re.Match[str]) -> str:
        if m.group("key").lower() in SECRET_QUERY_KEYS:
            return f"{m.group('sep')}{m.group('key')}={REDACTED}"
        return m.group(0)

    return _TEXT_QUERY.sub(query, out)


def cut(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters, with the full length noted when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
