"""One rule for every id a worker builds names from: session, stream and worker ids.

Ids become parts of Redis keys (``P:session:S:tracks``, ``P:track:S:STREAM:T``), of the
replay guard's stream scopes (``STREAM@EPOCH``), of event-log folders (``DIR/WORKER_ID``) and
of URL paths. The rule leaves out the key separator ``:``, the scope separator ``@``, ``/``
and whitespace, so no two ids can ever produce the same key, and no id can name another
folder. It is checked at every entry point (flags, ``--config``, ``ES_*``, control records,
URL paths) with one line that names the id, its value (cut short) and the rule.
"""

from __future__ import annotations

import re

from pipeline.core.errors import ConfigError

#: The id rule as a regular expression (anchored; also used as a pydantic ``pattern``).
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ID_RE = re.compile(ID_PATTERN)
#: The rule in words, for error messages and help texts.
ID_RULE = "1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit (no ':', '@', '/' or spaces)"
#: Longest part of a rejected value that an error message shows.
SHOWN_CHARS = 64


def is_valid_id(value: object) -> bool:
    """Whether ``value`` is a string that follows the id rule (a trailing newline does not)."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr`` of ``value`` cut to about ``limit`` characters, with the full length noted."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def id_problem(kind: str, value: object) -> str | None:
    """None if ``value`` is a valid id, else one line naming ``kind``, the value and the rule."""
    if is_valid_id(value):
        return None
    return f"{kind} {shown(value)} is invalid: use {ID_RULE}"


def check_id(kind: str, value: object, fix: str = "") -> str:
    """``value`` if it is a valid id; otherwise ConfigError naming ``kind`` (``"session id"``,
    ``"stream id"``, ``"worker id"``), the value cut short, the rule and ``fix`` if given."""
    problem = id_problem(kind, value)
    if problem is not None:
        raise ConfigError(f"{problem}{': ' + fix if fix else ''}")
    assert isinstance(value, str)
    return value
