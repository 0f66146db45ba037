"""Scale-out on loopback: three ``emotion-stream worker`` processes in one consumer group, a
real Kafka-protocol broker and redis-server, six looping file streams added at run time.

Checks: every stream produces events from exactly one worker; after ``kill -9`` of the
busiest worker all six produce events again within HANDOVER_BOUND_S, none from the killed
worker and none from two workers at once once the hand-over is done; ``streams remove``
stops a stream; a record naming a file outside ``--media-root`` is refused with a logged
reason; after the kill no event id is sent twice and an id repeating an earlier one is a
frame the victim sent, replayed by its successor (healthy streams are not restarted); SIGTERM stops the survivors cleanly. Figures are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Group timing for the test (the defaults are 10000 / 1000): a crash hand-over is about
#: the session timeout plus one cooperative rebalance plus opening the stream.
SESSION_TIMEOUT_MS = 3000
HEARTBEAT_MS = 500
HANDOVER_BOUND_S = 15.0
STREAMS = [f"cam{i}" for i in range(6)]


@dataclass
class Seen:
    """Events read back from the events topic, with the wall time each arrived."""

    rows: list[tuple[float, str, str, str, str]] = field(
        default_factory=list
    )  # t, stream, worker, type, id
    lock: threading.Lock = field(default_factory=threading.Lock)

    def since(self, t0: float) -> list[tuple[float, str, str, str, str]]:
        with self.lock:
            return [r for r in self.rows if r[0] >= t0]

    def owners(self, t0: float, kind: str = "face") -> dict[str, set[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for _t, sid, wid, typ, _id in self.since(t0):
            if typ == kind:
                out[sid].add(wid)
        return out


def _follow(bootstrap: str, topic: str, seen: Seen, stop: threading.Event) -> None:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        parts: set[int] = set()
        while not stop.is_set() and not parts:
            parts = c.partitions_for_topic(topic) or set()
            if not parts:
                c.poll(timeout_ms=200)  # refresh metadata
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        while not stop.is_set():
            for recs in c.poll(timeout_ms=100).values():
                now = time.monotonic()
                for r in recs:
                    ev = json.loads(r.value)
                    row = (
                        now,
                        ev.get("stream_id", ""),
                        ev.get("worker_id", ""),
                        ev.get("type", ""),
                        ev.get("event_id", ""),
                    )
                    with seen.lock:
                        seen.rows.append(row)
    finally:
        c.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Workers:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, wid: str, args: list[str]) -> None:
        log = (self.tmp / f"{wid}.log").open("wb")
        cmd = [sys.executable, "-m", "pipeline", "worker", "--worker-id", wid, *args]
        self.procs[wid] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def log(self, wid: str) -> str:
        return (self.tmp / f"{wid}.log").read_text(errors="replace")

    def alive(self) -> list[str]:
        return [w for w, p in self.procs.items() if p.poll() is None]

    def join_times(self) -> dict[str, float]:
        out = {}
        for w in self.procs:
            m = re.search(r"joined group in ([0-9.]+) s", self.log(w))
            if m:
                out[w] = float(m.group(1))
        return out

    def ready(self, wid: str) -> dict[str, Any] | None:
        """The worker's /readyz JSON, or None while it has no HTTP port yet."""
        m = re.search(r"/metrics on port (\d+)", self.log(wid))
        if not m:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/readyz", timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except OSError:
            return None

    def settled(self, partitions: int) -> bool:
        """All workers joined and the control partitions are split among them, once each."""
        got = [self.ready(w) for w in self.alive()]
        if not all(r and r["ok"] for r in got):
            return False
        owned = [p for r in got if r for p in r["partitions"]]
        return sorted(owned) == list(range(partitions))

    def port(self, wid: str) -> int:
        m = re.search(r"/metrics on port (\d+)", self.log(wid))
        assert m, f"{wid}: no metrics port in its log"
        return int(m.group(1))

    def dead_report(self) -> str:
        return "; ".join(
            f"{w} exited {p.returncode}: {self.log(w)[-600:]}"
            for w, p in self.procs.items()
            if p.poll() is not None
        )

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    w = Workers(tmp_path)
    yield w
    w.stop_all()


