"""``emotion-stream worker``: join the worker group on the control topic and run the streams
the group assigns to this worker."""

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
from typing import Any

from pipeline.cli import options as opts
from pipeline.cli.options import add_options, require_kafka, settings_from_args
from pipeline.core.config import WorkerSettings
from pipeline.core.errors import ConfigError

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``worker`` to the CLI."""
    w = sub.add_parser(
        "worker",
        help="Join the worker group on the control topic and run the streams assigned to it.",
    )
    add_options(w, [opts.CONFIG], opts.CONTROL, opts.KAFKA, opts.REDIS[:1], opts.GROUP)
    add_options(w, opts.IDENTITY, opts.ENGINE, opts.DECODE, opts.VIEW, opts.DELIVERY)
    w.set_defaults(func=cmd_worker)


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """The worker's settings; its id defaults to HOSTNAME-PID. Kafka is required."""
    settings = settings_from_args(args, base={"worker_id": f"{socket.gethostname()}-{os.getpid()}"})
    require_kafka(settings)
    from pipeline.control.web import check_http_settings

    check_http_settings(settings, metrics_port=True)  # bind rule, web config: before models
    root = settings.group.media_root
    if root is not None and not root.is_dir():
        raise ConfigError(f"--media-root {root} is not a folder: create it or fix the path")
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.cli.run import _install_signals, sink_specs
    from pipeline.control.group import GroupRunner
    from pipeline.control.health import HealthServer
    from pipeline.control.metrics import Metrics
    from pipeline.control.streams import ensure_control_topic
    from pipeline.runtime.worker import build_worker

    s = worker_settings(args)
    kafka, redis = s.kafka, s.redis
    ensure_control_topic(kafka, kafka.control_partitions)
    worker = build_worker(s, sink_specs(s), kafka, redis)
    worker.start()
    metrics = Metrics(worker.stats)
    group = GroupRunner(worker, kafka, s.group, s.worker_id, s.group.media_root, s.source, metrics)
    health = None
    if s.metrics.port >= 0:
        try:
            health = HealthServer(
                s.metrics.host, s.metrics.port, group.live, group.ready, metrics.render, s.web
            ).start()
        except ConfigError:  # port in use: one error line, exit 2, after releasing the worker
            worker.stop("shutdown")
            raise
    view = _start_view(s, worker, group, metrics, health)
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
        if view is not None:
            view.close()
    stats = worker.stats()
    print(
        json.dumps({"worker_id": s.worker_id, "events": stats.events, "join_s": group.join_s}),
        file=sys.stderr,
    )
    return 0


def _start_view(s: WorkerSettings, worker: Any, group: Any, metrics: Any, health: Any) -> Any:
    """The web view on ``view.http`` (None when off); a failure releases what was started."""
    if not s.view.http:
        return None
    from pipeline.control.web import start_view

    redis = s.redis if s.redis.url else None
    try:
        view = start_view(worker, s.view, redis, group.live, group.ready, metrics.render, web=s.web)
    except BaseException:
        worker.stop("shutdown")
        if health is not None:
            health.close()
        raise
    print(f"live view: {view.url}", file=sys.stderr, flush=True)
    return view
