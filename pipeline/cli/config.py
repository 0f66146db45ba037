"""``emotion-stream config show``: the settings a worker would run with, after the
precedence flags > ``--config`` > ``ES_*`` environment > defaults, secrets masked."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, settings_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``config show`` to the CLI."""
    p = sub.add_parser("config", help="Show the effective settings.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = csub.add_parser(
        "show",
        help="Print the effective settings (YAML; --json: JSON) in a form --config accepts.",
    )
    show.add_argument("--json", action="store_true", help="JSON instead of YAML.")
    add_options(show, [opts.CONFIG], opts.ALL)
    show.set_defaults(func=cmd_show)


def cmd_show(args: argparse.Namespace) -> int:
    from pipeline.core.config_load import dump_settings

    settings = settings_from_args(args)
    text = dump_settings(settings, "json" if args.json else "yaml")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
