"""The worker's durable event log: cursors, trimming, replay after reopen, full policies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pipeline.core.config import DeliverySettings, LogFullPolicy
from pipeline.core.errors import ConfigError
from pipeline.runtime.eventlog import EventLog, open_log


def _events(i: int, n: int = 2) -> list[dict[str, object]]:
    return [{"event_id": f"e{i}-{k}", "stream_id": "s", "pad": "x" * 100} for k in range(n)]


def test_eventlog_commit_trims_only_below_every_cursor(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.attach("a")
    log.attach("b")
    seqs = [log.append(_events(i)) for i in range(4)]
    log.commit("a", seqs[-1])
    assert [r.seq for r in log.read(0, 10)] == seqs
    assert log.pending("a") == (0, 0.0)
    assert log.pending("b")[0] == 8
    log.commit("b", seqs[1])
    assert [r.seq for r in log.read(0, 10)] == seqs[2:]
    log.close()


def test_eventlog_reopen_keeps_cursors_and_undelivered_rows(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.attach("kafka")
    seqs = [log.append(_events(i)) for i in range(3)]
    log.commit("kafka", seqs[0])
    log.close()
    again = EventLog(tmp_path)
    assert again.cursor("kafka") == seqs[0]
    rows = again.read(again.cursor("kafka"), 10)
    assert [e["event_id"] for r in rows for e in r.events] == ["e1-0", "e1-1", "e2-0", "e2-1"]
    again.close()


def test_eventlog_seq_keeps_growing_after_the_log_empties(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.attach("a")
    first = log.append(_events(0))
    log.commit("a", first)
    log.close()
    again = EventLog(tmp_path)
    assert again.append(_events(1)) == first + 1
    assert again.read(again.cursor("a"), 10)[0].events[0]["event_id"] == "e1-0"
    again.close()


def test_eventlog_drop_oldest_counts_per_sink(tmp_path: Path) -> None:
    settings = DeliverySettings(max_bytes=1 << 16)
    log = EventLog(tmp_path, settings)
    log.attach("slow")
    for i in range(400):  # ~150 bytes per event, 2 per row: well past 64 KiB
        log.append(_events(i))
    dropped = log.dropped["slow"]
    assert dropped > 0
    assert log.size_bytes <= settings.max_bytes
    assert log.pending("slow")[0] + dropped == 800
    log.close()


def test_eventlog_block_policy_waits_for_the_sink(tmp_path: Path) -> None:
    settings = DeliverySettings(max_bytes=1 << 16, full_policy=LogFullPolicy.BLOCK)
    log = EventLog(tmp_path, settings)
    log.attach("slow")
    while log.size_bytes < settings.max_bytes - 1000:
        log.append(_events(0))
    done = threading.Event()
    threading.Thread(target=lambda: (log.append(_events(1, 10)), done.set()), daemon=True).start()
    assert not done.wait(0.5)
    log.commit("slow", log.last_seq)
    assert done.wait(5)
    assert log.blocked_s > 0.4 and not log.dropped
    log.close()


def test_eventlog_second_opener_refused(tmp_path: Path) -> None:
    log = open_log(tmp_path, "w1", DeliverySettings())
    with pytest.raises(ConfigError, match="in use by another process"):
        open_log(tmp_path, "w1", DeliverySettings())
    log.close()
    open_log(tmp_path, "w1", DeliverySettings()).close()


def test_eventlog_pending_age_grows(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.attach("a")
    log.append(_events(0))
    time.sleep(0.05)
    assert log.pending("a")[1] >= 0.05
    log.close()


def test_eventlog_forget_lets_the_log_trim_and_survives_reopen(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.attach("kafka:old")
    log.attach("jsonl")
    seqs = [log.append(_events(i)) for i in range(3)]
    log.commit("jsonl", seqs[-1])
    assert log.read(0, 10) and log.sinks() == ["jsonl", "kafka:old"]
    assert log.forget("kafka:old") == 6  # its undelivered events
    assert log.read(0, 10) == [] and log.size_bytes == 0  # nothing holds the rows any more
    with pytest.raises(ConfigError, match=r"no sink 'nope' .*sinks: jsonl"):
        log.forget("nope")
    log.close()
    again = EventLog(tmp_path)
    assert "kafka:old" not in again.sinks()
    again.close()


def test_publisher_warns_about_a_sink_it_no_longer_has(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline.runtime.publisher import Publisher
    from pipeline.sinks.jsonl import JsonlSink

    log = EventLog(tmp_path / "w0")
    log.attach("redis")
    log.append(_events(0))
    with caplog.at_level("WARNING"):
        pub = Publisher(log, [JsonlSink(tmp_path / "e.jsonl")])
    text = caplog.text
    assert "2 undelivered events" in text and "sink redis" in text
    assert "eventlog forget redis --worker-id w0" in text
    pub.close()
    log.close()


def test_cli_eventlog_list_and_forget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pipeline.cli.main import main

    log = open_log(tmp_path, "w7", DeliverySettings())
    log.attach("kafka:events")
    log.append(_events(0, 3))
    log.close()
    where = ["--log-dir", str(tmp_path), "--worker-id", "w7"]
    assert main(["eventlog", "list", "--json", *where]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(s["sink"], s["pending"]) for s in listed["sinks"]] == [("kafka:events", 3)]
    assert main(["eventlog", "forget", "kafka:events", *where]) == 0
    assert "3 events not delivered" in capsys.readouterr().out
    assert main(["eventlog", "forget", "kafka:events", *where]) == 2
    assert "no sink 'kafka:events'" in capsys.readouterr().err
    # a mistyped worker id is refused, and no empty log is created for it
    assert main(["eventlog", "list", "--log-dir", str(tmp_path), "--worker-id", "w8"]) == 2
    err = capsys.readouterr().err
    assert "no event log for worker 'w8'" in err and "logs there: w7" in err
    assert not (tmp_path / "w8").exists()


def test_eventlog_drop_oldest_moves_only_lagging_cursors_and_counts_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sink ahead of the cut loses nothing and keeps its cursor; a sink behind it loses
    exactly the events between its cursor and the cut, is told in one line, and its cursor
    moves to the cut, so what it reads next follows on with no gap."""
    settings = DeliverySettings(max_bytes=1 << 16)
    log = EventLog(tmp_path, settings)
    log.attach("fast")  # first in the cursor table: a sink the cut skips must not end the loop
    log.attach("slow")
    seqs = [log.append(_events(i)) for i in range(150)]
    log.commit("fast", seqs[-1])  # fast has everything; the rows stay for slow
    with caplog.at_level("WARNING", logger="pipeline.runtime.eventlog"):
        for i in range(150, 400):
            log.append(_events(i))
            log.commit("fast", log.last_seq)
    assert "fast" not in log.dropped and log.pending("fast")[0] == 0
    dropped = log.dropped["slow"]
    rows = log.read(log.cursor("slow"), 1000)
    assert rows[0].seq == log.cursor("slow") + 1  # no gap after the moved cursor
    assert sum(len(r.events) for r in rows) == log.pending("slow")[0] == 800 - dropped
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert lines and all("of sink slow (policy drop_oldest)" in m for m in lines)
    told = sum(int(m.split("dropped ")[1].split()[0]) for m in lines)
    assert told == dropped
    size = log.size_bytes
    assert 0 < size <= settings.max_bytes
    log.close()
    again = EventLog(tmp_path, settings)
    assert again.size_bytes == size  # the running byte count matches what is stored
    assert again.cursor("slow") == rows[0].seq - 1 and again.cursor("nobody") == 0
    again.close()
