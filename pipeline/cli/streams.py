"""``emotion-stream streams add | remove | list``: stream specs on the control topic."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, require_kafka, settings_from_args
from pipeline.core.config import DropPolicy, KafkaSettings
from pipeline.core.errors import ConfigError

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
    add.add_argument("stream_id", metavar="STREAM_ID", help="Stream id (letters, digits, . _ : -).")
    add.add_argument(
        "url",
        metavar="URL",
        help="rtsp://, http(s)://, file: URL or path; ${VAR} names a worker env var.",
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
    )

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
    _check_scheme(rec.url, rec.stream_id)
    if redact_url(rec.url) != rec.url:
        logger.warning(
            "stream %s: the URL carries credentials in clear on the control topic; prefer ${VAR} references",
            rec.stream_id,
        )
    kafka = kafka_settings(args)
    n = ensure_control_topic(kafka, kafka.control_partitions)
    part = ControlClient(kafka).put(rec)
    print(f"added {rec.stream_id} {rec.display} (partition {part} of {n})")
    return 0


def _check_scheme(url: str, stream_id: str) -> None:
    from urllib.parse import urlsplit

    from pipeline.control.streams import ALLOWED_SCHEMES

    scheme = urlsplit(url).scheme.lower()
    if len(scheme) > 1 and scheme not in ALLOWED_SCHEMES:
        raise ConfigError(
            f"stream {stream_id}: scheme {scheme!r} not allowed: use one of {', '.join(sorted(ALLOWED_SCHEMES))}"
        )


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
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no streams")
        return 0
    for row in rows:
        flags = " ".join(k for k in ("loop", "realtime") if row.get(k))
        print(
            f"{row['stream_id']:<24} p{row['partition']!s:<3} {row.get('session_id') or '-':<12} {row['url']} {flags}".rstrip()
        )
    return 0
