"""``emotion-stream eventlog list | forget SINK``: a stopped worker's durable event log.

A worker's log keeps every event until each sink it ever delivered to has acknowledged it. A
sink taken out of a worker's configuration keeps its cursor (nothing accepted is dropped on
its own): ``list`` shows it with what it still waits for, ``forget`` lets go of it so the log
trims again. Both open the log of ``--worker-id`` under ``--log-dir``, which must not be in
use by a running worker. A damaged log is reported in one line and left as it is (the worker
moves it aside when it starts).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, settings_from_args
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.runtime.eventlog import EventLog


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``eventlog list`` and ``eventlog forget`` to the CLI."""
    p = sub.add_parser("eventlog", help="Inspect a stopped worker's event log; drop a sink.")
    esub = p.add_subparsers(dest="eventlog_command", metavar="ACTION", required=True)
    listing = esub.add_parser("list", help="Sinks with a cursor, events pending, oldest age.")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table.")
    forget = esub.add_parser(
        "forget", help="Drop a sink's cursor: its undelivered events are not delivered to it."
    )
    forget.add_argument("sink", metavar="SINK", help="Sink name as `eventlog list` shows it.")
    for q in (listing, forget):
        add_options(q, [opts.CONFIG, *opts.IDENTITY, *opts.DELIVERY])
    listing.set_defaults(func=cmd_list)
    forget.set_defaults(func=cmd_forget)


def _open(args: argparse.Namespace) -> EventLog:
    """The existing log of ``--worker-id`` (never a new, empty one for a mistyped id)."""
    from pipeline.runtime.eventlog import open_log

    s = settings_from_args(args)
    root = s.delivery.log_dir
    if not (root / s.worker_id / "events.db").is_file():
        have = sorted(p.parent.name for p in root.glob("*/events.db")) if root.is_dir() else []
        raise ConfigError(
            f"no event log for worker {s.worker_id!r} under {root} "
            f"(logs there: {', '.join(have) or 'none'}): check --worker-id and --log-dir"
        )
    return open_log(root, s.worker_id, s.delivery, repair=False)  # look, never move aside


def cmd_list(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        rows = []
        for name in log.sinks():
            pending, age = log.pending(name)
            rows.append({"sink": name, "pending": pending, "oldest_age_s": age})
        folder, size = str(log.folder), log.size_bytes
    finally:
        log.close()
    if args.json:
        print(json.dumps({"log": folder, "bytes": size, "sinks": rows}))
        return 0
    print(f"event log {folder}: {size} bytes")
    for r in rows:
        print(f"  {r['sink']}: {r['pending']} pending, oldest {r['oldest_age_s']:.0f} s")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    log = _open(args)
    try:
        dropped = log.forget(args.sink)
        folder = log.folder
    finally:
        log.close()
    print(f"event log {folder}: sink {args.sink} forgotten, {dropped} events not delivered to it")
    return 0
