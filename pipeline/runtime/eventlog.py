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
A write the disk refuses (full) applies the same policy, with one warning line.

Damage (whatever is on disk may be replayed, never crash the worker): the database passes
``PRAGMA quick_check`` on open, or it is moved aside to ``events.db.damaged-<UTC time>`` (with
its ``-wal``/``-shm``, kept for forensics) with one warning naming it and the events it may
have held, and the worker starts on an empty log: the live streams keep flowing rather than
the worker refusing to start. A row that does not decode is moved to the ``rejected`` table
(the newest ``MAX_REJECTED_ROWS`` kept), counted per sink that had not delivered it
(``rejected``), and delivery goes on. The folder is 0700, its files 0600: events hold faces'
positions, emotions and thumbnails.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pipeline.core.config import DeliverySettings, FsyncPolicy, LogFullPolicy
from pipeline.core.errors import ConfigError, SinkError
from pipeline.core.events import encode
from pipeline.core.ids import check_id

logger = logging.getLogger(__name__)

_SYNCHRONOUS = {FsyncPolicy.ALWAYS: "FULL", FsyncPolicy.NORMAL: "NORMAL", FsyncPolicy.OFF: "OFF"}

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, born REAL, stored REAL NOT NULL,"
    " n INTEGER NOT NULL, body BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rejected (seq INTEGER PRIMARY KEY, born, stored, n, body,"
    " reason TEXT NOT NULL, rejected REAL NOT NULL)",
)
DB_NAME = "events.db"
DIR_MODE, FILE_MODE = 0o700, 0o600
#: Rows kept in the ``rejected`` table (the newest); older ones are deleted.
MAX_REJECTED_ROWS = 1000
#: What a damaged file gives: SQLITE_CORRUPT ("malformed"), SQLITE_NOTADB ("not a database").
_DAMAGE_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DAMAGE_TEXT = ("malformed", "not a database", "corrupt")
#: Undecodable rows logged one line each (per open); later ones are only counted.
_REJECTED_ROWS_LOGGED = 20
#: What a row that does not decode raises.
_UNDECODABLE = (ValueError, TypeError, AttributeError, RecursionError)


