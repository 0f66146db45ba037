"""Typed configuration, loaded once at the edge (the CLI) and passed down.

Every model forbids unknown keys and describes each field. Secrets (Kafka SASL, Redis
password) come from the environment or from files named by the environment; nothing reads
the environment at import time: ``load_settings()`` does it when called.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.core.enums import (  # the settings' named choices, importable from here too
    Assignor,
    Backend,
    DecodeMode,
    DetectorBackend,
    DropPolicy,
    FsyncPolicy,
    IntervalMode,
    LogFullPolicy,
    Precision,
    RtspTransport,
)
from pipeline.core.ids import ID_RULE, is_valid_id

__all__ = [
    "Assignor",
    "Backend",
    "DecodeMode",
    "DetectorBackend",
    "DropPolicy",
    "FsyncPolicy",
    "IntervalMode",
    "LogFullPolicy",
    "Precision",
    "RtspTransport",
]


class StrictModel(BaseModel):
    """Base of every settings section: unknown keys are rejected, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HostCredentials(StrictModel):
    """Credentials of one source host (an entry of ``source.credentials``): the username, and
    the password read from an environment variable or a file at each connect, never stored."""

    username: str = Field(min_length=1, max_length=256, description="User name sent to the host.")
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="Environment variable holding the password (read at each connect).",
    )
    password_file: Path | None = Field(
        None, description="File holding the password (read at each connect; trailing newline cut)."
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> HostCredentials:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give password_env or password_file, not both")
        return self


class SourceSettings(StrictModel):
    queue_size: int = Field(8, ge=1, description="Bounded frame queue per stream.")
    drop_policy: DropPolicy = Field(
        DropPolicy.DROP_OLDEST,
        description="Policy for live sources when the queue is full; files always block.",
    )
    every: int = Field(
        1, ge=1, description="Run detection and classification on every Nth decoded frame."
    )
    realtime: bool = Field(
        False, description="Pace file sources at their frame rate, as a camera would."
    )
    max_frames: int | None = Field(
        None, ge=1, description="Stop each stream after this many decoded frames."
    )
    loop: bool = Field(False, description="Replay file sources forever.")
    rtsp_transport: RtspTransport = Field(
        RtspTransport.TCP, description="RTSP lower transport: tcp or udp."
    )
    open_timeout_s: float = Field(10.0, gt=0, description="Timeout for opening a network source.")
    read_timeout_s: float = Field(10.0, gt=0, description="Timeout for a stalled network read.")
    reconnect_initial_s: float = Field(
        0.5, gt=0, description="First reconnect delay of a live source."
    )
    reconnect_max_s: float = Field(
        10.0, gt=0, description="Cap of the exponential reconnect delay."
    )
    decode: DecodeMode = Field(
        DecodeMode.AUTO,
        description="Video decode: auto (NVDEC when FFmpeg and the driver allow, else CPU), cpu, or nvdec (required).",
    )
    reconnect_attempts: int | None = Field(
        None,
        ge=0,
        description="Give up a live source after this many failed reconnects (None: never).",
    )
    max_decode_errors: int = Field(
        100,
        ge=1,
        description="Give up a stream after this many consecutive undecodable packets or"
        " corrupt frames (each is skipped and counted as a decode error).",
    )
    max_pixels: int = Field(
        3840 * 2160,
        ge=1,
        description="Largest frame (width x height) a source may deliver; a larger stream fails"
        " with its reason (memory and detector time grow with the frame).",
    )
    credentials: dict[str, HostCredentials] = Field(
        default_factory=dict,
        description="HOST[:PORT] -> {username, password_env | password_file}: credentials sent"
        " to that host only (rtsp, http); a URL without a matching entry gets none. A PORT-less"
        " entry matches every port of the host.",
    )

    @field_validator("credentials")
    @classmethod
    def _credential_hosts(cls, value: dict[str, HostCredentials]) -> dict[str, HostCredentials]:
        from pipeline.core.credentials import normalise_host_key

        return {normalise_host_key(key): cred for key, cred in value.items()}


class DetectorSettings(StrictModel):
    model_dir: Path = Field(
        Path("models"), description="Folder holding the detector ONNX (det_*.onnx)."
    )
    model_file: Path | None = Field(
        None, description="Explicit detector ONNX; overrides model_dir lookup."
    )
    input_size: tuple[int, int] = Field(
        (1440, 1440), description="Largest detector input (width, height) in pixels."
    )
    max_scale: float = Field(
        0.75,
        gt=0,
        le=1,
        description="With fit_aspect, the detector sees the frame at most this scale: 0.75 keeps "
        "a 40 px face at 30 px, where the detector still finds it (720p -> 960x544, "
        "1080p -> 1440x832; see the README table).",
    )
    score_threshold: float = Field(0.5, ge=0, le=1, description="Minimum face score.")
    nms_threshold: float = Field(0.4, ge=0, le=1, description="NMS IoU threshold.")
    min_face_px: int = Field(
        12, ge=1, description="Drop faces whose shorter side is below this many pixels."
    )
    max_faces: int = Field(
        64,
        ge=1,
        le=4096,
        description="Most faces kept per frame: the highest-scoring ones; the rest are counted "
        "(faces_capped) and not tracked or classified, which bounds the work a crowded frame costs.",
    )
    providers: tuple[str, ...] = Field(
        (),
        description="ONNX Runtime execution providers; empty picks CUDA/TensorRT when present, else CPU.",
    )
    backend: DetectorBackend = Field(
        DetectorBackend.AUTO,
        description="Detector runtime: auto (a TensorRT plan when TensorRT and a GPU are usable, else ONNX Runtime), tensorrt or onnxruntime.",
    )
    precision: str = Field(
        "fp16", description="Precision of the TensorRT detector plan: fp32, fp16 or int8."
    )
    fit_aspect: bool = Field(
        True,
        description="Shrink the detector canvas to the frame's aspect (multiple of 32) instead of "
        "letterboxing into the full input_size square: same scale, less padding to compute.",
    )
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads of the detector; 0 picks for the machine.",
    )
    max_batch: int = Field(
        8, ge=1, description="Most frames (across streams) in one detector call."
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="Longest a frame waits for other streams' frames to batch with."
    )


