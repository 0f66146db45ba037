"""The worker's durable local event log: every accepted event is stored here before any sink
sees it, and each sink reads the log from its own committed cursor.

Storage: one SQLite database in WAL mode per worker (``DIR/WORKER_ID/events.db``), from the
standard library. One row holds one frame's events (so a sink never sees half a frame), keyed
by a monotonically increasing ``seq``; the ``cursors`` table holds each sink's last delivered
``seq``. Rows at or below every cursor are deleted. An append is one small transaction: with
``fsync=normal`` it survives ``kill -9`` (the WAL is in the OS cache) but not a power cut;
``always`` fsyncs each append; ``off`` leaves it to the OS.

At the size limit (undelivered payload bytes), the :class:`LogFullPolicy` decides:
``drop_oldest`` deletes the oldest rows, advances the cursors that pointed below them and
counts the events per sink (with a warning); ``block`` makes ``append`` wait for the sinks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.core.config import DeliverySettings, FsyncPolicy, LogFullPolicy
from pipeline.core.errors import ConfigError, SinkError
from pipeline.core.events import encode

logger = logging.getLogger(__name__)

_SYNCHRONOUS = {FsyncPolicy.ALWAYS: "FULL", FsyncPolicy.NORMAL: "NORMAL", FsyncPolicy.OFF: "OFF"}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, born REAL, stored REAL NOT NULL,"
    " n INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class LogRow:
    """One appended batch (a frame's events): ``born`` is the decode wall time, if known."""

    seq: int
    born: float | None
    events: list[dict[str, Any]]


def decode_body(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.split(b"\n") if line]


class EventLog:
    """Thread-safe: stream threads append, one delivery thread per sink reads and commits."""

    def __init__(self, folder: Path, settings: DeliverySettings | None = None) -> None:
        self.settings = settings or DeliverySettings()
        self.folder = Path(folder)
        self._lockfile = self._take_lock()
        self._db = self._connect()
        self._cond = threading.Condition()
        self._closed = False
        row = self._db.execute("SELECT COALESCE(SUM(length(body)), 0), MAX(seq) FROM events")
        self._bytes, last = row.fetchone()
        if last is None:  # empty: continue after the highest committed position
            last = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM cursors").fetchone()[0]
        self._last: int = int(last)
        # A sink that had caught up owes nothing: forget it, so it cannot pin later rows.
        self._db.execute("DELETE FROM cursors WHERE seq >= ?", (self._last,))
        self._cursors: dict[str, int] = dict(self._db.execute("SELECT sink, seq FROM cursors"))
        self.appended = 0
        self.dropped: dict[str, int] = {}
        self.blocked_s = 0.0
        if self._bytes:
            logger.info("event log %s holds %d bytes not yet delivered", self.folder, self._bytes)

    def _take_lock(self) -> IO[bytes]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fh = (self.folder / "lock").open("ab")
        except OSError as exc:
            raise ConfigError(
                f"event log folder {self.folder}: {exc.strerror}: pass a writable --log-dir"
            ) from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise ConfigError(
                f"event log {self.folder} is in use by another process: give each worker its "
                "own --worker-id or --log-dir"
            ) from exc
        return fh

    def _connect(self) -> sqlite3.Connection:
        path = self.folder / "events.db"
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.settings.fsync]}")
            for statement in _SCHEMA:
                db.execute(statement)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"event log {path} cannot be opened ({exc}): move it away to start an empty log"
            ) from exc
        return db

    # ------------------------------------------------------------------ writers
    def append(self, events: Sequence[dict[str, Any]], born: float | None = None) -> int:
        """Store one batch durably; returns its seq. Applies the full policy first."""
        body = b"\n".join(encode(e) for e in events)
        with self._cond:
            self._make_room(len(body))
            seq = self._last + 1  # explicit: SQLite would reuse seqs once the table is empty
            self._db.execute(
                "INSERT INTO events (seq, born, stored, n, body) VALUES (?, ?, ?, ?, ?)",
                (seq, born, time.time(), len(events), body),
            )
            self._last = seq
            self._bytes += len(body)
            self.appended += len(events)
            self._cond.notify_all()
            return self._last

    def _make_room(self, need: int) -> None:
        limit = self.settings.max_bytes
        if self._bytes + need <= limit or self._bytes == 0:
            return
        if self.settings.full_policy is LogFullPolicy.BLOCK:
            t0 = time.monotonic()
            logger.warning(
                "event log %s is full (%d bytes): blocking the pipeline", self.folder, limit
            )
            while self._bytes + need > limit and self._bytes and not self._closed:
                self._cond.wait(0.5)
            self.blocked_s += time.monotonic() - t0
            return
        self._drop_oldest(self._bytes + need - limit)

    def _drop_oldest(self, excess: int) -> None:
        freed, cut = 0, 0
        for seq, size in self._db.execute("SELECT seq, length(body) FROM events ORDER BY seq"):
            freed += size
            cut = seq
            if freed >= excess:
                break
        for sink, pos in list(self._cursors.items()):
            if pos >= cut:
                continue
            (lost,) = self._db.execute(
                "SELECT COALESCE(SUM(n), 0) FROM events WHERE seq > ? AND seq <= ?", (pos, cut)
            ).fetchone()
            self.dropped[sink] = self.dropped.get(sink, 0) + int(lost)
            self._set_cursor(sink, cut)
            logger.warning(
                "event log %s full: dropped %d undelivered events of sink %s (policy drop_oldest)",
                self.folder,
                lost,
                sink,
            )
        self._db.execute("DELETE FROM events WHERE seq <= ?", (cut,))
        self._bytes -= freed

    def _set_cursor(self, sink: str, seq: int) -> None:
        self._db.execute(
            "INSERT INTO cursors (sink, seq) VALUES (?, ?) "
            "ON CONFLICT(sink) DO UPDATE SET seq = excluded.seq",
            (sink, seq),
        )
        self._cursors[sink] = seq

    def attach(self, sink: str) -> int:
        """The sink's committed position; a sink new to this log starts at its end (live)."""
        with self._cond:
            if sink not in self._cursors:
                self._set_cursor(sink, self._last)
            return self._cursors[sink]

    def commit(self, sink: str, seq: int) -> None:
        """Record that ``sink`` has acknowledged everything up to ``seq``; trims the log."""
        with self._cond:
            if seq <= self._cursors.get(sink, 0):
                return
            self._set_cursor(sink, seq)
            self._trim()
            self._cond.notify_all()

    def _trim(self) -> None:
        floor = min(self._cursors.values(), default=0)
        (size,) = self._db.execute(
            "SELECT COALESCE(SUM(length(body)), 0) FROM events WHERE seq <= ?", (floor,)
        ).fetchone()
        if size:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (floor,))
            self._bytes -= int(size)

    # ------------------------------------------------------------------ readers
    def read(self, after: int, limit: int) -> list[LogRow]:
        """Up to ``limit`` rows with seq above ``after``, in order."""
        with self._cond:
            rows = self._db.execute(
                "SELECT seq, born, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [LogRow(int(seq), born, decode_body(body)) for seq, born, body in rows]

    def wait_beyond(self, seq: int, timeout: float) -> bool:
        """Block until something above ``seq`` is stored (or the timeout); True if so."""
        with self._cond:
            return self._cond.wait_for(lambda: self._last > seq or self._closed, timeout) and (
                self._last > seq
            )

    @property
    def last_seq(self) -> int:
        with self._cond:
            return self._last

    def knows(self, sink: str) -> bool:
        """Whether ``sink`` has a cursor here (it delivered from this log before)."""
        with self._cond:
            return sink in self._cursors

    def sinks(self) -> list[str]:
        """Every sink with a cursor here (configured now or in an earlier run)."""
        with self._cond:
            return sorted(self._cursors)

    def forget(self, sink: str) -> int:
        """Drop ``sink``'s cursor, so it no longer keeps rows in the log; returns how many
        events it had not acknowledged (they are not delivered to it)."""
        with self._cond:
            if sink not in self._cursors:
                known = ", ".join(sorted(self._cursors)) or "none"
                raise ConfigError(f"event log {self.folder} has no sink {sink!r} (sinks: {known})")
            n, _ = self.pending(sink)  # the Condition's lock is re-entrant
            del self._cursors[sink]
            self._db.execute("DELETE FROM cursors WHERE sink = ?", (sink,))
            self._trim()
            self._cond.notify_all()
        logger.warning(
            "event log %s: sink %s forgotten (%d events undelivered)", self.folder, sink, n
        )
        return n

    def cursor(self, sink: str) -> int:
        with self._cond:
            return self._cursors.get(sink, 0)

    def pending(self, sink: str) -> tuple[int, float]:
        """(events not yet acknowledged by ``sink``, age in s of the oldest of them)."""
        with self._cond:
            pos = self._cursors.get(sink, self._last)
            n, oldest = self._db.execute(
                "SELECT COALESCE(SUM(n), 0), MIN(stored) FROM events WHERE seq > ?", (pos,)
            ).fetchone()
        return int(n), (round(time.time() - oldest, 3) if oldest is not None else 0.0)

    @property
    def size_bytes(self) -> int:
        with self._cond:
            return int(self._bytes)

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            try:
                self._db.close()
            except sqlite3.Error as exc:
                logger.warning("closing event log %s: %s", self.folder, exc)
        self._lockfile.close()


def open_log(root: Path, worker_id: str, settings: DeliverySettings) -> EventLog:
    """The log of ``worker_id`` under ``root`` (one folder per worker id)."""
    if not worker_id or "/" in worker_id or worker_id in {".", ".."}:
        raise ConfigError(f"worker id {worker_id!r} cannot name a log folder: use --worker-id NAME")
    return EventLog(root / worker_id, settings)


def check_drained(log: EventLog, sinks: Sequence[str]) -> None:
    """SinkError naming the sinks that still have events in the log."""
    behind = {s: log.pending(s)[0] for s in sinks}
    behind = {s: n for s, n in behind.items() if n}
    if behind:
        listed = ", ".join(f"{s}: {n}" for s, n in behind.items())
        raise SinkError(
            f"not every event was delivered yet ({listed}); they stay in the event log "
            f"{log.folder} and are delivered when a worker starts again with the same --worker-id"
        )