def test_three_workers_share_six_streams_and_survive_kill_9(
    kafka_broker: Any,
    redis_server: Any,
    sample_clip: Path,
    models_dir: Path,
    workers: Workers,
    tmp_path: Path,
) -> None:
    t_start = time.monotonic()
    tag = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
    control, events, group = f"ctl-{tag}", f"events-{tag}", f"g-{tag}"
    kafka = [
        "--kafka",
        kafka_broker.bootstrap,
        "--control-topic",
        control,
        "--control-partitions",
        "12",
    ]
    media = sample_clip.parent
    common = [
        *kafka, "--topic", events, "--group", group, "--redis", redis_server.url,
        "--media-root", str(media), "--models", str(models_dir), "--metrics-port", "0",
        "--session-timeout-ms", str(SESSION_TIMEOUT_MS), "--heartbeat-ms", str(HEARTBEAT_MS),
        "--max-poll-interval-ms", "10000", "--backend", "onnxruntime", "--session", "scale",
    ]  # fmt: skip
    for i in range(3):
        workers.start(f"w{i}", common)
    for sid in STREAMS:
        r = _cli(
            "streams",
            "add",
            sid,
            f"file://{sample_clip}",
            "--loop",
            "--realtime",
            "--every",
            "5",
            *kafka,
        )
        assert r.returncode == 0, r.stderr
    seen, stop = Seen(), threading.Event()
    follower = threading.Thread(
        target=_follow, args=(kafka_broker.bootstrap, events, seen, stop), daemon=True
    )
    follower.start()
    try:
        _run_scenario(workers, seen, kafka, redis_server.url, t_start)
    finally:
        stop.set()
        follower.join(10)


