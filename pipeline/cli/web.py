"""``emotion-stream web hash-password``: the bcrypt hash of a password read on standard input,
for the ``basic_auth_users`` of a web config (``--web-config``)."""

from __future__ import annotations

import argparse
import getpass
import sys

from pipeline.core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``web hash-password`` to the CLI."""
    web = sub.add_parser("web", help="Login for the HTTP ports (view and metrics).")
    cmds = web.add_subparsers(dest="web_command", metavar="COMMAND", required=True)
    hp = cmds.add_parser(
        "hash-password",
        help="Read a password on standard input, print its bcrypt hash (for basic_auth_users"
        " of --web-config).",
        description="Reads one password on standard input (asked twice, not echoed, at a"
        " terminal) and prints its bcrypt hash. Example: emotion-stream web hash-password <"
        " deploy/secrets/metrics_password",
    )
    hp.add_argument(
        "--cost", type=int, default=12, choices=range(10, 16), metavar="10-15",
        help="bcrypt cost (default 12: about a quarter of a second per check; successful"
        " logins are remembered for a minute).",
    )  # fmt: skip
    hp.set_defaults(func=cmd_hash_password)


def read_password() -> str:
    """The password: asked twice without echo at a terminal, else the first line of stdin."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the two passwords differ: run it again")
        return first
    data = sys.stdin.buffer.read(4096)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("standard input is not UTF-8 text: give the password as text") from None
    return text.splitlines()[0] if text.strip("\r\n") else ""


def cmd_hash_password(args: argparse.Namespace) -> int:
    from pipeline.control.web.auth import hash_password

    print(hash_password(read_password(), args.cost))
    return 0
