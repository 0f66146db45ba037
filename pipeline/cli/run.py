"""``emotion-stream run``, ``bench`` and ``sample``: the worker on explicit sources."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, require_kafka, require_redis, settings_from_args
from pipeline.core.config import RedisSettings, WorkerSettings
from pipeline.core.errors import ConfigError, SinkError

if TYPE_CHECKING:
    from pipeline.runtime.stats import BatcherStats, StreamStats, WorkerStats

logger = logging.getLogger(__name__)

DEFAULT_JSONL = "out/events.jsonl"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``run``, ``bench`` and ``sample`` to the CLI."""
    run = sub.add_parser("run", help="Run the pipeline on files / RTSP / HTTP sources.")
    run.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="File path, file://, rtsp://, http(s)://"
    )
    run.add_argument(
        "--stream-id", action="append", default=[], help="Stream id per source, in order."
    )
    run.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    add_options(run, [opts.CONFIG], opts.IDENTITY, opts.ENGINE, opts.SOURCE, opts.SINKS, opts.VIEW)
    add_options(run, opts.DELIVERY)
    add_options(run, opts.KAFKA, opts.REDIS[:1])
    run.set_defaults(func=cmd_run)

    bench = sub.add_parser("bench", help="Measure the pipeline on a clip against bare decoding.")
    bench.add_argument(
        "source", metavar="SOURCE", help="A video file (the sample: out/sample.mp4)."
    )
    bench.add_argument(
        "--streams",
        default="1",
        help="Run N copies of the source at once; a list (1,2,4,8) prints the scaling curve, "
        "unpaced and live-paced (only live with --realtime).",
    )
    bench.add_argument("--json", action="store_true", help="Print JSON only.")
    add_options(bench, [opts.CONFIG], opts.ENGINE, opts.SOURCE, opts.VIEW)
    bench.add_argument(
        "--watchers",
        type=int,
        default=0,
        help="With --http: MJPEG viewers per stream during the run (the view's cost).",
    )
    bench.set_defaults(func=cmd_bench)

    sample = sub.add_parser("sample", help="Write the bundled sample clip (real faces, H.264).")
    sample.add_argument("--out", type=Path, default=Path("out/sample.mp4"), help="Output MP4.")
    sample.add_argument("--seconds", type=float, default=4.0, help="Length.")
    sample.add_argument("--fps", type=int, default=25, help="Frame rate.")
    sample.set_defaults(func=cmd_sample)


def sink_specs(settings: WorkerSettings) -> list[str]:
    """``sinks.specs``, plus kafka / redis when their connection is set; else the JSONL file."""
    specs = list(settings.sinks.specs)
    if settings.kafka.bootstrap and "kafka" not in specs:
        specs.append("kafka")
    if settings.redis.url and "redis" not in specs:
        specs.append("redis")
    if "kafka" in specs:
        require_kafka(settings)
    if "redis" in specs:
        require_redis(settings)
    return specs or [f"jsonl:{DEFAULT_JSONL}"]


