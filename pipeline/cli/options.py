"""Command-line options that set ``WorkerSettings`` fields, declared once for every command.

Each ``Opt`` names its flag and the settings field it sets (``"batch.max_batch"``). Flags
default to "not given" (``argparse.SUPPRESS``): a flag that is absent leaves the value of the
``--config`` file, the ``ES_*`` environment or the default in place. ``settings_from_args``
builds the settings with the one precedence of ``pipeline.core.config_load``.

To add a setting: add the field (with its description) to ``pipeline/core/config.py`` and,
if it deserves a flag, one ``Opt`` line to the group it belongs to below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.config import (
    Assignor,
    DecodeMode,
    DetectorBackend,
    DropPolicy,
    FsyncPolicy,
    IntervalMode,
    LogFullPolicy,
    WorkerSettings,
)
from pipeline.core.config_load import env_var, load_settings
from pipeline.core.errors import ConfigError

#: Namespace attributes that hold settings fields start with this.
FIELD_DEST = "es__"


@dataclass(frozen=True)
class Opt:
    """One flag: ``field`` is the dotted settings path it sets (None: the command's own)."""

    flag: str
    field: str | None
    help: str
    type: Callable[[str], Any] | None = None
    const: Any = None  # a flag without a value stores this (--loop: True)
    choices: Sequence[str] | None = None
    append: bool = False
    metavar: str | None = None

    @property
    def dest(self) -> str:
        if self.field is None:
            return self.flag.lstrip("-").replace("-", "_")
        return FIELD_DEST + self.field.replace(".", "__")


CONFIG = Opt("--config", None, "Settings file (YAML, TOML or JSON); flags given override it.", Path)
IDENTITY = (
    Opt("--worker-id", "worker_id", "worker_id carried in every event."),
    Opt("--session", "session_id", "Session id of events and aggregates."),
)
MODELS = (
    Opt("--models", "detector.model_dir", "Model folder (default: models).", Path),
    Opt("--detector", "detector.model_file", "Detector ONNX (default: best det_*.onnx).", Path),
    Opt(
        "--emotion-model", "emotion.model", "Emotion model ONNX/plan (default: in --models).", Path
    ),
    Opt("--backend", "emotion.backend", "Engine: auto, tensorrt, onnxruntime, torch."),
    Opt("--precision", "emotion.precision", "Engine precision: fp32, fp16, int8."),
    Opt(
        "--detector-backend",
        "detector.backend",
        "Detector runtime: auto (TensorRT when usable), tensorrt, onnxruntime.",
        choices=[b.value for b in DetectorBackend],
    ),
)
BATCH = (
    Opt("--max-batch", "batch.max_batch", "Most faces per inference batch.", int),
    Opt("--max-wait-ms", "batch.max_wait_ms", "Longest a face waits for a batch.", float),
    Opt("--no-batching", "batch.enabled", "Classify each frame on its own.", const=False),
)
DECODE = (
    Opt(
        "--decode",
        "source.decode",
        "Video decoding: auto (NVDEC when present), cpu, nvdec.",
        choices=[m.value for m in DecodeMode],
    ),
)


def _wxh(text: str) -> tuple[int, int]:
    """``640x384`` -> (640, 384)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 640x384")
    return int(w), int(h)


SPEED = (
    Opt("--detect-every", "interval.every", "Run the detector every Nth processed frame.", int),
    Opt(
        "--detect-mode",
        "interval.mode",
        "fixed, or auto: also detect sooner when a track is lost or unsure, or the scene cuts.",
        choices=[m.value for m in IntervalMode],
    ),
    Opt(
        "--det-size",
        "detector.input_size",
        "Detector input at most WIDTHxHEIGHT, frame aspect kept.",
        _wxh,
        metavar="WxH",
    ),
    Opt("--det-scale", "detector.max_scale", "Largest detector scale of the frame.", float),
    Opt("--det-threads", "detector.threads", "Detector threads (0: chosen for the machine).", int),
    Opt("--emotion-threads", "emotion.threads", "Emotion engine threads (0: auto).", int),
)
SOURCE = (
    Opt("--every", "source.every", "Process every Nth decoded frame.", int),
    Opt("--max-frames", "source.max_frames", "Stop each stream after N decoded frames.", int),
    Opt("--realtime", "source.realtime", "Pace files at their frame rate.", const=True),
    Opt("--loop", "source.loop", "Replay files forever (stop with Ctrl-C).", const=True),
    Opt(
        "--drop-policy",
        "source.drop_policy",
        "Full-queue policy of live sources.",
        choices=[p.value for p in DropPolicy],
    ),
    Opt(
        "--max-decode-errors",
        "source.max_decode_errors",
        "Give up a stream after N consecutive undecodable packets / corrupt frames (each is skipped and counted).",
        int,
    ),
    Opt(
        "--max-pixels",
        "source.max_pixels",
        "Largest frame (width x height) a source may deliver (default 3840x2160 = 8294400).",
        int,
    ),
    *DECODE,
)
SINKS = (
    Opt("--sink", "sinks.specs", "jsonl:PATH, stdout, kafka or redis; repeatable.", append=True),
)
BOOTSTRAP = Opt("--kafka", "kafka.bootstrap", "Kafka bootstrap HOST:PORT[,...].")
KAFKA = (
    BOOTSTRAP,
    Opt("--topic", "kafka.topic", "Kafka events topic (default: emotion-events)."),
    Opt("--partitions", "kafka.partitions", "Partitions if the events topic is created.", int),
)
CONTROL = (
    BOOTSTRAP,
    Opt(
        "--control-topic",
        "kafka.control_topic",
        "Compacted control topic (default: emotion-streams).",
    ),
    Opt(
        "--control-partitions",
        "kafka.control_partitions",
        "Partitions if the control topic is created (at most this many workers share streams).",
        int,
    ),
)
REDIS = (
    Opt("--redis", "redis.url", "Redis URL, e.g. redis://127.0.0.1:6379/0."),
    Opt("--prefix", "redis.key_prefix", "Redis key prefix (default: es)."),
)
GROUP = (
    Opt("--group", "group.group", "Consumer group shared by the workers."),
    Opt("--media-root", "group.media_root", "Folder file: sources must lie under.", Path),
    Opt(
        "--allow-host",
        "group.allow_hosts",
        "Host, IP, CIDR or *.suffix control-topic streams may connect to; repeatable"
        " (none: any host not denied; loopback and link-local need an explicit IP/CIDR).",
        append=True,
        metavar="HOST",
    ),
    Opt(
        "--deny-host",
        "group.deny_hosts",
        "Host, IP, CIDR or *.suffix control-topic streams may never connect to; repeatable.",
        append=True,
        metavar="HOST",
    ),
    Opt(
        "--max-streams",
        "group.max_streams",
        "Most streams this worker runs at once; more records wait for a slot.",
        int,
    ),
    Opt("--session-timeout-ms", "group.session_timeout_ms", "Group session timeout.", int),
    Opt("--heartbeat-ms", "group.heartbeat_interval_ms", "Group heartbeat interval.", int),
    Opt("--max-poll-interval-ms", "group.max_poll_interval_ms", "Group rebalance timeout.", int),
    Opt(
        "--assignor",
        "group.assignor",
        "cooperative: only moving streams restart; eager: all.",
        choices=[a.value for a in Assignor],
    ),
    Opt(
        "--metrics-port",
        "metrics.port",
        "Port of /healthz, /readyz, /metrics (0: any; -1: off).",
        int,
    ),
    Opt(
        "--metrics-host",
        "metrics.host",
        "Address the HTTP endpoints bind (default 127.0.0.1; beyond loopback needs --web-config"
        " or --http-insecure).",
    ),
)


def _hosts(text: str) -> tuple[str, ...]:
    """``--http-allowed-hosts a,b`` -> ("a", "b")."""
    return tuple(h.strip() for h in text.split(",") if h.strip())


def _mib(text: str) -> int:
    """``--log-max-mb``: MiB (may be fractional) to bytes."""
    return int(float(text) * (1 << 20))


DELIVERY = (
    Opt("--log-dir", "delivery.log_dir", "Event log folder; one subfolder per worker id.", Path),
    Opt(
        "--log-max-mb",
        "delivery.max_bytes",
        "Event log size limit in MiB (default 1024).",
        _mib,
        metavar="MIB",
    ),
    Opt(
        "--log-full-policy",
        "delivery.full_policy",
        "At the size limit: drop_oldest (counted, logged) or block the pipeline.",
        choices=[x.value for x in LogFullPolicy],
    ),
    Opt(
        "--log-fsync",
        "delivery.fsync",
        "always: fsync every append; normal (default): survives kill -9; off.",
        choices=[x.value for x in FsyncPolicy],
    ),
)
VIEW = (
    Opt(
        "--http",
        "view.http",
        "Serve the live view, /healthz, /readyz and /metrics at HOST:PORT (a bare PORT binds "
        "loopback; port 0 picks a free one). Off by default.",
        metavar="HOST:PORT",
    ),
    Opt(
        "--view-blur-faces",
        "view.blur_faces",
        "Blur faces in everything the view shows (events are unaffected).",
        const=True,
    ),
    Opt("--view-fps", "view.preview_fps", "Most frames/s per preview watcher (default: 5).", float),
    Opt(
        "--view-max-watchers",
        "view.max_watchers",
        "Most preview watchers at once, all streams together (default: 8); more get 503.",
        int,
    ),
    Opt(
        "--web-config",
        "web.config",
        "Login and TLS of the HTTP ports (view and metrics) in Prometheus' exporter-toolkit"
        " format: basic_auth_users, tls_server_config. /healthz stays open.",
        Path,
        metavar="FILE",
    ),
    Opt(
        "--http-insecure",
        "web.insecure",
        "Allow serving an address beyond loopback with no --web-config (no login, no TLS).",
        const=True,
    ),
    Opt(
        "--http-allowed-hosts",
        "web.allowed_hosts",
        "Host header values served, comma-separated, port ignored (*.example.com, *: any;"
        " default: the bound address, localhost, 127.0.0.1).",
        _hosts,
        metavar="HOST[,HOST...]",
    ),
    Opt(
        "--track-thumbnails",
        "track_thumbnails",
        "Add a small JPEG of each track's best aligned face to its track_end event.",
        const=True,
    ),
)

#: What ``run`` and ``bench`` share with ``worker`` and ``config show``.
ENGINE = (*MODELS, *BATCH, *SPEED)
#: Every flag that sets a field, for ``config show``.
ALL = (*IDENTITY, *ENGINE, *SOURCE, *SINKS, *KAFKA, *CONTROL, *REDIS, *GROUP, *VIEW, *DELIVERY)


def add_options(p: argparse.ArgumentParser, *groups: Iterable[Opt]) -> None:
    """Add each option once (a flag shared by two groups is added by the first)."""
    seen = {a for action in p._actions for a in action.option_strings}
    for opt in (o for g in groups for o in g):
        if opt.flag in seen:
            continue
        seen.add(opt.flag)
        help_text = (
            f"{opt.help} [{opt.field}; {env_var(*opt.field.split('.'))}]" if opt.field else opt.help
        )
        kw: dict[str, Any] = {"dest": opt.dest, "default": argparse.SUPPRESS, "help": help_text}
        if opt.const is not None:
            kw.update(action="store_const", const=opt.const)
        else:
            metavar = opt.metavar or opt.flag.lstrip("-").upper().replace("-", "_")
            kw.update(type=opt.type, choices=opt.choices, metavar=None if opt.choices else metavar)
            if opt.append:
                kw["action"] = "append"
        p.add_argument(opt.flag, **kw)


def flag_layer(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags given set, as a nested dict (``{"batch": {"max_batch": 8}}``)."""
    layer: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if not dest.startswith(FIELD_DEST):
            continue
        *sections, key = dest.removeprefix(FIELD_DEST).split("__")
        node = layer
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = tuple(value) if isinstance(value, list) else value
    return layer


def settings_from_args(
    args: argparse.Namespace, base: Mapping[str, Any] | None = None
) -> WorkerSettings:
    """Flags given > ``--config`` > ``ES_*`` environment > ``base`` > defaults."""
    return load_settings(getattr(args, "config", None), flag_layer(args), base=base)


def require_kafka(settings: WorkerSettings) -> None:
    if not settings.kafka.bootstrap:
        raise ConfigError(
            "no Kafka: pass --kafka HOST:PORT, set ES_KAFKA_BOOTSTRAP or kafka.bootstrap in --config"
        )


def require_redis(settings: WorkerSettings) -> None:
    if not settings.redis.url:
        raise ConfigError("no Redis: pass --redis URL, set ES_REDIS_URL or redis.url in --config")