def _assert_repeats_are_replays(seen: Seen, t_kill: float, victim: str) -> int:
    """Event ids are deterministic, so a stream restarted on a survivor after ``kill -9``
    repeats ids the victim already sent (the same frames again): consumers de-duplicate by
    id. What must hold: after the kill no id is sent by two workers (no stream runs twice), a
    worker re-sends an id only as an at-least-once re-delivery (a batch whose ack was lost,
    a small share), and every id that repeats one sent before the kill was sent by the victim
    (healthy streams are not restarted by the hand-over). Returns how many ids were replayed."""
    before: dict[str, set[str]] = defaultdict(set)
    after: dict[str, list[str]] = defaultdict(list)
    for t, _sid, wid, typ, eid in seen.since(0):
        if typ == "face":
            # the victim sent everything before it died, even what is read after the kill
            if t < t_kill or wid == victim:
                before[eid].add(wid)
            else:
                after[eid].append(wid)
    twice = [e for e, w in after.items() if len(w) > 1]
    two_workers = [(e, sorted(set(after[e]))) for e in twice if len(set(after[e])) > 1]
    assert not two_workers, f"ids sent by two workers after the kill: {two_workers[:3]}"
    assert len(twice) <= max(10, len(after) // 20), f"{len(twice)} re-sent of {len(after)}"
    if twice:
        print(f"{len(twice)} of {len(after)} ids re-delivered by their own worker (at least once)")
    replayed = [e for e in after if e in before]
    bad = [(e, sorted(before[e])) for e in replayed if victim not in before[e]]
    assert not bad, f"ids replayed from a healthy stream (it restarted): {bad[:3]}"
    return len(replayed)


def _run_scenario(
    workers: Workers, seen: Seen, kafka: list[str], redis_url: str, t_start: float
) -> None:
    # 1. all six streams produce events, each from exactly one worker
    wait_until(
        lambda: workers.settled(12) or len(workers.alive()) < 3,
        90,
        lambda: f"the three workers to join and split the partitions; {workers.dead_report()}",
    )
    t_phase = time.monotonic() + 0.5  # events still in flight from before the last rebalance
    wait_until(
        lambda: set(seen.owners(t_phase)) >= set(STREAMS) or len(workers.alive()) < 3,
        90,
        lambda: (
            f"events from all of {STREAMS}; have {dict(seen.owners(t_phase))}; {workers.dead_report()}"
        ),
    )
    assert len(workers.alive()) == 3, workers.dead_report()
    first_events_s = time.monotonic() - t_start
    t_settled = time.monotonic()
    time.sleep(2.0)  # a window of steady state to judge single ownership
    owners = seen.owners(t_settled)
    assert all(len(owners[s]) == 1 for s in STREAMS), f"a stream on two workers: {dict(owners)}"
    per_worker = Counter(next(iter(owners[s])) for s in STREAMS)
    print(
        f"\nfirst events of all 6 streams {first_events_s:.1f} s after start; join times {workers.join_times()}"
    )
    print(f"streams per worker: {dict(per_worker)}")

    # health and metrics of each worker name exactly the streams it runs
    for w in workers.alive():
        base = f"http://127.0.0.1:{workers.port(w)}"
        with urllib.request.urlopen(base + "/readyz", timeout=5) as resp:
            ready = json.loads(resp.read())
        mine = sorted(s for s in STREAMS if owners[s] == {w})
        assert ready["ok"] and ready["streams"] == mine, (w, ready)
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for sid in mine:
            assert f'emotion_stream_stream_frames_processed_total{{stream="{sid}"}}' in text, text[
                :2000
            ]
        assert f"emotion_stream_assigned_streams {float(len(mine))}" in text

    # 2. kill -9 the busiest worker; its streams restart on the survivors
    victim = per_worker.most_common(1)[0][0]
    moved = [s for s in STREAMS if owners[s] == {victim}]
    t_kill = time.monotonic()
    os.kill(workers.procs[victim].pid, signal.SIGKILL)
    workers.procs[victim].wait(10)
    first_after: dict[str, float] = {}

    def moved_all() -> bool:
        for t, sid, wid, typ, _ in seen.since(t_kill):
            if typ == "face" and wid != victim and sid in moved and sid not in first_after:
                first_after[sid] = t - t_kill
        return set(first_after) == set(moved)

    wait_until(
        moved_all,
        60,
        lambda: (
            f"{moved} to move off {victim}; moved so far {first_after}; {workers.dead_report()}"
        ),
    )
    handover = max(first_after.values())
    print(
        f"kill -9 {victim} ({len(moved)} streams): per-stream hand-over {first_after}, max {handover:.2f} s"
    )
    assert handover < HANDOVER_BOUND_S
    t_done = time.monotonic()
    time.sleep(3.0)
    after = seen.owners(t_done)
    assert set(after) >= set(STREAMS), (
        f"not all streams produce events after the hand-over: {dict(after)}"
    )
    assert all(len(after[s]) == 1 for s in STREAMS), (
        f"a stream on two workers after the hand-over: {dict(after)}"
    )
    late = [r for r in seen.since(t_kill + 1.0) if r[2] == victim]
    assert not late, f"{len(late)} events from the killed worker after the kill"
    repeats = _assert_repeats_are_replays(seen, t_kill, victim)
    print(f"event ids repeated by the hand-over (replayed frames of the victim): {repeats}")

    # Redis aggregates: every stream's events were applied, whichever worker sent them
    import redis

    hwm = redis.Redis.from_url(redis_url).hgetall("es:session:scale:hwm")
    assert {k.decode() for k in hwm} >= set(STREAMS), hwm

    # 3. streams remove stops a stream; a record outside the media root is refused
    gone = STREAMS[0]
    t_rm = time.monotonic()
    assert _cli("streams", "remove", gone, *kafka).returncode == 0
    r = _cli("streams", "add", "evil", "file:///etc/passwd", "--loop", *kafka)
    assert r.returncode == 0, r.stderr  # the CLI cannot know a worker's media root
    wait_until(
        lambda: any(r[1] == gone and r[3] == "stream_end" for r in seen.since(t_rm)),
        20,
        lambda: f"stream_end of {gone} after streams remove",
    )
    wait_until(
        lambda: any("outside the media root" in workers.log(w) for w in workers.alive()),
        20,
        lambda: "a worker to log the refused record",
    )
    t_quiet = time.monotonic() + 0.5
    time.sleep(2.0)
    assert not [r for r in seen.since(t_quiet) if r[1] in (gone, "evil")], (
        "events after remove / from a refused record"
    )

    # 4. graceful stop: SIGTERM, leave the group, flush, exit 0
    t_term = time.monotonic()
    for w in workers.alive():
        workers.procs[w].send_signal(signal.SIGTERM)
    for w, p in workers.procs.items():
        if w != victim:
            assert p.wait(40) == 0, workers.log(w)[-2000:]
    print(
        f"SIGTERM to exit: {time.monotonic() - t_term:.2f} s; test total {time.monotonic() - t_start:.1f} s"
    )
