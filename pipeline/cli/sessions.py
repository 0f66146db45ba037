"""``emotion-stream sessions show`` (Redis aggregates) and ``emotion-stream tail`` (Kafka)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, require_kafka, require_redis, settings_from_args
from pipeline.core.errors import ConfigError
from pipeline.core.ids import check_id

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``sessions show`` and ``tail`` to the CLI."""
    sessions = sub.add_parser("sessions", help="Aggregated statistics kept in Redis.")
    ssub = sessions.add_subparsers(dest="sessions_command", metavar="ACTION", required=True)
    show = ssub.add_parser("show", help="Show one session's aggregates.")
    show.add_argument("session", help="Session id (the worker's --session).")
    show.add_argument("--tracks", action="store_true", help="Also list per-track aggregates.")
    show.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    add_options(show, [opts.CONFIG], opts.REDIS)
    show.set_defaults(func=cmd_sessions_show)

    tail = sub.add_parser("tail", help="Print events from Kafka as they arrive, one line each.")
    tail.add_argument("--from-beginning", action="store_true", help="Start at the oldest event.")
    tail.add_argument("--max", type=int, default=None, metavar="N", help="Exit after N events.")
    tail.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="Exit after S seconds without a new event.",
    )
    add_options(tail, [opts.CONFIG], opts.KAFKA[:2])
    tail.set_defaults(func=cmd_tail)


def cmd_sessions_show(args: argparse.Namespace) -> int:
    from pipeline.sinks.redis_agg import connect, read_session, read_tracks

    check_id("session id", args.session, "pass the worker's --session")
    settings = settings_from_args(args)
    require_redis(settings)
    redis = settings.redis
    assert redis.url is not None
    client = connect(redis.url, redis.secret())
    try:
        agg = read_session(client, redis.key_prefix, args.session)
        if args.tracks:
            agg["track_list"] = read_tracks(client, redis.key_prefix, args.session)
    finally:
        client.close()
    if args.json:
        print(json.dumps(agg, indent=2))
    else:
        print(format_session(agg))
    if not agg["faces"]:
        logger.warning(
            "session %s has no aggregates in Redis (wrong --session or --prefix?)", args.session
        )
    return 0


def format_session(agg: dict[str, Any]) -> str:
    lines = [f"session   {agg['session']}"]
    for key in ("faces", "frames", "tracks", "first_ts", "last_ts", "duration_s", "dominant"):
        lines.append(f"{key:<9} {agg.get(key)}")
    lines.append(f"streams   {', '.join(agg['streams']) or '-'}")
    faces = max(int(agg["faces"]), 1)
    lines.append("")
    lines.append(f"{'emotion':<10}{'faces':>8}{'share':>8}{'mean p':>8}")
    for label, p in agg["mean_probs"].items():
        n = agg["emotions"].get(label, 0)
        lines.append(f"{label:<10}{n:>8}{n / faces:>8.1%}{p:>8.3f}")
    for t in agg.get("track_list", []):
        lines.append(
            f"track {t['stream_id']}:{t['track_id']:<5} faces {t['faces']:<6} "
            f"dwell {t['dwell_s']:>7.2f} s  dominant {t['dominant']}"
        )
    return "\n".join(lines)


def cmd_tail(args: argparse.Namespace) -> int:
    from pipeline.core.kafka_client import make_consumer

    if args.max is not None and args.max < 1:
        raise ConfigError("--max must be at least 1")
    settings = settings_from_args(args)
    require_kafka(settings)
    kafka = settings.kafka
    consumer = make_consumer(
        kafka,
        kafka.topic,
        group_id=None,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        enable_auto_commit=False,
    )
    seen = 0
    last = time.monotonic()
    try:
        while args.max is None or seen < args.max:
            records = consumer.poll(timeout_ms=200)
            for batch in records.values():
                for msg in batch:
                    sys.stdout.write(msg.value.decode("utf-8", "replace") + "\n")
                    seen += 1
                    if args.max is not None and seen >= args.max:
                        break
                if args.max is not None and seen >= args.max:
                    break
            if records:
                sys.stdout.flush()
                last = time.monotonic()
            elif args.idle_timeout is not None and time.monotonic() - last > args.idle_timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sys.stdout.flush()
        consumer.close()
    return 0
