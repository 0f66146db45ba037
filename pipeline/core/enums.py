"""Named choices shared across planes: engine backend and precision, RTSP transport, the colour
order of a classifier's input, and the policies and modes of the settings tree. ``StrEnum`` so
that settings, JSON and log lines read as text."""

from __future__ import annotations

import enum


class Backend(enum.StrEnum):
    """Emotion engine backend; ``auto`` picks from the model file and what is installed."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"


class Precision(enum.StrEnum):
    """Numeric precision an engine runs in."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class RtspTransport(enum.StrEnum):
    """RTSP lower transport."""

    TCP = "tcp"
    UDP = "udp"


class ColourOrder(enum.StrEnum):
    """Colour order of a classifier's input crop: one gray channel, or three in RGB or BGR."""

    GRAY = "gray"
    RGB = "rgb"
    BGR = "bgr"

    @property
    def channels(self) -> int:
        return 1 if self is ColourOrder.GRAY else 3


class DropPolicy(enum.StrEnum):
    """What a live source does when its bounded frame queue is full."""

    DROP_OLDEST = "drop_oldest"
    DROP_LATEST = "drop_latest"
    BLOCK = "block"


class DecodeMode(enum.StrEnum):
    """Where video is decoded: NVDEC when present (auto), always the CPU, or NVDEC required."""

    AUTO = "auto"
    CPU = "cpu"
    NVDEC = "nvdec"


class DetectorBackend(enum.StrEnum):
    """What runs the face detector: TensorRT when usable (auto), TensorRT, or ONNX Runtime."""

    AUTO = "auto"
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


class LogFullPolicy(enum.StrEnum):
    """What the worker's event log does when it reaches its size limit."""

    DROP_OLDEST = "drop_oldest"
    BLOCK = "block"


class FsyncPolicy(enum.StrEnum):
    """How hard the event log pushes each append to disk (SQLite ``synchronous``)."""

    ALWAYS = "always"
    NORMAL = "normal"
    OFF = "off"


class IntervalMode(enum.StrEnum):
    """When the detector runs between its regular interval."""

    FIXED = "fixed"  # exactly every N processed frames
    AUTO = "auto"  # every N frames, and sooner when a track is lost/uncertain or the scene cuts


class Assignor(enum.StrEnum):
    """Partition assignment protocol of the worker group."""

    COOPERATIVE = "cooperative"  # KIP-429: only moving partitions are revoked
    EAGER = "eager"  # range / round robin: every rebalance revokes everything
