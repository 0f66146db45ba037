"""Trust boundaries of the control plane (issue 17, items 1-3 and the sources parts of 7-8):
records that cannot poison a worker (fuzzed with Hypothesis), no secret leaving by a record,
only hosts the operator allows (at every connect), FFmpeg protocol whitelists, credentials that
go to their own host only, and the source limits. Listeners on loopback stand in for cameras
and for an attacker's host."""

from __future__ import annotations

import base64
import functools
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.control.group import GroupRunner, GroupSettings
from pipeline.control.metrics import Metrics
from pipeline.control.streams import (
    MAX_RECORD_BYTES,
    RECENT_REJECTIONS,
    REMEMBERED_KEYS,
    RejectedRecordError,
    RejectReason,
    StreamRecord,
    check_record,
)
from pipeline.core.config import DropPolicy, HostCredentials, KafkaSettings, SourceSettings
from pipeline.core.config_load import dump_settings, load_settings
from pipeline.core.credentials import entry_for, normalise_host_key, with_credentials
from pipeline.core.errors import ConfigError
from pipeline.core.hosts import HostPolicy
from pipeline.core.redact import redact_text
from pipeline.media.sources import SourceState, VideoSource, parse_source
from tests.servers import wait_until
from tests.test_control import FakeSpec
from tests.test_control import _runner as control_runner

# --------------------------------------------------------------------------- helpers


def _value(**kw: Any) -> bytes:
    doc = {"schema": "emotion-stream.stream/v1", "stream_id": "cam1", "url": "rtsp://cam/1", **kw}
    return json.dumps(doc).encode()


class FakeHost:
    """Records add/remove calls (the real Worker runs in test_scaleout)."""

    def __init__(self) -> None:
        self.running: dict[str, Any] = {}
        self.states: dict[str, dict[str, Any]] = {}

    def stream_states(self) -> dict[str, dict[str, Any]]:
        return {sid: self.states.get(sid, {"state": "running"}) for sid in self.running}

    def add_stream(self, spec: Any, source_settings: Any = None, session_id: Any = None) -> None:
        assert spec.stream_id not in self.running
        self.running[spec.stream_id] = spec

    def remove_stream(self, stream_id: str, reason: str = "removed", timeout: float = 30.0) -> None:
        self.running.pop(stream_id, None)

    def stream_ids(self) -> list[str]:
        return list(self.running)


def _runner(media_root: Path | None = None, **gs: Any) -> GroupRunner:
    r = control_runner(FakeHost(), media_root, **gs)  # type: ignore[arg-type]
    r._on_assigned({0})
    return r


# --------------------------------------------------------------------------- 1. poison


DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("cam1", _value(url="http://[x"), RejectReason.URL),
        ("cam1", _value(url="/media/a\u0000.mp4"), RejectReason.URL),
        ("cam1", _value(url="file:///media/a%00.mp4"), RejectReason.FILE),
        ("cam1", _value(url="rtsp://cam:99999/x"), RejectReason.URL),
        ("cam1", DEEP[:MAX_RECORD_BYTES], RejectReason.NOT_JSON),
        ("cam1", b'{"url": ' * 2000 + b"1" + b"}" * 2000, RejectReason.NOT_JSON),
        ("cam1", b"\xff\xfe" + _value(), RejectReason.NOT_JSON),
        (b"\xff\xfekey", _value(), RejectReason.KEY),
        ("k" * 1_000_000, _value(), RejectReason.KEY),
        ("cam1", _value(url="x" * (MAX_RECORD_BYTES + 1)), RejectReason.TOO_LARGE),
        ("cam1", _value(url=["http://a"]), RejectReason.INVALID),
        ("cam1", _value(every={"a": [1]}), RejectReason.INVALID),
        ("cam1", _value(schema="other/v9"), RejectReason.SCHEMA),
        ("cam2", _value(), RejectReason.KEY_MISMATCH),
        ("cam1", _value(url="gopher://h/x"), RejectReason.SCHEME),
        ("cam1", _value(url="http://h/leak/${HOME}/x.m3u8"), RejectReason.ENV_REFERENCE),
        ("cam1", _value(url="http://169.254.169.254/latest/x.m3u8"), RejectReason.HOST),
        ("cam1", _value(url="rtsp://[::ffff:127.0.0.1]:554/x"), RejectReason.HOST),
        ("cam1", _value(url="http:///nohost"), RejectReason.URL),
    ],
)
def test_check_record_hostile_input_rejected_with_reason(
    key: str | bytes, value: bytes, reason: RejectReason
) -> None:
    with pytest.raises(RejectedRecordError) as info:
        check_record(key, value, Path("/media"), HostPolicy())
    assert info.value.reason is reason
    assert len(str(info.value)) < 600 and "\n" not in str(info.value)


