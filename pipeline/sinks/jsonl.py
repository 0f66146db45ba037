"""JSON lines file sink: one ``encode(event)`` per line, truncated when opened (appended to
when the worker resumes delivering to the same file from its event log)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from pipeline.core.errors import SinkError
from pipeline.core.events import encode

logger = logging.getLogger(__name__)


class JsonlSink:
    """Writes each run's events to ``path`` (created with its folder, truncated); ``flush``
    fsyncs so a flushed event survives a crash."""

    def __init__(self, path: str | Path, append: bool = False) -> None:
        self.path = Path(path)
        self.name = f"jsonl:{self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[bytes] | None = self.path.open("ab" if append else "wb")
        except OSError as exc:
            raise SinkError(
                f"cannot write events to {self.path}: {exc.strerror}: choose a writable path"
            ) from exc

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        if self._fh is None:
            raise SinkError(f"{self.name} is closed")
        try:
            self._fh.write(b"".join(encode(e) + b"\n" for e in events))
        except OSError as exc:
            raise SinkError(f"writing {self.path} failed: {exc.strerror}: check the disk") from exc

    def flush(self, timeout: float | None = None) -> None:
        if self._fh is None:
            return
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:
            raise SinkError(f"flushing {self.path} failed: {exc.strerror}: check the disk") from exc

    def close(self) -> None:
        if self._fh is None:
            return
        try:
            self.flush()
        finally:
            self._fh.close()
            self._fh = None