class IntervalSettings(StrictModel):
    """Detect on an interval, carry tracks by optical flow in between (DeepStream's interval)."""

    every: int = Field(
        10, ge=1, description="Run the detector on every Nth processed frame of a stream (1: all)."
    )
    mode: IntervalMode = Field(
        IntervalMode.AUTO, description="fixed, or auto: also detect sooner when tracking is unsure."
    )
    min_points: int = Field(
        4, ge=2, description="Flow points a face needs to be carried; fewer loses the track."
    )
    max_fb_error_px: float = Field(
        1.5, gt=0, description="Forward-backward flow error above which a point is dropped."
    )
    uncertain_score: float = Field(
        0.6,
        ge=0,
        le=1,
        description="auto: a carried face whose detector score was below this "
        "(or whose flow kept under 60% of points) triggers a detection on the next frame.",
    )
    scene_change: float = Field(
        30.0,
        gt=0,
        description="auto: mean absolute gray difference (0-255, at 1/8 scale) to "
        "the last detected frame above which the scene counts as cut.",
    )


class EmotionSettings(StrictModel):
    model: Path = Field(
        Path("models/emotion_mini_xception.onnx"),
        description="Emotion model (ONNX, or a TensorRT plan).",
    )
    backend: Backend = Field(
        Backend.AUTO, description="Engine backend: auto, tensorrt, onnxruntime or torch."
    )
    precision: Precision = Field(
        Precision.FP32, description="Engine precision: fp32, fp16 or int8."
    )
    smoothing_alpha: float = Field(
        0.3, gt=0, le=1, description="EMA weight of the newest frame in per-track smoothing."
    )
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads of the emotion engine; 0 picks for the machine.",
    )