def test_check_record_valid_and_tombstone_accepted() -> None:
    sid, rec, url = check_record(b"cam1", _value(url="rtsp://10.1.2.3/x"), None, HostPolicy())
    assert (sid, url) == ("cam1", "rtsp://10.1.2.3/x") and rec is not None
    assert check_record(b"cam1", None, None, HostPolicy()) == ("cam1", None, None)


def test_runner_goes_on_after_poisoned_records_and_bounds_its_memory(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @dataclass
    class Rec:
        key: bytes | None
        value: bytes | None
        partition: int

    r = _runner()
    hostile = [
        Rec(b"a", _value(stream_id="a", url="http://[x"), 0),
        Rec(b"b", _value(stream_id="b", url="/m/a\u0000.mp4"), 0),
        Rec(b"c", DEEP[:60_000], 0),
        Rec(b"\xff", b"\xff", 0),
        Rec(b"ok", _value(stream_id="ok"), 0),
    ]
    with caplog.at_level(logging.WARNING, logger="pipeline.control.group"):
        r.apply(hostile)  # like the replay at start-up: one batch
        r.apply_one("K" * 1_000_000, b"x" * 1_000_000, 0)  # and live
    assert list(r.host.running) == ["ok"]  # type: ignore[attr-defined]
    lines = [m for m in caplog.messages if "rejected" in m]
    assert len(lines) == 5 and max(len(m) for m in lines) < 1200
    text = r.metrics.render().decode()
    assert 'emotion_stream_control_rejected_total{reason="url"} 2.0' in text
    assert 'emotion_stream_control_rejected_total{reason="key"} 2.0' in text
    assert 'emotion_stream_control_rejected_total{reason="not_json"} 1.0' in text
    assert 'emotion_stream_control_rejected_total{reason="host"} 0.0' in text
    for i in range(REMEMBERED_KEYS + 500):
        r.apply_one(f"k{i}", b"not json", 0)
    _ok, detail = r.ready()
    assert len(detail["rejected"]) == RECENT_REJECTIONS and len(r.rejected) == REMEMBERED_KEYS
    assert detail["rejected"][-1]["reason"] == "not_json"
    r.apply_one("k9999", _value(stream_id="k9999"), 0)  # a valid record clears its rejection
    assert "k9999" not in r.rejected and "k9999" in r.host.running  # type: ignore[attr-defined]


def test_runner_max_streams_waits_then_starts_when_a_slot_frees() -> None:
    r = _runner(max_streams=2)
    for sid in ("a", "b", "c"):
        r.apply_one(sid, _value(stream_id=sid), 0)
    assert sorted(r.host.running) == ["a", "b"]  # type: ignore[attr-defined]
    _ok, detail = r.ready()
    assert "group.max_streams=2" in detail["waiting"]["c"]
    assert "emotion_stream_waiting_streams 1.0" in r.metrics.render().decode()
    r.apply_one("a", None, 0)
    assert sorted(r.host.running) == ["b", "c"] and r.ready()[1]["waiting"] == {}  # type: ignore[attr-defined]
    r.apply_one("d", _value(stream_id="d"), 0)
    assert "d" in r.ready()[1]["waiting"]
    r.host.states["b"] = {"state": "failed", "reason": "host denied"}  # type: ignore[attr-defined]
    r._start_waiting()  # the run loop does this after each poll
    assert sorted(r.host.running) == ["b", "c", "d"]  # type: ignore[attr-defined]


# Hypothesis: >= 10,000 generated records at the decoder and validator, each accepted or
# rejected with a reason, none raising; the runner applying them never raises either.

_MEDIA = Path(tempfile.mkdtemp(prefix="es-fuzz-media-"))
_POLICY = HostPolicy(deny=("10.9.0.0/16", "*.evil.example"))
_FUZZ = settings(
    max_examples=260,  # x BATCH records
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
_WEIRD = [None, True, 0, -1, 2**70, 1e308, float("nan"), "", "\u0000", "\udcff", [], {}, [[[]]]]


def _random_json(rnd: Any, depth: int = 0) -> Any:
    """Random JSON built from a Hypothesis-seeded ``random.Random`` (cheap to generate)."""
    kind = rnd.randrange(8 if depth < 6 else 5)
    if kind < 5:
        return rnd.choice([*_WEIRD, rnd.random(), rnd.randrange(-9, 10**6), "x" * rnd.randrange(9)])
    if kind < 7:
        return [_random_json(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    keys = ["url", "every", "stream_id", "schema", "loop", chr(rnd.randrange(32, 0x2FF))]
    return {rnd.choice(keys): _random_json(rnd, depth + 1) for _ in range(rnd.randrange(5))}


_json = st.randoms(use_true_random=False).map(_random_json) | st.sampled_from(_WEIRD)
_hosts = st.sampled_from(
    [
        "cam", "10.0.0.7", "169.254.169.254", "127.0.0.1", "[::1]", "[fe80::1%25eth0]",
        "0.0.0.0", "[::ffff:127.0.0.1]", "x.evil.example", "10.9.1.1", "[x", "h:99999",
        "u:p@cam", "${HOME}", "a\u0000b", "ex ample", "", "%00", "xn--bcher-kva.example",
    ]
)  # fmt: skip
_urls = st.one_of(
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["rtsp", "http", "https", "rtmp", "file", "ftp", "concat", "RTSP", ""]),
        _hosts,
        st.text(max_size=30),
    ),
    st.text(max_size=60),
    st.builds("file://{}".format, st.text(max_size=40)),
    st.builds("../{}".format, st.text(max_size=20)),
)
_OPTIONAL = ("every", "loop", "session_id", "max_frames", "drop_policy", "realtime", "extra")


def _record(url: str, rnd: Any) -> dict[str, Any]:
    doc = {"schema": "emotion-stream.stream/v1", "stream_id": "cam1", "url": url}
    for key in rnd.sample(_OPTIONAL, rnd.randrange(3)):
        doc[key] = _random_json(rnd) if rnd.random() < 0.5 else rnd.choice([1, 5, "block", "s1"])
    return doc


_fields = st.builds(_record, _urls, st.randoms(use_true_random=False))
_deep = st.builds(
    lambda n, opener: (opener * n).encode(), st.integers(1, 70_000), st.sampled_from(["[", '{"a":'])
)
_huge = st.builds(
    lambda n, url: json.dumps({"stream_id": "cam1", "url": url * n}).encode(),
    st.integers(1, 40_000),
    st.sampled_from(["x", "http://h/", "\u00e9"]),
)


def _decide(key: str | bytes, value: bytes | None) -> None:
    try:
        check_record(key, value, _MEDIA, _POLICY)
    except RejectedRecordError as exc:
        assert exc.reason in RejectReason and str(exc)


#: Records per generated example (batches keep Hypothesis' own cost per record low).
BATCH = 10
#: Records each of the four fuzz tests checks: 4 x 2,600 >= 10,000 in all.
PER_TEST = 2600


def _fuzz(records: st.SearchStrategy[tuple[Any, Any]], through_runner: bool = False) -> int:
    """Run ``PER_TEST`` generated records at the decoder (and the runner); the count checked."""
    seen = [0]
    runner = _runner(_MEDIA)

    @_FUZZ
    @given(batch=st.lists(records, min_size=BATCH, max_size=BATCH))
    def run(batch: list[tuple[Any, Any]]) -> None:
        for key, value in batch:
            _decide(key, value)
            if through_runner:
                runner.apply_one(key, value, 0)  # never raises: the loop goes on
        seen[0] += len(batch)

    run()
    return seen[0]


def test_fuzz_random_bytes_accepted_or_rejected() -> None:
    keys = st.binary(max_size=40) | st.text(max_size=40)
    assert _fuzz(st.tuples(keys, st.binary(max_size=300))) >= PER_TEST


def test_fuzz_random_json_accepted_or_rejected() -> None:
    docs = _json.map(lambda d: json.dumps(d).encode())
    assert _fuzz(st.tuples(st.just(b"cam1"), docs)) >= PER_TEST


def test_fuzz_hostile_urls_accepted_or_rejected() -> None:
    docs = _fields.map(lambda d: json.dumps(d).encode())
    assert _fuzz(st.tuples(st.just("cam1"), docs), through_runner=True) >= PER_TEST


def test_fuzz_deep_and_huge_values_through_the_runner() -> None:
    keys = st.sampled_from([b"cam1", b"\xff", b"k" * 5000])
    assert _fuzz(st.tuples(keys, _deep | _huge), through_runner=True) >= PER_TEST


# --------------------------------------------------------------------------- 3. hosts


def test_host_policy_defaults_deny_loopback_link_local_unspecified_allow_private() -> None:
    p = HostPolicy()
    for host in ("127.0.0.1", "127.9.9.9", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "::"):
        assert "denied by default" in (p.check(host) or ""), host
    assert "127.0.0.1" in (p.check("::ffff:127.0.0.1") or "")
    for host in ("10.1.2.3", "192.168.1.20", "172.16.0.9", "fd12::5", "8.8.8.8"):
        assert p.check(host) is None, host


def test_host_policy_checks_every_resolved_address() -> None:
    answers = {"cam.lan": ["10.0.0.5"], "rebind.lan": ["10.0.0.6", "169.254.169.254"]}
    p = HostPolicy(resolver=lambda host, port: answers[host])
    assert p.check("cam.lan", 554) is None
    reason = p.check("rebind.lan", 554) or ""
    assert "rebind.lan (169.254.169.254)" in reason and "group.allow_hosts" in reason


def test_host_policy_allow_list_and_deny_list() -> None:
    resolve = {"cam.lan": ["127.0.0.1"], "other.lan": ["10.0.0.9"], "x.bad.lan": ["10.0.0.1"]}
    p = HostPolicy(
        allow=("127.0.0.1", "10.0.0.0/8"),
        deny=("10.0.0.9", "*.bad.lan"),
        resolver=lambda h, _p: resolve[h],
    )
    assert p.check("127.0.0.1") is None and p.check("cam.lan") is None  # the address allows
    assert "group.deny_hosts entry '10.0.0.9'" in (p.check("other.lan") or "")
    assert "*.bad.lan" in (p.check("x.bad.lan") or "")
    assert "not in group.allow_hosts" in (p.check("192.168.1.1") or "")
    by_name = HostPolicy(allow=("cam.lan",), resolver=lambda h, _p: resolve[h])
    assert "loopback" in (by_name.check("cam.lan") or "")  # a name never lifts loopback
    with pytest.raises(ValueError, match="neither an IP address"):
        HostPolicy(allow=("http://x/",))


def test_group_settings_reject_bad_host_entries_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"group\.allow_hosts"):
        load_settings(flags={"group": {"allow_hosts": ("10.0.0.0/33",)}}, environ={})
    s = load_settings(environ={"ES_GROUP_DENY_HOSTS": '["10.9.0.0/16"]'})
    assert s.group.deny_hosts == ("10.9.0.0/16",)
    s = load_settings(environ={"ES_GROUP_ALLOW_HOSTS": "127.0.0.1, *.cams.lan"})
    assert s.group.allow_hosts == ("127.0.0.1", "*.cams.lan")


def _serve(directory: Path) -> tuple[ThreadingHTTPServer, list[str]]:
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            seen.append(self.path)

    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def _make_ts(path: Path, frames: int = 25, size: tuple[int, int] = (64, 48)) -> Path:
    import av
    import numpy as np

    w, h = size
    with av.open(str(path), "w", format="mpegts") as out:
        st_ = out.add_stream("mpeg2video", rate=25)
        st_.width, st_.height, st_.pix_fmt = w, h, "yuv420p"  # type: ignore[attr-defined]
        for i in range(frames):
            img = np.full((h, w, 3), (i * 9) % 255, np.uint8)
            for p in st_.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):  # type: ignore[attr-defined]
                out.mux(p)
        for p in st_.encode():  # type: ignore[attr-defined]
            out.mux(p)
    return path


