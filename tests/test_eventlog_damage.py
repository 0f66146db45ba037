"""The event log survives its own damage: damaged pages and headers (real SQLite files damaged
here), a row that does not decode, a delivery thread that fails, a full disk, file modes."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from pipeline.control.metrics import Metrics
from pipeline.core.config import DeliverySettings, LogFullPolicy
from pipeline.runtime.eventlog import EventLog, LogRow
from pipeline.runtime.publisher import Publisher
from pipeline.runtime.stats import WorkerStats
from pipeline.sinks.jsonl import JsonlSink

FAST = DeliverySettings(retry_initial_s=0.05, retry_max_s=0.2)


def _events(i: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "stream_id": "cam", "pad": "x" * 200}]


def _filled(folder: Path, rows: int) -> Path:
    log = EventLog(folder)
    log.attach("jsonl:x")
    for i in range(rows):
        log.append(_events(i))
    log.close()
    return folder / "events.db"


def _damage_middle_pages(db: Path, pages: int = 8) -> None:
    pagesize = 4096
    middle = db.stat().st_size // pagesize // 2
    with db.open("r+b") as fh:
        for page in range(middle, middle + pages):
            fh.seek(page * pagesize)
            fh.write(bytes(range(256)) * (pagesize // 256))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("where", ["middle pages", "header"])
def test_eventlog_damaged_file_moved_aside_and_new_log_started(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = _filled(tmp_path, 3000)
    if where == "header":
        with db.open("r+b") as fh:
            fh.write(b"not sqlite at all" * 6)
    else:
        _damage_middle_pages(db)
    damaged_bytes = db.read_bytes()
    with caplog.at_level(logging.WARNING):
        log = EventLog(tmp_path)
    try:
        aside = sorted(tmp_path.glob("events.db.damaged-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == damaged_bytes  # kept as it was
        [warning] = _warnings(caplog)
        msg = warning.getMessage()
        assert aside[0].name in msg and "may have held" in msg and warning.exc_info is None
        assert log.last_seq == 0 and log.sinks() == []
        log.attach("jsonl:x")
        seq = log.append(_events(1))
        assert [r.events for r in log.read(0, 10)] == [_events(1)] and seq == 1
    finally:
        log.close()


def test_eventlog_damage_count_is_told_when_the_rows_are_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = _filled(tmp_path, 5)
    raw = sqlite3.connect(db)
    raw.execute("PRAGMA writable_schema=ON")  # a damaged schema: quick_check fails, rows read
    raw.execute("UPDATE sqlite_master SET sql = sql || ' ' WHERE name = 'cursors'")
    raw.commit()
    raw.close()
    with db.open("r+b") as fh:  # a free-page count that does not add up
        fh.seek(36)
        fh.write((12345).to_bytes(4, "big"))
    with caplog.at_level(logging.WARNING):
        EventLog(tmp_path).close()
    [warning] = _warnings(caplog)
    assert "5 undelivered events" in warning.getMessage()


def test_cli_eventlog_list_on_damaged_log_is_one_line_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _filled(tmp_path / "w1", 3000)
    _damage_middle_pages(db)
    before = db.read_bytes()
    assert main(["eventlog", "list", "--log-dir", str(tmp_path), "--worker-id", "w1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "is damaged" in err[0]
    assert "--worker-id w1" in err[0]
    assert db.read_bytes() == before and not list((tmp_path / "w1").glob("*.damaged-*"))


def test_eventlog_undecodable_row_is_rejected_counted_and_delivery_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path / "log", FAST)
    first = JsonlSink(str(tmp_path / "a.jsonl"))
    second = JsonlSink(str(tmp_path / "b.jsonl"))
    log.attach(first.name)
    log.attach(second.name)
    for i in range(440):
        log.append(_events(i))
    log.commit(second.name, 3)  # the second sink had delivered the row already
    pub = Publisher(log, [first, second], settings=FAST)
    raw = sqlite3.connect(tmp_path / "log" / "events.db")
    raw.execute("UPDATE events SET body = x'fffe007b' WHERE seq = 3")
    raw.execute("UPDATE events SET body = CAST('[1, 2]' AS BLOB) WHERE seq = 7")  # not an object
    raw.commit()
    raw.close()
    with caplog.at_level(logging.WARNING):
        pub.start()
        pub.flush(10)
    stats = pub.stats().sinks
    assert stats[first.name]["rejected"] == 2 and stats[first.name]["delivered"] == 438
    assert stats[second.name]["rejected"] == 1 and stats[second.name]["delivered"] == 436
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 438
    assert sorted(r.getMessage().split(":")[1] for r in _warnings(caplog)) == [
        " row 3 (1 events) does not decode (JSONDecodeError",
        " row 7 (1 events) does not decode (ValueError",
    ]
    pub.close(5)
    raw = sqlite3.connect(tmp_path / "log" / "events.db")
    assert [r[0] for r in raw.execute("SELECT seq FROM rejected ORDER BY seq")] == [3, 7]
    raw.close()
    text = Metrics(lambda: WorkerStats("w", sinks=stats)).render().decode()
    assert f'emotion_stream_sink_rejected_events_total{{sink="{first.name}"}} 2.0' in text


def test_publisher_restarts_a_delivery_thread_that_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path / "log", FAST)
    sink = JsonlSink(str(tmp_path / "a.jsonl"))
    pub = Publisher(log, [sink], settings=FAST)
    real_read, calls = log.read, []

    def failing_read(after: int, limit: int) -> list[LogRow]:
        calls.append(after)
        if len(calls) <= 2:
            raise RuntimeError("a bug in the delivery loop")
        return real_read(after, limit)

    log.read = failing_read  # type: ignore[method-assign]
    for i in range(5):
        pub.put(_events(i))
    with caplog.at_level(logging.WARNING):
        pub.start()
        pub.flush(10)
    stats = pub.stats().sinks[sink.name]
    assert stats["restarts"] == 2 and stats["delivered"] == 5
    thread = next(t for t in threading.enumerate() if t.name == f"sink-{sink.name}")
    assert thread.is_alive()
    errors = _warnings(caplog)
    assert len(errors) == 2 and all(r.exc_info is None for r in errors)
    assert "delivery thread failed (RuntimeError: a bug in the delivery loop)" in errors[0].message
    pub.close(5)


class _FullDisk:
    """The log's SQLite connection, except that the first ``fail`` event inserts fail as on a
    full disk (a unit-level fake: filling a real disk is not a test)."""

    def __init__(self, db: sqlite3.Connection, fail: int) -> None:
        self.db, self.fail = db, fail

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.startswith("INSERT INTO events") and self.fail:
            self.fail -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_eventlog_disk_full_drop_oldest_one_line_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path)
    log.attach("slow")
    for i in range(10):
        log.append(_events(i))
    log._db = _FullDisk(log._db, fail=1)  # type: ignore[assignment]
    with caplog.at_level(logging.INFO):
        seq = log.append(_events(10))  # room made by dropping the oldest half
        for i in range(11, 14):
            log.append(_events(i))
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert "the disk is full (database or disk is full)" in warnings[0].getMessage()
    assert "drop_oldest" in warnings[0].getMessage()
    assert seq == 11 and log.dropped["slow"] == 5
    assert [r.seq for r in log.read(0, 100)] == list(range(6, 15))
    log._db = _FullDisk(log._db.db, fail=10**6)  # type: ignore[attr-defined,assignment]
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for i in range(3):
            assert log.append(_events(20 + i)) == 14  # nothing left to drop: not stored
    assert len(_warnings(caplog)) == 1 and log.dropped["slow"] == 5 + 9 + 3
    log._db = log._db.db  # type: ignore[attr-defined]
    log.close()


def test_eventlog_disk_full_block_waits_then_stores(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path, DeliverySettings(full_policy=LogFullPolicy.BLOCK))
    log.attach("slow")
    log.append(_events(0))
    log._db = _FullDisk(log._db, fail=2)  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING):
        assert log.append(_events(1)) == 2
    assert log.blocked_s > 0.5 and not log.dropped
    [warning] = _warnings(caplog)
    assert "blocking the pipeline" in warning.getMessage() and warning.exc_info is None
    log._db = log._db.db  # type: ignore[attr-defined]
    log.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_eventlog_folder_0700_and_files_0600(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    (old / "events.db").touch(mode=0o644)
    os.chmod(old / "events.db", 0o644)
    for folder in (tmp_path / "new" / "w1", old):
        log = EventLog(folder)
        log.attach("a")
        log.append(_events(0))
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["events.db", "events.db-shm", "events.db-wal", "lock"]
        assert _mode(folder) == 0o700
        assert {p.name: _mode(p) for p in folder.iterdir()} == dict.fromkeys(files, 0o600)
        log.close()
    assert _mode(tmp_path / "new") == 0o700  # a log root the log created


def test_eventlog_disk_full_empty_log_counts_the_new_events_for_every_sink(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = EventLog(tmp_path)
    log.attach("a")
    log.attach("b")
    log._db = _FullDisk(log._db, fail=10**6)  # type: ignore[assignment]
    with caplog.at_level(logging.INFO):
        log.append(_events(0))  # nothing stored to drop: the new events are the loss
        log.append(_events(1) + _events(2))
    assert log.dropped == {"a": 3, "b": 3}
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "nothing is left to drop" in warnings[0].getMessage()
    assert str(tmp_path) in warnings[0].getMessage()
    assert "(policy drop_oldest;" in warnings[0].getMessage()
    log._db = log._db.db  # type: ignore[attr-defined]
    log.close()
