"""emotion-stream worker: video in, per-face emotion events out."""

__version__ = "0.1.0"
