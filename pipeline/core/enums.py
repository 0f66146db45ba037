"""Named choices shared across planes: engine backend and precision, RTSP transport, the colour
order of a classifier's input. ``StrEnum`` so that settings, JSON and log lines read as text."""

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
