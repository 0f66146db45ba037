"""``emotion-stream streams add | remove | list``: stream specs on the control topic."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, require_kafka, settings_from_args
from pipeline.core.config import DropPolicy, KafkaSettings
from pipeline.core.errors import ConfigError
from pipeline.core.ids import ID_RULE, check_id

logger = logging.getLogger(__name__)

#: The control record's own options of ``streams add``: (flag, argparse keywords).
RECORD_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--session", {"help": "Session id of its events (default: the worker's)."}),
    ("--loop", {"action": "store_true", "help": "Replay a file forever."}),
    ("--realtime", {"action": "store_true", "help": "Pace a file at its frame rate."}),
    ("--every", {"type": int, "default": 1, "help": "Process every Nth decoded frame."}),
    ("--max-frames", {"type": int, "help": "Stop after N decoded frames."}),
    (
        "--drop-policy",
        {"choices": [p.value for p in DropPolicy], "help": "Full-queue policy (live sources)."},
    ),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``streams add | remove | list`` to the CLI."""
    streams = sub.add_parser(
        "streams", help="Stream specs on the Kafka control topic (add, remove, list)."
    )
    ssub = streams.add_subparsers(dest="streams_command", metavar="ACTION", required=True)
    add = ssub.add_parser("add", help="Add or replace a stream (a record keyed by its id).")
    add.add_argument("stream_id", metavar="STREAM_ID", help=f"Stream id: {ID_RULE}.")
    add.add_argument(
        "url",
        metavar="URL",
        help="rtsp://, http(s)://, file: URL or path (credentials: the workers'"
        " source.credentials setting; ${VAR} is not expanded).",
    )
    for flag, kw in RECORD_OPTIONS:
        add.add_argument(flag, **kw)
    rm = ssub.add_parser("remove", help="Remove a stream (writes a tombstone).")
    rm.add_argument("stream_id", metavar="STREAM_ID", help="Stream id.")
    ls = ssub.add_parser("list", help="Show the current streams (latest spec per id).")
    ls.add_argument("--json", action="store_true", help="JSON output.")
    for p, func in ((add, cmd_add), (rm, cmd_remove), (ls, cmd_list)):
        add_options(p, [opts.CONFIG], opts.CONTROL)
        p.set_defaults(func=func)


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """The ``kafka`` section of the settings (flags > --config > ES_KAFKA_*); Kafka required."""
    settings = settings_from_args(args)
    require_kafka(settings)
    return settings.kafka


def cmd_add(args: argparse.Namespace) -> int:
    from pipeline.control.streams import (
        ControlClient,
        StreamRecord,
        ensure_control_topic,
        redact_url,
        validate_record,
    )

    check_id("stream id", args.stream_id)
    if args.session is not None:
        check_id("session id", args.session, "fix --session")
    try:
        rec = StreamRecord(
            stream_id=args.stream_id,
            url=args.url,
            session_id=args.session,
            every=args.every,
            realtime=args.realtime,
            loop=args.loop,
            max_frames=args.max_frames,
            drop_policy=DropPolicy(args.drop_policy) if args.drop_policy else None,
        )
    except ValueError as exc:
        raise ConfigError(f"stream {args.stream_id!r}: {exc}".replace("\n", " ")) from exc
    validate_record(rec, Path("/"))  # scheme, URL shape, no ${...}; media roots are the workers'
    if redact_url(rec.url) != rec.url:
        logger.warning(
            "stream %s: the URL carries credentials in clear on the control topic; give them"
            " in the workers' source.credentials setting instead",
            rec.stream_id,
        )
    kafka = kafka_settings(args)
    n = ensure_control_topic(kafka, kafka.control_partitions)
    part = ControlClient(kafka).put(rec)
    print(f"added {rec.stream_id} {rec.display} (partition {part} of {n})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from pipeline.control.streams import ControlClient, ensure_control_topic

    kafka = kafka_settings(args)
    ensure_control_topic(kafka, kafka.control_partitions)
    part = ControlClient(kafka).remove(args.stream_id)
    print(f"removed {args.stream_id} (tombstone in partition {part})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipeline.control.streams import ControlClient, partition_for
    from pipeline.core.kafka_client import partition_count

    kafka = kafka_settings(args)
    client = ControlClient(kafka)
    records = client.read_all()
    n = partition_count(kafka, kafka.control_topic)
    rows = [
        {
            **json.loads(r.to_bytes()),
            "url": r.display,
            "partition": partition_for(sid, n) if n else None,
        }
        for sid, r in sorted(records.items())
    ]
    rejected = client.rejections.current()
    if args.json:
        print(json.dumps(rows, indent=2))
        _print_rejected(rejected, sys.stderr)  # the JSON on stdout stays a list of streams
        return 0
    if not rows:
        print("no streams")
    for row in rows:
        flags = " ".join(k for k in ("loop", "realtime") if row.get(k))
        print(
            f"{row['stream_id']:<24} p{row['partition']!s:<3} {row.get('session_id') or '-':<12} {row['url']} {flags}".rstrip()
        )
    _print_rejected(rejected, sys.stdout)
    return 0


def _print_rejected(rejected: list[dict[str, Any]], out: TextIO) -> None:
    """The most recent records every worker refuses (latest per key), with the reason."""
    if not rejected:
        return
    print(f"rejected records ({len(rejected)} most recent; workers skip them):", file=out)
    for r in rejected:
        print(f"  {r['key']:<24} {r['reason']:<14} {r['detail']}", file=out)