class BatchSettings(StrictModel):
    max_batch: int = Field(32, ge=1, description="Most aligned faces in one inference call.")
    max_wait_ms: float = Field(5.0, ge=0, description="Longest a face waits for its batch to fill.")
    enabled: bool = Field(
        True, description="Batch faces across streams; off runs one frame at a time."
    )


class TrackerSettings(StrictModel):
    high_threshold: float = Field(
        0.6, description="Detections above this start or extend tracks first."
    )
    low_threshold: float = Field(
        0.3, description="Detections above this may extend existing tracks."
    )
    match_iou: float = Field(0.3, description="Minimum IoU to associate a detection with a track.")
    max_age_frames: int = Field(
        15, ge=1, description="Processed frames a lost track survives before it ends."
    )


class ViewSettings(StrictModel):
    """The worker's web view (``--http``): live previews, stream list, session charts."""

    http: str | None = Field(
        None,
        description="HOST:PORT to serve the view, /healthz, /readyz and /metrics on; None: off.",
    )
    blur_faces: bool = Field(
        False, description="Blur every face in what the view shows (events are unaffected)."
    )
    preview_fps: float = Field(
        5.0, gt=0, le=30, description="Most frames per second a preview.mjpg watcher is sent."
    )
    jpeg_quality: int = Field(80, ge=10, le=100, description="JPEG quality of previews.")
    max_watchers: int = Field(
        8,
        ge=1,
        description="Most preview.mjpg watchers at once (all streams together); more get 503.",
    )


class WebSettings(StrictModel):
    """Who may use the HTTP ports: the view's ``--http`` and the worker's metrics port."""

    config: Path | None = Field(
        None,
        description="Web configuration file in the format of Prometheus' exporter-toolkit:"
        " basic_auth_users (user: bcrypt hash from `emotion-stream web hash-password`) and"
        " tls_server_config (cert_file, key_file). Protects every route but /healthz.",
    )
    insecure: bool = Field(
        False,
        description="Serve an address beyond loopback without a web config (no login, no TLS).",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="Host header values served, port ignored (*.example.com: subdomains, *: any);"
        " others get 400. Empty: the bound address, localhost, 127.0.0.1 and ::1 (bound to"
        " 0.0.0.0 or ::, also this machine's names and addresses).",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """``a,b`` (from ES_WEB_ALLOWED_HOSTS or a flag) is two hosts."""
        if isinstance(value, str):
            return tuple(h.strip() for h in value.split(",") if h.strip())
        return value


class KafkaSettings(BaseSettings):
    """Kafka connection. Credentials come from ES_KAFKA_* variables or *_FILE files."""

    model_config = SettingsConfigDict(env_prefix="ES_KAFKA_", extra="forbid", frozen=True)

    bootstrap: str | None = Field(
        None, description="HOST:PORT[,HOST:PORT]; None disables the Kafka sink."
    )
    topic: str = Field("emotion-events", description="Events topic.")
    partitions: int = Field(6, ge=1, description="Partitions when the topic is created.")
    replication: int = Field(1, ge=1, description="Replication factor when the topic is created.")
    control_topic: str = Field(
        "emotion-streams", description="Compacted control topic of stream specs."
    )
    control_partitions: int = Field(
        12,
        ge=1,
        description="Partitions if the control topic is created (at most this many workers share streams).",
    )
    security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    sasl_username: str | None = Field(None, description="SASL user (env ES_KAFKA_SASL_USERNAME).")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (env ES_KAFKA_SASL_PASSWORD)."
    )
    sasl_password_file: Path | None = Field(None, description="File holding the SASL password.")
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL.")
    linger_ms: int = Field(20, ge=0, description="Producer linger.")
    batch_size: int = Field(256 * 1024, ge=1024, description="Producer batch size in bytes.")
    max_in_flight: int = Field(
        5, ge=1, le=5, description="Bounded in-flight requests per connection."
    )
    request_timeout_ms: int = Field(15000, ge=1000, description="Producer request timeout.")
    max_block_ms: int = Field(
        10000,
        ge=100,
        description="Longest a send may wait for metadata or buffer space (sink thread only).",
    )

    def password(self) -> str | None:
        if self.sasl_password is not None:
            return self.sasl_password.get_secret_value()
        if self.sasl_password_file is not None:
            return self.sasl_password_file.read_text().strip()
        return None


