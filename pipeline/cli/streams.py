"""``emotion-stream streams add | remove | list`` and ``emotion-stream worker``."""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from pipeline.core.config import DropPolicy, KafkaSettings, RedisSettings
from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONTROL_PARTITIONS = 12


def _kafka_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kafka", help="Kafka bootstrap HOST:PORT[,...] (env ES_KAFKA_BOOTSTRAP).")
    p.add_argument(
        "--control-topic",
        help="Compacted control topic (env ES_KAFKA_CONTROL_TOPIC; default emotion-streams).",
    )
    p.add_argument(
        "--control-partitions",
        type=int,
        default=DEFAULT_CONTROL_PARTITIONS,
        help="Partitions if the control topic is created (at most this many workers share streams).",
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``streams`` and ``worker`` to the CLI."""
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
    add.add_argument("--session", help="Session id of its events (default: the worker's).")
    add.add_argument("--loop", action="store_true", help="Replay a file forever.")
    add.add_argument("--realtime", action="store_true", help="Pace a file at its frame rate.")
    add.add_argument("--every", type=int, default=1, help="Process every Nth decoded frame.")
    add.add_argument("--max-frames", type=int, help="Stop after N decoded frames.")
    add.add_argument(
        "--drop-policy",
        choices=[p.value for p in DropPolicy],
        help="Full-queue policy (live sources).",
    )
    _kafka_options(add)
    add.set_defaults(func=cmd_add)

    rm = ssub.add_parser("remove", help="Remove a stream (writes a tombstone).")
    rm.add_argument("stream_id", metavar="STREAM_ID", help="Stream id.")
    _kafka_options(rm)
    rm.set_defaults(func=cmd_remove)

    ls = ssub.add_parser("list", help="Show the current streams (latest spec per id).")
    ls.add_argument("--json", action="store_true", help="JSON output.")
    _kafka_options(ls)
    ls.set_defaults(func=cmd_list)

    _register_worker(sub)


def _register_worker(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from pipeline.control.group import Assignor

    w = sub.add_parser(
        "worker",
        help="Join the worker group on the control topic and run the streams assigned to it.",
    )
    _kafka_options(w)
    w.add_argument("--redis", help="Redis URL (env ES_REDIS_URL); adds the Redis sink.")
    w.add_argument(
        "--topic", help="Kafka events topic (env ES_KAFKA_TOPIC; default emotion-events)."
    )
    w.add_argument(
        "--group", default="emotion-workers", help="Consumer group shared by the workers."
    )
    w.add_argument("--worker-id", help="worker_id in events (default: HOSTNAME-PID).")
    w.add_argument(
        "--session", default="default", help="Session id of streams whose spec names none."
    )
    w.add_argument(
        "--media-root",
        type=Path,
        help="Folder that file: sources must lie under (default: none allowed).",
    )
    w.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("ES_METRICS_PORT", "9100")),
        help="Port of /healthz, /readyz, /metrics (env ES_METRICS_PORT; 0: any free port; -1: off).",
    )
    w.add_argument("--metrics-host", default="0.0.0.0", help="Address the HTTP endpoints bind.")
    w.add_argument(
        "--session-timeout-ms",
        type=int,
        default=10000,
        help="Group session timeout (crash hand-over).",
    )
    w.add_argument("--heartbeat-ms", type=int, default=1000, help="Group heartbeat interval.")
    w.add_argument(
        "--max-poll-interval-ms", type=int, default=60000, help="Group rebalance timeout."
    )
    w.add_argument(
        "--assignor",
        choices=[a.value for a in Assignor],
        default=Assignor.COOPERATIVE.value,
        help="cooperative: only moving streams restart on a rebalance; eager: all restart.",
    )
    w.add_argument(
        "--models", type=Path, default=Path("models"), help="Model folder (default: models)."
    )
    w.add_argument(
        "--detector", type=Path, help="Detector ONNX (default: best det_*.onnx in --models)."
    )
    w.add_argument(
        "--emotion-model",
        type=Path,
        help="Emotion model ONNX/plan (default: the bootstrapped one).",
    )
    w.add_argument("--backend", default="auto", help="Engine: auto, tensorrt, onnxruntime, torch.")
    w.add_argument("--precision", default="fp32", help="Engine precision: fp32, fp16, int8.")
    w.add_argument("--max-batch", type=int, default=32, help="Most faces per inference batch.")
    w.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="Longest a face waits for a batch."
    )
    w.add_argument("--no-batching", action="store_true", help="Classify each frame on its own.")
    w.add_argument("--config", type=Path, help="WorkerSettings as JSON; flags given override it.")
    from pipeline.cli.run import add_delivery_options

    add_delivery_options(w)
    w.set_defaults(func=cmd_worker, every=1, max_frames=None, realtime=False, loop=False)


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """ES_KAFKA_* from the environment, overridden by the flags given."""
    over: dict[str, Any] = {
        "bootstrap": getattr(args, "kafka", None),
        "control_topic": getattr(args, "control_topic", None),
        "topic": getattr(args, "topic", None),
    }
    try:
        kafka = KafkaSettings(**{k: v for k, v in over.items() if v is not None})
    except ValueError as exc:
        raise ConfigError(f"invalid ES_KAFKA_* settings: {exc}".replace("\n", " ")) from exc
    if not kafka.bootstrap:
        raise ConfigError("no Kafka: pass --kafka HOST:PORT or set ES_KAFKA_BOOTSTRAP")
    return kafka


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
    n = ensure_control_topic(kafka, args.control_partitions)
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
    ensure_control_topic(kafka, args.control_partitions)
    part = ControlClient(kafka).remove(args.stream_id)
    print(f"removed {args.stream_id} (tombstone in partition {part})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pipeline.control.streams import ControlClient, partition_for

    kafka = kafka_settings(args)
    client = ControlClient(kafka)
    records = client.read_all()
    n = _partition_count(kafka)
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


def _partition_count(kafka: KafkaSettings) -> int:
    from kafka import KafkaConsumer

    from pipeline.control.streams import client_kwargs

    c = KafkaConsumer(**client_kwargs(kafka))
    try:
        return len(c.partitions_for_topic(kafka.control_topic) or ())
    finally:
        c.close()


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.cli.run import _install_signals, worker_settings
    from pipeline.control.group import Assignor, GroupRunner, GroupSettings
    from pipeline.control.health import HealthServer
    from pipeline.control.metrics import Metrics
    from pipeline.control.streams import ensure_control_topic

    kafka = kafka_settings(args)
    try:
        redis = RedisSettings(**({"url": args.redis} if args.redis else {}))
    except ValueError as exc:
        raise ConfigError(f"invalid ES_REDIS_* settings: {exc}".replace("\n", " ")) from exc
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    settings = worker_settings(args, worker_id=worker_id, session_id=args.session)
    if args.media_root is not None and not args.media_root.is_dir():
        raise ConfigError(
            f"--media-root {args.media_root} is not a folder: create it or fix the path"
        )
    ensure_control_topic(kafka, args.control_partitions)
    from pipeline.runtime.worker import build_worker

    sinks = ["kafka"] + (["redis"] if redis.url else [])
    worker = build_worker(settings, sinks, kafka, redis, models_dir=args.models)
    worker.start()
    metrics = Metrics(worker.stats)
    group = GroupRunner(
        worker,
        kafka,
        GroupSettings(
            group=args.group,
            session_timeout_ms=args.session_timeout_ms,
            heartbeat_interval_ms=args.heartbeat_ms,
            max_poll_interval_ms=args.max_poll_interval_ms,
            assignor=Assignor(args.assignor),
        ),
        worker_id,
        args.media_root,
        settings.source,
        metrics,
    )
    health = None
    if args.metrics_port >= 0:
        health = HealthServer(
            args.metrics_host, args.metrics_port, group.live, group.ready, metrics.render
        ).start()
    stop = threading.Event()
    _install_signals(stop)
    if hasattr(signal, "SIGUSR1"):  # kill -USR1 PID: thread stacks to stderr (stuck streams)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        group.run(stop)
    finally:
        worker.stop("shutdown")
        if health is not None:
            health.close()
    stats = worker.stats()
    print(
        json.dumps({"worker_id": worker_id, "events": stats["events"], "join_s": group.join_s}),
        file=sys.stderr,
    )
    return 0
