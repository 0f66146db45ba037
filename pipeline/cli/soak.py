"""``emotion-stream soak`` (live-paced streams under injected Kafka and Redis outages) and
``emotion-stream bench-log`` (the event log's append and drain cost)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from pipeline.core.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "soak",
        help="Run N live-paced streams while Kafka and Redis (started here, on loopback) fail.",
    )
    p.add_argument("source", nargs="?", help="Video file (default: the bundled sample clip).")
    p.add_argument("--streams", type=int, default=2, help="Streams at once (default 2).")
    p.add_argument("--seconds", type=float, default=150.0, help="Soak length (default 150).")
    p.add_argument("--outage-s", type=float, default=20.0, help="Length of each outage.")
    p.add_argument("--every", type=int, default=5, help="Process every Nth frame (default 5).")
    p.add_argument(
        "--models", type=Path, default=Path("models"), help="Model folder (default: models)."
    )
    p.add_argument(
        "--memory-broker",
        action="store_true",
        help="Broker keeps data in memory: no broker-restart fault (default: S3 storage on a "
        "local moto server, so the broker can be restarted).",
    )
    p.set_defaults(func=cmd_soak)

    lb = sub.add_parser("bench-log", help="Measure the event log: append and drain events/s.")
    lb.add_argument("--frames", type=int, default=2000, help="Frames of 6 events (default 2000).")
    lb.set_defaults(func=cmd_logbench)


def cmd_logbench(args: argparse.Namespace) -> int:
    from pipeline.tools.logbench import run_logbench

    if args.frames < 1:
        raise ConfigError("bench-log: --frames must be positive")
    print(json.dumps(run_logbench(args.frames)))
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from pipeline.tools.soak import SoakPlan, run_soak

    if args.streams < 1 or args.seconds <= 0 or args.outage_s <= 0 or args.every < 1:
        raise ConfigError("soak: --streams, --seconds, --outage-s and --every must be positive")
    if args.outage_s * 5 > args.seconds:
        raise ConfigError("soak: --seconds must be at least 5 x --outage-s (4 outages and gaps)")
    clip = args.source
    if clip is None:
        from pipeline.media.sample import make_sample_clip

        clip = make_sample_clip(Path(tempfile.mkdtemp(prefix="es-soak-clip-")) / "sample.mp4")
    elif not Path(clip).is_file():
        raise ConfigError(f"soak source {clip} is not a file: pass a video file")
    plan = SoakPlan(
        args.streams,
        args.seconds,
        args.outage_s,
        args.every,
        persistent_broker=not args.memory_broker,
    )
    result = run_soak(Path(clip), args.models, plan)
    print(json.dumps(result))
    lost = result["lost"]
    return 0 if not any(lost.values()) and not any(result["dropped"].values()) else 1