def _playlist(path: Path, *segments: str) -> None:
    body = "".join(f"#EXTINF:1.0,\n{s}\n" for s in segments)
    path.write_text(f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n{body}#EXT-X-ENDLIST\n")


@pytest.fixture
def hls(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on loopback with seg.ts (64x48, 25 frames) and ok.m3u8 naming it."""
    _make_ts(tmp_path / "seg.ts")
    _playlist(tmp_path / "ok.m3u8", "seg.ts")
    server, seen = _serve(tmp_path)
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path, seen
    server.shutdown()
    server.server_close()


def _live(**kw: Any) -> SourceSettings:
    # `block`: a slow consumer (a loaded machine) must not make frame counts vary.
    base = {"open_timeout_s": 3.0, "read_timeout_s": 3.0, "reconnect_initial_s": 0.1}
    return SourceSettings(**{**base, "drop_policy": DropPolicy.BLOCK, **kw})


def _until_done(src: VideoSource, timeout: float = 20.0) -> int:
    """Frames taken until the source ends, the queue drained after it ended included."""
    n, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline and not src.ended:
        n += src.get(timeout=0.05) is not None
    while src.get(timeout=0.05) is not None:
        n += 1
    src.stop()
    return n


@pytest.mark.integration
def test_source_denied_host_fails_with_reason_and_never_connects(
    hls: tuple[str, Path, list[str]],
) -> None:
    base, _dir, seen = hls
    spec = parse_source(f"{base}/ok.m3u8", "cam", hosts=HostPolicy(), env_credentials=False)
    src = VideoSource(spec, _live())
    src.start()
    assert _until_done(src) == 0
    st_ = src.stats()
    assert st_.state is SourceState.FAILED and seen == []
    assert "127.0.0.1" in (st_.reason or "") and "group.allow_hosts" in (st_.reason or "")
    allowed = parse_source(
        f"{base}/ok.m3u8", "cam", hosts=HostPolicy(allow=("127.0.0.1",)), env_credentials=False
    )
    ok = VideoSource(allowed, _live(max_frames=10))
    ok.start()
    assert _until_done(ok) == 10 and ok.error is None  # allowed explicitly: it runs


@pytest.mark.integration
def test_source_host_checked_again_at_reconnect(hls: tuple[str, Path, list[str]]) -> None:
    """The name resolves to an allowed address first, then (DNS rebinding) to the metadata
    address: the reconnect is refused, the stream fails with the reason."""
    base, _dir, _seen = hls
    calls: list[str] = []

    def resolver(host: str, port: int | None) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["169.254.169.254"]

    port = base.rsplit(":", 1)[1]
    policy = HostPolicy(allow=("127.0.0.1",), resolver=resolver)
    spec = parse_source(f"http://localhost:{port}/ok.m3u8", "cam", hosts=policy)
    src = VideoSource(spec, _live())
    src.start()
    assert _until_done(src) == 25  # the whole playlist, then a reconnect that is refused
    st_ = src.stats()
    assert st_.state is SourceState.FAILED and len(calls) == 2
    assert "localhost (169.254.169.254)" in (st_.reason or "")
    assert "group.allow_hosts" in (st_.reason or "")


@pytest.mark.integration
def test_source_protocol_whitelist_refuses_other_protocols(
    hls: tuple[str, Path, list[str]], tmp_path: Path
) -> None:
    """An HLS playlist naming a file: segment, and an HTTP answer that is an SDP (which would
    open RTP/UDP sockets): both refused. Without the whitelist FFmpeg opens the SDP (checked
    below, so that this test fails if the whitelist is dropped)."""
    import av

    base, folder, seen = hls
    private = _make_ts(tmp_path.parent / f"private-{tmp_path.name}.ts")
    _playlist(folder / "evil.m3u8", f"file://{private}")
    sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    (folder / "cam.sdp").write_text(sdp + "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 MP2T/90000\r\n")
    policy = HostPolicy(allow=("127.0.0.1",))
    for name in ("evil.m3u8", "cam.sdp"):
        spec = parse_source(f"{base}/{name}", "cam", hosts=policy)
        src = VideoSource(spec, _live(reconnect_attempts=0))
        src.start()
        assert _until_done(src) == 0, name
        assert src.stats().state is SourceState.FAILED, name
    assert f"/{private.name}" not in " ".join(seen)
    with av.open(f"{base}/cam.sdp", timeout=(3, 3)) as c:  # FFmpeg's own defaults allow it
        assert c.format.name == "sdp"
    with pytest.raises(av.error.InvalidDataError):
        av.open(f"{base}/cam.sdp", options={"protocol_whitelist": "http,https,tcp,tls,crypto"})


class _Redirect(BaseHTTPRequestHandler):
    """/start.m3u8 redirects to /target.m3u8 on the same server; records the paths asked."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(302 if self.path == "/start.m3u8" else 404)
        self.send_header("Location", "/target.m3u8")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.integration
def test_source_from_control_topic_follows_no_redirect() -> None:
    """A redirect's target host could not be checked: a control-topic stream does not follow
    it; the operator's own source (no host policy) does."""
    seen: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("R", (_Redirect,), {"seen": seen}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/start.m3u8"
    try:
        for hosts, want in ((HostPolicy(allow=("127.0.0.1",)), ["/start.m3u8"]), (None, None)):
            seen.clear()
            src = VideoSource(parse_source(url, "cam", hosts=hosts), _live(reconnect_attempts=0))
            src.start()
            _until_done(src)
            assert seen == (want or ["/start.m3u8", "/target.m3u8"])
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- 2. credentials


def test_credentials_keys_and_matching() -> None:
    assert normalise_host_key("CAM1.lan:554") == "cam1.lan:554"
    assert normalise_host_key("[FE80::1]:8554") == "[fe80::1]:8554"
    for bad in ("http://cam", "cam:x", "cam:0", "u@cam", ""):
        with pytest.raises(ValueError, match="credentials key"):
            normalise_host_key(bad)
    table = {
        "cam1.lan:554": HostCredentials(username="a", password_env="P_A"),
        "cam1.lan": HostCredentials(username="b", password_env="P_B"),
    }
    assert entry_for("rtsp://CAM1.lan/x", table)[0] == "cam1.lan:554"  # type: ignore[index]
    assert entry_for("rtsp://cam1.lan:8554/x", table)[0] == "cam1.lan"  # type: ignore[index]
    assert entry_for("rtsp://cam2.lan/x", table) is None
    env = {"P_A": "p@ss:w/rd"}
    assert (
        with_credentials("rtsp://cam1.lan/x", table, env) == "rtsp://a:p%40ss%3Aw%2Frd@cam1.lan/x"
    )
    assert with_credentials("rtsp://me:mine@cam1.lan/x", table, env) == "rtsp://me:mine@cam1.lan/x"
    assert with_credentials("rtsp://cam9/x", table, env) == "rtsp://cam9/x"
    with pytest.raises(ConfigError, match="P_B is not set") as info:
        with_credentials("rtsp://cam1.lan:8554/x", table, env)
    assert "p@ss" not in str(info.value)


def test_credentials_from_yaml_and_env(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"source:\n  credentials:\n    'Cam1.lan:554': {{username: viewer, password_file: {pw}}}\n"
    )
    env = {"ES_SOURCE_CREDENTIALS": '{"cam2:80": {"username": "u", "password_env": "X"}}'}
    s = load_settings(cfg, environ=env)
    table = s.source.credentials
    assert sorted(table) == ["cam1.lan:554", "cam2:80"]
    assert with_credentials("rtsp://cam1.lan/x", table) == "rtsp://viewer:from-file@cam1.lan/x"
    with pytest.raises(ConfigError, match="password_env or password_file"):
        load_settings(
            flags={"source": {"credentials": {"h": {"username": "u", "password_env": "A",
                                                     "password_file": "/x"}}}},
            environ={},
        )  # fmt: skip


class _Challenge(BaseHTTPRequestHandler):
    """Answers 401 with a Basic challenge; records the Authorization headers it receives."""

    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="cam"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _challenger() -> tuple[ThreadingHTTPServer, list[str | None]]:
    seen: list[str | None] = []
    handler = type("H", (_Challenge,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


class _FakeRtsp:
    """A loopback RTSP listener (an attacker's host): answers every request 401 Basic and
    records the Authorization headers it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.auth: list[str | None] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    headers = dict(
                        line.split(": ", 1)
                        for line in head.decode().split("\r\n")[1:]
                        if ": " in line
                    )
                    self.auth.append(headers.get("Authorization"))
                    conn.sendall(
                        f"RTSP/1.0 401 Unauthorized\r\nCSeq: {headers.get('CSeq', '1')}\r\n"
                        'WWW-Authenticate: Basic realm="cam"\r\n\r\n'.encode()
                    )

    def close(self) -> None:
        self.sock.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.integration
def test_credentials_sent_to_their_host_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts on loopback: the one with an entry gets its credentials, the other none;
    a control-topic stream never gets the ES_RTSP_* pair."""
    monkeypatch.setenv("CAM_A_PASSWORD", "secret-a")
    monkeypatch.setenv("ES_RTSP_USERNAME", "shared")
    monkeypatch.setenv("ES_RTSP_PASSWORD", "shared-secret")
    a, seen_a = _challenger()
    b, seen_b = _challenger()
    rtsp = _FakeRtsp()
    port_a = a.server_address[1]
    creds = {f"127.0.0.1:{port_a}": {"username": "viewer", "password_env": "CAM_A_PASSWORD"}}
    settings = _live(reconnect_attempts=0, credentials=creds)
    policy = HostPolicy(allow=("127.0.0.1",))
    try:
        urls = (
            f"http://127.0.0.1:{port_a}/live.m3u8",
            f"http://127.0.0.1:{b.server_address[1]}/live.m3u8",
            f"rtsp://127.0.0.1:{rtsp.port}/cam",
        )
        for url in urls:
            spec = parse_source(url, "cam", hosts=policy, env_credentials=False)
            src = VideoSource(spec, settings)
            src.start()
            _until_done(src)
            assert "secret" not in (src.stats().reason or "") and "unauthorized" in (
                src.stats().reason or ""
            )
        assert _basic("viewer", "secret-a") in seen_a
        assert seen_b and not any(seen_b)
        assert rtsp.auth and not any(rtsp.auth)
    finally:
        for s in (a, b):
            s.shutdown()
            s.server_close()
        rtsp.close()


# --------------------------------------------------------------------------- 7, 8. shown, limits


def test_redact_text_masks_userinfo_and_token_values() -> None:
    text = 'x {"url": "rtsp://admin:hunter2@cam/1?token=abc&x=1"} http://h/p?sig=zz#access_token=t'
    out = redact_text(text)
    for secret in ("hunter2", "abc", "zz"):
        assert secret not in out
    assert "x=1" in out and "cam/1" in out


def test_config_show_masks_url_passwords_and_reads_back(tmp_path: Path) -> None:
    env = {"ES_REDIS_URL": "redis://:hunter2@10.0.0.5:6379/0"}
    text = dump_settings(load_settings(environ=env))
    assert "hunter2" not in text and "redis://***:***@10.0.0.5:6379/0" in text
    shown = tmp_path / "shown.yaml"
    shown.write_text(text)
    assert load_settings(shown, environ=env).redis.url == env["ES_REDIS_URL"]
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"ES_KAFKA_SASL_PASSWORD": '["hunter2"]'})
    assert "hunter2" not in str(info.value)


def test_source_larger_than_max_pixels_fails_with_reason(tmp_path: Path) -> None:
    clip = _make_ts(tmp_path / "big.ts", frames=25, size=(64, 48))
    src = VideoSource(parse_source(str(clip)), SourceSettings(max_pixels=64 * 48 - 1))
    src.start()
    assert _until_done(src) == 0
    assert src.stats().state is SourceState.FAILED
    assert "64x48" in (src.stats().reason or "") and "source.max_pixels" in (
        src.stats().reason or ""
    )
    ok = VideoSource(parse_source(str(clip)), SourceSettings(max_pixels=64 * 48))
    ok.start()
    assert _until_done(ok) == 25


def test_record_source_settings_keep_the_workers_credentials() -> None:
    base = SourceSettings(credentials={"cam:554": {"username": "u", "password_env": "P"}})
    rec = StreamRecord(stream_id="cam", url="rtsp://cam/x", every=3)
    s = rec.source_settings(base)
    assert s.every == 3 and s.credentials == base.credentials


# --------------------------------------------------------------------------- real broker


@pytest.mark.integration
def test_poisoned_topic_replayed_and_live_never_stops_the_group(kafka_broker: Any) -> None:
    """Hostile records written straight to the topic (what any writer of it can do), before
    the runner joins (the replay at start-up) and while it runs: each is rejected with its
    reason, valid streams start, the loop keeps turning; `streams list` shows the rejections."""
    import os
    import subprocess
    import sys

    from kafka import KafkaProducer

    from pipeline.control.streams import ensure_control_topic

    topic = f"ctl-poison-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    kafka = KafkaSettings(bootstrap=kafka_broker.bootstrap, control_topic=topic)
    ensure_control_topic(kafka, 2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, max_request_size=2**20)
    poison = [
        (b"a", _value(stream_id="a", url="http://[x")),
        (b"b", _value(stream_id="b", url="/m/a\u0000.mp4")),
        (b"c", DEEP[:60_000]),
        (b"\xff\xfe", b"\xff"),
        (b"d", _value(stream_id="d", url="http://127.0.0.1:9/leak/${HOME}/x.m3u8")),
        (b"ok1", _value(stream_id="ok1", url="rtsp://10.0.0.7/x")),
    ]
    for key, value in poison:
        producer.send(topic, key=key, value=value)
    producer.flush()
    host = FakeHost()
    runner = GroupRunner(
        host,
        kafka,
        GroupSettings(group=f"g-{topic}", session_timeout_ms=3000, heartbeat_interval_ms=500),
        "w-poison",
        None,
        SourceSettings(),
        Metrics(),
        make_spec=FakeSpec,
    )
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: "ok1" in host.running, 30, lambda: f"ok1 to start ({host.running})")
        producer.send(topic, key=b"e", value=_value(stream_id="e", url="file:///x%00.mp4"))
        producer.send(topic, key=b"ok2", value=_value(stream_id="ok2", url="rtsp://cam/2"))
        producer.flush()
        wait_until(lambda: "ok2" in host.running, 20, lambda: f"ok2 to start ({host.running})")
        assert thread.is_alive() and sorted(host.running) == ["ok1", "ok2"]
        ok, detail = runner.ready()
        reasons = {r["key"]: r["reason"] for r in detail["rejected"]}
        assert ok and reasons == {
            "a": "url",
            "b": "url",
            "c": "not_json",
            "\\xff\\xfe": "key",
            "d": "env_reference",
            "e": "file",
        }
    finally:
        stop.set()
        thread.join(20)
        producer.close()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "streams", "list", "--kafka", kafka_broker.bootstrap,
         "--control-topic", topic],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ok1" in r.stdout and "rejected records" in r.stdout and "env_reference" in r.stdout