def _parse_sources(args: argparse.Namespace) -> list[Any]:
    from pipeline.media.sources import parse_source

    ids = list(args.stream_id)
    if len(ids) > len(args.sources):
        raise ConfigError(f"{len(ids)} --stream-id given for {len(args.sources)} sources")
    specs = [
        parse_source(src, ids[i] if i < len(ids) else None) for i, src in enumerate(args.sources)
    ]
    seen = Counter(s.stream_id for s in specs)
    dup = [k for k, n in seen.items() if n > 1]
    if dup:
        raise ConfigError(f"stream id {dup[0]!r} used twice: give each source its own --stream-id")
    return specs


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        logger.info(
            "received %s: stopping after flushing what was accepted", signal.Signals(signum).name
        )
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runtime.worker import build_worker

    settings = settings_from_args(args)
    if settings.view.http:  # bind rule and web config, before the models load
        from pipeline.control.web import check_http_settings

        check_http_settings(settings)
    specs = _parse_sources(args)
    sinks = sink_specs(settings)
    worker = build_worker(settings, sinks, settings.kafka, settings.redis)
    stop = threading.Event()
    _install_signals(stop)
    view = _start_view(worker, settings, settings.redis) if settings.view.http else None
    t0 = time.time()
    for spec in specs:
        worker.add_stream(spec)
    worker.wait(stop)
    stats = worker.stats()
    failed = worker.failed_streams()
    if view is not None and not stop.is_set():
        print(f"sources ended; still serving {view.url} until Ctrl-C", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    undelivered: SinkError | None = None
    try:
        worker.stop("shutdown" if stop.is_set() else "eof")
    except SinkError as exc:  # printed after the summary; the events stay in the log
        undelivered = exc
    finally:
        if view is not None:
            view.close()
    stats = replace(stats, sinks=worker.stats().sinks)  # after the drain
    summary = summarise(stats, time.time() - t0)
    out = sys.stderr if "stdout" in sinks else sys.stdout
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2), file=out)
    else:
        print(render_summary(summary), file=out)
    for sid, err in failed.items():
        print(f"error: stream {sid}: {err}", file=sys.stderr)
    if undelivered is not None:
        raise undelivered
    return 1 if failed else 0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What ``emotion-stream run`` prints at the end (``--json``: ``as_dict()``)."""

    streams: int
    frames_decoded: int
    frames_processed: int
    faces: int
    tracks: int
    emotions: dict[str, int]
    events: int
    elapsed_s: float
    frames_per_s: float
    faces_per_s: float
    per_stream: dict[str, StreamStats]
    batcher: BatcherStats | None
    sink_errors: dict[str, int]
    #: per sink: delivered, pending, oldest_pending_age_s, retried, dropped (after the drain)
    sinks: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _start_view(worker: Any, settings: WorkerSettings, redis: RedisSettings) -> Any:
    from pipeline.control.metrics import Metrics
    from pipeline.control.web import start_view

    def ready() -> tuple[bool, dict[str, Any]]:
        running = worker.stream_ids()
        return bool(running), {"streams": running}

    try:
        view = start_view(
            worker,
            settings.view,
            redis if redis.url else None,
            readyz=ready,
            metrics=Metrics(worker.stats).render,
            web=settings.web,
        )
    except BaseException:
        worker.stop("shutdown")
        raise
    print(f"live view: {view.url}  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    return view


def summarise(stats: WorkerStats, elapsed: float) -> RunSummary:
    processed, faces = stats.processed, stats.faces
    return RunSummary(
        streams=len(stats.streams),
        frames_decoded=stats.decoded,
        frames_processed=processed,
        faces=faces,
        tracks=stats.tracks,
        emotions=dict(stats.emotions().most_common()),
        events=stats.events,
        elapsed_s=round(elapsed, 3),
        frames_per_s=round(processed / max(elapsed, 1e-9), 2),
        faces_per_s=round(faces / max(elapsed, 1e-9), 2),
        per_stream=dict(stats.streams),
        batcher=stats.batcher,
        sink_errors=dict(stats.sink_errors),
        sinks=dict(stats.sinks),
    )


def render_summary(s: RunSummary) -> str:
    lines = [
        f"{'stream':<28} {'frames':>7} {'proc':>6} {'faces':>6} {'tracks':>6} {'fps':>7}  status",
    ]
    for sid, st in s.per_stream.items():
        status = st.error or (st.end_reason if st.end_reason != "running" else st.state)
        if st.decode_errors:
            status += f" ({st.decode_errors} decode errors skipped)"
        lines.append(
            f"{sid[:28]:<28} {st.decoded:>7} {st.processed:>6} {st.faces:>6} "
            f"{st.tracks:>6} {st.fps:>7.1f}  {status}"
        )
    lines.append(
        f"{'total':<28} {s.frames_decoded:>7} {s.frames_processed:>6} {s.faces:>6} "
        f"{s.tracks:>6} {s.frames_per_s:>7.1f}  {s.events} events in {s.elapsed_s:.1f} s"
    )
    for name, d in s.sinks.items():
        lines.append(
            f"sink {name}: delivered {d['delivered']}, pending {d['pending']} "
            f"(oldest {d['oldest_pending_age_s']:.1f} s), retried {d['retried']}, "
            f"dropped {d['dropped']}"
        )
    total = max(sum(s.emotions.values()), 1)
    lines.append(
        "emotions: " + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in s.emotions.items())
    )
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.tools.bench import run_bench

    try:
        counts = [int(n) for n in str(args.streams).split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--streams {args.streams!r}: give a count or a list like 1,2,4,8")
    settings = settings_from_args(args)
    if args.watchers and not settings.view.http:
        raise ConfigError("--watchers needs --http HOST:PORT (e.g. --http 127.0.0.1:0)")
    if len(counts) > 1:
        from pipeline.tools.bench import render_curve, run_curve

        raw: list[str] = list(getattr(args, "raw_argv", sys.argv[1:]))
        extra = raw[raw.index("bench") + 1 :]
        extra.remove(args.source)
        extra = [a for a in _drop_option(extra, "--streams") if a not in ("--json", "--realtime")]
        paced = (True,) if settings.source.realtime else (False, True)
        rows = run_curve(args.source, counts, extra, paced)
        print(json.dumps(rows) if args.json else render_curve(rows))
        return 0
    result = run_bench(
        args.source,
        settings,
        settings.detector.model_dir,
        streams=counts[0],
        watchers=args.watchers,
    )
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _drop_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def cmd_sample(args: argparse.Namespace) -> int:
    from pipeline.media.sample import make_sample_clip

    path = make_sample_clip(args.out, seconds=args.seconds, fps=args.fps)
    print(path)
    return 0