class RedisSettings(BaseSettings):
    """Redis connection. The password comes from ES_REDIS_PASSWORD or ES_REDIS_PASSWORD_FILE."""

    model_config = SettingsConfigDict(env_prefix="ES_REDIS_", extra="forbid", frozen=True)

    url: str | None = Field(None, description="redis://HOST:PORT/DB; None disables the Redis sink.")
    password: SecretStr | None = Field(None, description="Password (env ES_REDIS_PASSWORD).")
    password_file: Path | None = Field(None, description="File holding the password.")
    key_prefix: str = Field("es", description="Prefix of every key.")
    ttl_s: int = Field(7 * 24 * 3600, ge=1, description="Keys expire after this long idle.")
    socket_timeout_s: float = Field(
        5.0, gt=0, description="Longest one Redis command may wait (a hung server)."
    )

    def secret(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return None


class GroupSettings(StrictModel):
    """Consumer group on the control topic. Hand-over after a crash is about
    ``session_timeout_ms`` plus one rebalance; a clean leave (SIGTERM) about one rebalance."""

    group: str = Field("emotion-workers", description="Consumer group shared by the workers.")
    session_timeout_ms: int = Field(
        10000, ge=1, description="Group session timeout (crash hand-over)."
    )
    heartbeat_interval_ms: int = Field(1000, ge=1, description="Group heartbeat interval.")
    max_poll_interval_ms: int = Field(60000, ge=1, description="Group rebalance timeout.")
    assignor: Assignor = Field(
        Assignor.COOPERATIVE,
        description="cooperative: only moving streams restart on a rebalance; eager: all restart.",
    )
    poll_ms: int = Field(200, ge=1, description="Longest one poll of the control topic waits.")
    media_root: Path | None = Field(
        None, description="Folder that file: sources of stream records must lie under (None: none)."
    )
    allow_hosts: tuple[str, ...] = Field(
        (),
        description="Hosts that control-topic streams may connect to: IP addresses, CIDR ranges,"
        " names or *.suffix names (empty: any host not denied). Loopback, link-local and"
        " unspecified addresses stay denied unless an address or range here contains them.",
    )
    deny_hosts: tuple[str, ...] = Field(
        (),
        description="Hosts that control-topic streams may never connect to (IP addresses, CIDR"
        " ranges, names, *.suffix names); wins over allow_hosts.",
    )
    max_streams: int | None = Field(
        None,
        ge=1,
        description="Most streams this worker runs at once; records beyond it wait, with the"
        " reason shown in /readyz (None: no limit).",
    )

    @field_validator("allow_hosts", "deny_hosts", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """``ES_GROUP_ALLOW_HOSTS=127.0.0.1,10.0.0.0/8`` as well as a JSON/YAML list."""
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value

    @field_validator("allow_hosts", "deny_hosts")
    @classmethod
    def _host_entries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from pipeline.core.hosts import parse_entry

        for entry in value:
            parse_entry(entry)
        return value


class MetricsSettings(StrictModel):
    """The worker's HTTP endpoints: /healthz, /readyz, /metrics."""

    port: int = Field(9100, ge=-1, le=65535, description="Port (0: any free port; -1: off).")
    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP endpoints bind; beyond loopback needs web.config"
        " (or web.insecure).",
    )


class SinkSettings(StrictModel):
    """Where events go, besides Kafka and Redis (added when kafka.bootstrap / redis.url are set)."""

    specs: tuple[str, ...] = Field(
        (),
        description="jsonl:PATH, stdout, kafka or redis; empty: `run` writes jsonl:out/events.jsonl.",
    )


class DeliverySettings(StrictModel):
    """The worker's durable event log and its per-sink delivery threads."""

    log_dir: Path = Field(
        Path("out/eventlog"), description="Folder of event logs; each worker uses DIR/WORKER_ID."
    )
    max_bytes: int = Field(
        1 << 30, ge=1 << 16, description="Size limit of the log's undelivered event bytes."
    )
    full_policy: LogFullPolicy = Field(
        LogFullPolicy.DROP_OLDEST,
        description="At the size limit: drop_oldest (counted, logged) or block the pipeline.",
    )
    fsync: FsyncPolicy = Field(
        FsyncPolicy.NORMAL,
        description="always: fsync every append; normal: survives kill -9, not power loss; off.",
    )
    batch_rows: int = Field(
        256, ge=1, description="Most log rows (one frame's events each) per sink delivery."
    )
    retry_initial_s: float = Field(0.5, gt=0, description="First retry delay of a failed sink.")
    retry_max_s: float = Field(5.0, gt=0, description="Cap of a sink's retry delay.")
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="At shutdown, wait this long for sinks to catch up; the rest stays logged.",
    )


