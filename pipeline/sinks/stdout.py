"""Standard output sink: one compact JSON line per event (pipe it into ``jq``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from pipeline.core.events import encode


class StdoutSink:
    """Writes through ``sys.stdout`` as text, so lines interleave correctly with prints."""

    name = "stdout"

    def write(self, events: Sequence[dict[str, Any]]) -> None:
        sys.stdout.write("".join(encode(e).decode() + "\n" for e in events))

    def flush(self, timeout: float | None = None) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away (e.g. `| head`)
            pass

    def close(self) -> None:
        self.flush()
