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
from pathlib import Path
from typing import Any

from pipeline.core.config import KafkaSettings, RedisSettings, WorkerSettings
from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_JSONL = "out/events.jsonl"


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``run`` and ``bench``."""
    p.add_argument(
        "--models", type=Path, default=Path("models"), help="Model folder (default: models)."
    )
    p.add_argument(
        "--detector", type=Path, help="Detector ONNX (default: best det_*.onnx in --models)."
    )
    p.add_argument(
        "--emotion-model",
        type=Path,
        help="Emotion model ONNX/plan (default: the bootstrapped one).",
    )
    p.add_argument("--backend", default="auto", help="Engine: auto, tensorrt, onnxruntime, torch.")
    p.add_argument("--precision", default="fp32", help="Engine precision: fp32, fp16, int8.")
    p.add_argument("--max-batch", type=int, default=32, help="Most faces per inference batch.")
    p.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="Longest a face waits for a batch."
    )
    p.add_argument("--no-batching", action="store_true", help="Classify each frame on its own.")
    p.add_argument("--every", type=int, default=1, help="Process every Nth decoded frame.")
    p.add_argument("--max-frames", type=int, help="Stop each stream after N decoded frames.")
    p.add_argument("--realtime", action="store_true", help="Pace files at their frame rate.")
    p.add_argument("--loop", action="store_true", help="Replay files forever (stop with Ctrl-C).")
    p.add_argument(
        "--stream-id", action="append", default=[], help="Stream id per source, in order."
    )
    p.add_argument("--config", type=Path, help="WorkerSettings as JSON; flags given override it.")
    p.add_argument(
        "--detect-every", type=int, help="Run the detector every Nth processed frame (default 10)."
    )
    p.add_argument(
        "--detect-mode", choices=("auto", "fixed"), help="auto also detects sooner when unsure."
    )
    p.add_argument(
        "--det-size",
        help="Detector input at most WIDTHxHEIGHT, frame aspect kept (default: the frame at "
        "0.75 scale, up to 1440x1440).",
    )
    p.add_argument("--det-threads", type=int, help="Detector threads (0: chosen for the machine).")
    p.add_argument("--emotion-threads", type=int, help="Emotion engine threads (0: auto).")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    run = sub.add_parser("run", help="Run the pipeline on files / RTSP / HTTP sources.")
    run.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="File path, file://, rtsp://, http(s)://"
    )
    run.add_argument(
        "--sink",
        action="append",
        default=[],
        help=f"jsonl:PATH, stdout, kafka or redis; repeatable (default: jsonl:{DEFAULT_JSONL}).",
    )
    run.add_argument("--kafka", help="Kafka bootstrap HOST:PORT (adds the kafka sink).")
    run.add_argument("--topic", default="emotion-events", help="Kafka events topic.")
    run.add_argument(
        "--partitions", type=int, default=6, help="Partitions if the topic is created."
    )
    run.add_argument(
        "--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0 (adds the redis sink)."
    )
    run.add_argument("--session", default="default", help="Session id for events and aggregates.")
    run.add_argument("--worker-id", default="worker-0", help="worker_id carried in every event.")
    run.add_argument("--json", action="store_true", help="Print the summary as JSON.")
    add_worker_options(run)
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
    add_worker_options(bench)
    bench.set_defaults(func=cmd_bench)

    sample = sub.add_parser("sample", help="Write the bundled sample clip (real faces, H.264).")
    sample.add_argument("--out", type=Path, default=Path("out/sample.mp4"), help="Output MP4.")
    sample.add_argument("--seconds", type=float, default=4.0, help="Length.")
    sample.add_argument("--fps", type=int, default=25, help="Frame rate.")
    sample.set_defaults(func=cmd_sample)


def worker_settings(args: argparse.Namespace, **extra: Any) -> WorkerSettings:
    """Settings from --config (if any) overridden by the flags."""
    base: dict[str, Any] = {}
    if args.config is not None:
        try:
            base = json.loads(args.config.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"--config {args.config}: cannot read JSON ({exc}): fix or remove it"
            ) from exc
    try:
        s = WorkerSettings(**base, **extra)
        source = s.source.model_copy(
            update={
                "every": args.every,
                "max_frames": args.max_frames,
                "realtime": args.realtime,
                "loop": args.loop,
            }
        )
        emotion = s.emotion.model_copy(
            update={"backend": args.backend, "precision": args.precision}
        )
        if args.emotion_model is not None:
            emotion = emotion.model_copy(update={"model": args.emotion_model})
        detector = s.detector.model_copy(update={"model_file": args.detector})
        batch = s.batch.model_copy(
            update={
                "max_batch": args.max_batch,
                "max_wait_ms": args.max_wait_ms,
                "enabled": not args.no_batching,
            }
        )
        detector, emotion, interval = _speed_options(args, detector, emotion, s.interval)
        s = s.model_copy(
            update={
                "source": source,
                "emotion": emotion,
                "detector": detector,
                "batch": batch,
                "interval": interval,
            }
        )
        # model_copy skips validation: validate the result once, here at the edge.
        return WorkerSettings.model_validate(s.model_dump())
    except ValueError as exc:
        raise ConfigError(f"invalid settings: {exc}".replace("\n", " ")) from exc


def _speed_options(args: argparse.Namespace, detector: Any, emotion: Any, interval: Any) -> Any:
    """Apply the detection-interval, detector-size and thread flags that were given."""
    if args.det_size:
        w, sep, h = args.det_size.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise ValueError(f"--det-size {args.det_size!r}: give WIDTHxHEIGHT, e.g. 640x384")
        detector = detector.model_copy(update={"input_size": (int(w), int(h)), "max_scale": 1.0})
    if args.det_threads is not None:
        detector = detector.model_copy(update={"threads": args.det_threads})
    if args.emotion_threads is not None:
        emotion = emotion.model_copy(update={"threads": args.emotion_threads})
    if args.detect_every is not None:
        interval = interval.model_copy(update={"every": args.detect_every})
    if args.detect_mode is not None:
        interval = interval.model_copy(update={"mode": args.detect_mode})
    return detector, emotion, interval


def _sink_specs(args: argparse.Namespace) -> list[str]:
    specs = list(args.sink)
    if args.kafka and "kafka" not in specs:
        specs.append("kafka")
    if args.redis and "redis" not in specs:
        specs.append("redis")
    if "kafka" in specs and not args.kafka:
        raise ConfigError("--sink kafka needs --kafka HOST:PORT")
    if "redis" in specs and not args.redis:
        raise ConfigError("--sink redis needs --redis URL")
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

    settings = worker_settings(args, worker_id=args.worker_id, session_id=args.session)
    specs = _parse_sources(args)
    kafka = KafkaSettings(bootstrap=args.kafka, topic=args.topic, partitions=args.partitions)
    redis = RedisSettings(url=args.redis)
    worker = build_worker(settings, _sink_specs(args), kafka, redis, models_dir=args.models)
    stop = threading.Event()
    _install_signals(stop)
    t0 = time.time()
    for spec in specs:
        worker.add_stream(spec)
    worker.wait(stop)
    stats = worker.stats()
    failed = worker.failed_streams()
    worker.stop("shutdown" if stop.is_set() else "eof")
    summary = summarise(stats, time.time() - t0)
    out = sys.stderr if "stdout" in _sink_specs(args) else sys.stdout
    if args.json:
        print(json.dumps(summary, indent=2), file=out)
    else:
        print(render_summary(summary), file=out)
    for sid, err in failed.items():
        print(f"error: stream {sid}: {err}", file=sys.stderr)
    return 1 if failed else 0


def summarise(stats: dict[str, Any], elapsed: float) -> dict[str, Any]:
    streams = stats["streams"]
    emotions: Counter[str] = Counter()
    for s in streams.values():
        emotions.update(s["emotions"])
    processed = sum(s["processed"] for s in streams.values())
    faces = sum(s["faces"] for s in streams.values())
    return {
        "streams": len(streams),
        "frames_decoded": sum(s["decoded"] for s in streams.values()),
        "frames_processed": processed,
        "faces": faces,
        "tracks": sum(s["tracks"] for s in streams.values()),
        "emotions": dict(emotions.most_common()),
        "events": stats["events"],
        "elapsed_s": round(elapsed, 3),
        "frames_per_s": round(processed / max(elapsed, 1e-9), 2),
        "faces_per_s": round(faces / max(elapsed, 1e-9), 2),
        "per_stream": streams,
        "batcher": stats["batcher"],
        "sink_errors": stats["sink_errors"],
    }


def render_summary(s: dict[str, Any]) -> str:
    lines = [
        f"{'stream':<28} {'frames':>7} {'proc':>6} {'faces':>6} {'tracks':>6} {'fps':>7}  status",
    ]
    for sid, st in s["per_stream"].items():
        status = st["error"] or st["end_reason"]
        lines.append(
            f"{sid[:28]:<28} {st['decoded']:>7} {st['processed']:>6} {st['faces']:>6} "
            f"{st['tracks']:>6} {st['fps']:>7.1f}  {status}"
        )
    lines.append(
        f"{'total':<28} {s['frames_decoded']:>7} {s['frames_processed']:>6} {s['faces']:>6} "
        f"{s['tracks']:>6} {s['frames_per_s']:>7.1f}  {s['events']} events in {s['elapsed_s']:.1f} s"
    )
    total = max(sum(s["emotions"].values()), 1)
    lines.append(
        "emotions: "
        + ", ".join(f"{k} {v} ({100 * v / total:.0f}%)" for k, v in s["emotions"].items())
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
    settings = worker_settings(args)
    if len(counts) > 1:
        from pipeline.tools.bench import render_curve, run_curve

        extra = [a for a in sys.argv[sys.argv.index("bench") + 2 :] if a != "--realtime"]
        extra = _drop_option(extra, "--streams")
        extra = [a for a in extra if a != "--json"]
        rows = run_curve(args.source, counts, extra, (True,) if args.realtime else (False, True))
        print(json.dumps(rows) if args.json else render_curve(rows))
        return 0
    result = run_bench(args.source, settings, args.models, streams=counts[0])
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