class WorkerSettings(StrictModel):
    """Everything one worker run needs, built once by the CLI."""

    worker_id: str = Field(
        "worker-0",
        description=f"Carried in every event as worker_id; names the event-log folder: {ID_RULE}.",
    )
    session_id: str = Field(
        "default",
        description=f"Session the events and aggregates belong to (part of Redis keys): {ID_RULE}.",
    )
    source: SourceSettings = Field(default_factory=SourceSettings, description="Sources.")  # type: ignore[arg-type]
    detector: DetectorSettings = Field(default_factory=DetectorSettings, description="Detector.")  # type: ignore[arg-type]
    emotion: EmotionSettings = Field(default_factory=EmotionSettings, description="Classifier.")  # type: ignore[arg-type]
    batch: BatchSettings = Field(default_factory=BatchSettings, description="Batching.")  # type: ignore[arg-type]
    tracker: TrackerSettings = Field(default_factory=TrackerSettings, description="Tracking.")  # type: ignore[arg-type]
    sinks: SinkSettings = Field(default_factory=SinkSettings, description="Event sinks.")  # type: ignore[arg-type]
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka.")  # type: ignore[arg-type]
    redis: RedisSettings = Field(default_factory=RedisSettings, description="Redis.")  # type: ignore[arg-type]
    group: GroupSettings = Field(default_factory=GroupSettings, description="Worker group.")  # type: ignore[arg-type]
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings,  # type: ignore[arg-type]
        description="HTTP health and metrics endpoints.",
    )
    view: ViewSettings = Field(default_factory=ViewSettings, description="Web view.")  # type: ignore[arg-type]
    web: WebSettings = Field(
        default_factory=WebSettings,  # type: ignore[arg-type]
        description="Login, TLS and allowed hosts of the HTTP ports (view and metrics).",
    )
    track_thumbnails: bool = Field(
        False,
        description="Put a small JPEG of each track's best aligned face on its track_end event.",
    )
    delivery: DeliverySettings = Field(default_factory=DeliverySettings, description="Event log.")  # type: ignore[arg-type]
    interval: IntervalSettings = Field(
        default_factory=IntervalSettings, description="Detection interval."
    )  # type: ignore[arg-type]

    @field_validator("worker_id", "session_id")
    @classmethod
    def _one_id_rule(cls, value: str) -> str:
        """Ids become Redis key parts and folder names: the one rule of ``pipeline.core.ids``."""
        if not is_valid_id(value):
            raise ValueError(f"use {ID_RULE}")
        return value