class _DamagedError(Exception):
    """The database file is damaged (quick_check or SQLite said so)."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in _DAMAGE_CODES or any(t in str(exc) for t in _DAMAGE_TEXT)


def _is_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(
        exc
    )


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 if missing, make it 0600 if present."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class LogRow:
    """One appended batch (a frame's events): ``born`` is the decode wall time, if known."""

    seq: int
    born: float | None
    events: list[dict[str, Any]]


def decode_body(body: bytes) -> list[dict[str, Any]]:
    """The events of one row; ValueError (or TypeError) when it does not decode."""
    events = [json.loads(line) for line in body.split(b"\n") if line]
    if not all(isinstance(e, dict) for e in events):
        raise ValueError("an event is not a JSON object")
    return events


class EventLog:
    """Thread-safe: stream threads append, one delivery thread per sink reads and commits.

    ``repair``: a damaged database is moved aside and an empty log started (the worker); False
    raises a one-line ConfigError instead (``eventlog list``, which only looks)."""

    def __init__(
        self, folder: Path, settings: DeliverySettings | None = None, repair: bool = True
    ) -> None:
        self.settings = settings or DeliverySettings()
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self._lockfile = self._take_lock()
        self._cond = threading.Condition()
        self._closed = False
        self.appended = 0
        self.dropped: dict[str, int] = {}
        #: sink -> events of rows that did not decode (moved to ``rejected``) it had not delivered
        self.rejected: dict[str, int] = {}
        self.blocked_s = 0.0
        self._disk_full = False
        self._full_reason = ""
        self._rejected_rows = 0
        try:
            self._db = self._open(repair)
        except BaseException:
            self._lockfile.close()
            raise
        if self._bytes:
            logger.info("event log %s holds %d bytes not yet delivered", self.folder, self._bytes)

    def _take_lock(self) -> IO[bytes]:
        try:
            if not self.folder.parent.exists():
                self.folder.parent.mkdir(parents=True, mode=DIR_MODE, exist_ok=True)
            self.folder.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(self.folder, DIR_MODE)
            fd = os.open(
                self.folder / "lock",
                os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
                FILE_MODE,
            )
            os.fchmod(fd, FILE_MODE)
            fh = os.fdopen(fd, "ab")
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

    def _open(self, repair: bool) -> sqlite3.Connection:
        """The checked database with its state loaded; a damaged one is moved aside first."""
        try:
            return self._connect()
        except _DamagedError as exc:
            if not repair:
                raise ConfigError(
                    f"event log {self.path} is damaged ({exc}): a worker started with "
                    f"--worker-id {self.folder.name} moves it aside and starts an empty log"
                ) from None
            self._move_aside(str(exc))
        try:
            return self._connect()
        except _DamagedError as exc:  # a fresh file that is damaged: the disk, not the log
            raise ConfigError(
                f"event log {self.path}: a new database is damaged at once ({exc}): check the "
                "disk, or pass another --log-dir"
            ) from None

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        try:
            _private_file(path)
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"event log {path} cannot be opened ({exc}): pass a writable --log-dir"
            ) from exc
        try:
            self._prepare(db)
        except sqlite3.DatabaseError as exc:
            db.close()
            if _is_damage(exc):
                raise _DamagedError(str(exc).splitlines()[0]) from None
            raise ConfigError(
                f"event log {path} cannot be opened ({exc}): move it away to start an empty log"
            ) from exc
        except _DamagedError:
            db.close()
            raise
        for suffix in ("-wal", "-shm"):
            if (extra := path.with_name(path.name + suffix)).exists():
                os.chmod(extra, FILE_MODE)
        return db

    def _prepare(self, db: sqlite3.Connection) -> None:
        """Pragmas, integrity check, schema, then this log's state (seq, bytes, cursors)."""
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.settings.fsync]}")
        found = [str(r[0]) for r in db.execute("PRAGMA quick_check").fetchall()]
        if found != ["ok"]:
            raise _DamagedError(f"quick_check: {'; '.join(found)[:200]}")
        for statement in _SCHEMA:
            db.execute(statement)
        row = db.execute("SELECT COALESCE(SUM(length(body)), 0), MAX(seq) FROM events")
        self._bytes, last = row.fetchone()
        if last is None:  # empty: continue after the highest committed position
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM cursors").fetchone()[0]
        self._last: int = int(last)
        # A sink that had caught up owes nothing: forget it, so it cannot pin later rows.
        db.execute("DELETE FROM cursors WHERE seq >= ?", (self._last,))
        self._cursors: dict[str, int] = dict(db.execute("SELECT sink, seq FROM cursors"))

    def _move_aside(self, reason: str) -> None:
        """Rename the damaged database (and its -wal/-shm) to ``events.db.damaged-<UTC time>``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{DB_NAME}.damaged-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{DB_NAME}.damaged-{stamp}-{n}")
        try:
            self.path.replace(target)
            for suffix in ("-wal", "-shm"):
                extra = self.path.with_name(DB_NAME + suffix)
                if extra.exists():
                    extra.replace(target.with_name(target.name + suffix))
        except OSError as exc:
            raise ConfigError(
                f"event log {self.path} is damaged ({reason}) and cannot be moved aside "
                f"({exc.strerror}): move it away by hand"
            ) from None
        logger.warning(
            "event log %s is damaged (%s): moved aside to %s (it may have held %s); starting "
            "an empty log",
            self.path,
            reason,
            target.name,
            _count_events(target),
        )

    # ------------------------------------------------------------------ writers
    def append(self, events: Sequence[dict[str, Any]], born: float | None = None) -> int:
        """Store one batch durably; returns its seq. Applies the full policy first."""
        body = b"\n".join(encode(e) for e in events)
        with self._cond:
            self._make_room(len(body))
            seq = self._last + 1  # explicit: SQLite would reuse seqs once the table is empty
            row = (seq, born, time.time(), len(events), body)
            if self._insert(row):
                if self._disk_full:
                    self._disk_full = False
                    logger.info("event log %s: writing again after the disk was full", self.folder)
            elif not self._insert_when_full(row):
                return self._last  # dropped by the full policy (counted, logged)
            self._last = seq
            self._bytes += len(body)
            self.appended += len(events)
            self._cond.notify_all()
            return self._last

    def _insert(self, row: tuple[Any, ...]) -> bool:
        """True if stored; False if the disk is full (any other error propagates)."""
        try:
            self._db.execute(
                "INSERT INTO events (seq, born, stored, n, body) VALUES (?, ?, ?, ?, ?)", row
            )
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            self._full_reason = str(exc).splitlines()[0] if str(exc) else "disk full"
            return False
        return True

    def _insert_when_full(self, row: tuple[Any, ...]) -> bool:
        """The disk is full: wait for the sinks (block) or drop the oldest rows, then this one
        if still needed (drop_oldest). True once the row is stored. One warning line when the
        disk fills, one info line when writes succeed again; counts in ``dropped``."""
        first = not self._disk_full
        self._disk_full = True
        if self.settings.full_policy is LogFullPolicy.BLOCK:
            if first:
                logger.warning(
                    "event log %s: the disk is full (%s): blocking the pipeline until the sinks "
                    "free space (policy block)",
                    self.folder,
                    self._full_reason,
                )
            t0 = time.monotonic()
            while not self._closed:
                self._cond.wait(0.5)
                if self._insert(row):
                    self.blocked_s += time.monotonic() - t0
                    return True
            self.blocked_s += time.monotonic() - t0
            return self._drop_new(row, first=False)
        old = sum(self.dropped.values())
        try:
            while self._bytes:
                self._drop_oldest(max(self._bytes // 2, len(row[4])), quiet=True)
                if self._insert(row):
                    break
            else:
                return self._drop_new(row, first)
        except sqlite3.OperationalError as exc:
            if not _is_full(exc):
                raise
            return self._drop_new(row, first)
        if first:
            logger.warning(
                "event log %s: the disk is full (%s): dropped the oldest %d undelivered events "
                "to store new ones (policy drop_oldest; counted per sink as dropped)",
                self.folder,
                self._full_reason,
                sum(self.dropped.values()) - old,
            )
        return True

    def _drop_new(self, row: tuple[Any, ...], first: bool) -> bool:
        """The row cannot be stored: count its events as dropped for every sink."""
        for sink in self._cursors:
            self.dropped[sink] = self.dropped.get(sink, 0) + int(row[3])
        if first:
            logger.warning(
                "event log %s: the disk is full (%s) and nothing is left to drop: new events "
                "are not stored until it has room (policy %s; counted per sink as dropped)",
                self.folder,
                self._full_reason,
                self.settings.full_policy.value,
            )
        return False

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

    def _drop_oldest(self, excess: int, quiet: bool = False) -> None:
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
            if quiet:
                continue
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
        out = []
        for seq, born, body in rows:
            try:
                events = decode_body(body)
            except _UNDECODABLE as exc:  # set aside; an empty row keeps the cursors moving
                self._reject_row(int(seq), f"{type(exc).__name__}: {str(exc)[:200]}")
                out.append(LogRow(int(seq), None, []))
                continue
            out.append(LogRow(int(seq), born if isinstance(born, int | float) else None, events))
        return out

    def _move_to_rejected(self, seq: int, reason: str) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT OR REPLACE INTO rejected SELECT seq, born, stored, n, body, ?, ? "
                "FROM events WHERE seq = ?",
                (reason, time.time(), seq),
            )
            db.execute("DELETE FROM events WHERE seq = ?", (seq,))
            db.execute(
                "DELETE FROM rejected WHERE seq NOT IN "
                "(SELECT seq FROM rejected ORDER BY seq DESC LIMIT ?)",
                (MAX_REJECTED_ROWS,),
            )
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _reject_row(self, seq: int, reason: str) -> None:
        """Move row ``seq`` to the ``rejected`` table, once, and count its events for every
        sink that had not delivered it."""
        with self._cond:
            found = self._db.execute(
                "SELECT n, length(body) FROM events WHERE seq = ?", (seq,)
            ).fetchone()
            if found is None:  # another sink's thread moved it already
                return
            n = found[0] if isinstance(found[0], int) else 0
            self._move_to_rejected(seq, reason)
            self._bytes -= int(found[1] or 0)
            behind = [sink for sink, pos in self._cursors.items() if pos < seq]
            for sink in behind:
                self.rejected[sink] = self.rejected.get(sink, 0) + n
            self._rejected_rows += 1
            told = self._rejected_rows
        if told > _REJECTED_ROWS_LOGGED:
            logger.debug("event log %s: row %d does not decode (%s)", self.folder, seq, reason)
            return
        logger.warning(
            "event log %s: row %d (%d events) does not decode (%s): moved to table rejected, "
            "not delivered to %s%s",
            self.folder,
            seq,
            n,
            reason,
            ", ".join(sorted(behind)) or "any sink",
            "; further such rows are only counted" if told == _REJECTED_ROWS_LOGGED else "",
        )

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


def _count_events(path: Path) -> str:
    """Best effort: the events a (damaged) database file holds, read without changing it."""
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        with closing(sqlite3.connect(uri, uri=True)) as db:
            try:
                (n,) = db.execute("SELECT COALESCE(SUM(n), 0) FROM events").fetchone()
                return f"{int(n)} undelivered events"
            except sqlite3.DatabaseError:  # damaged rows: the seq range may still be readable
                low, high = db.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
                return f"the undelivered events of rows {int(low)}-{int(high)}"
    except (sqlite3.Error, OSError, TypeError, ValueError):
        pass
    try:
        size = f" in {path.stat().st_size} bytes"
    except OSError:
        size = ""
    return f"an unknown number of undelivered events{size}"


def open_log(
    root: Path, worker_id: str, settings: DeliverySettings, repair: bool = True
) -> EventLog:
    """The log of ``worker_id`` under ``root`` (one folder per worker id)."""
    check_id("worker id", worker_id, "pass --worker-id NAME")
    return EventLog(root / worker_id, settings, repair)


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
