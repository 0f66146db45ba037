"""Sources: URL redaction, source parsing, PyAV decoding of files and RTSP, bad input, reconnects."""

from __future__ import annotations

import hashlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.config import DetectorSettings, DropPolicy, SourceSettings
from pipeline.core.errors import ConfigError, SourceError
from pipeline.core.redact import redact_url
from pipeline.core.types import Frame
from pipeline.media.sources import SourceKind, SourceSpec, VideoSource, parse_source

CLIP_FRAMES = 100  # the session sample clip: 4 s at 25 fps


def drain(src: VideoSource, timeout: float = 30.0) -> list[Frame]:
    """Start ``src`` and take every frame until it ends (or ``timeout``)."""
    src.start()
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while not src.ended and time.monotonic() < deadline:
        f = src.get(timeout=0.2)
        if f is not None:
            frames.append(f)
    src.stop()
    return frames


def take(src: VideoSource, n: int, timeout: float) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < n and time.monotonic() < deadline and not src.ended:
        f = src.get(timeout=0.2)
        if f is not None:
            frames.append(f)
    return frames


def one_line(err: SourceError | None, name: str) -> str:
    assert err is not None, "expected a SourceError"
    msg = str(err)
    assert name in msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ------------------------------------------------------------------ redact_url


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (
            "rtsp://admin:s3cr3t@10.0.0.5:554/Streaming/101",
            "rtsp://***:***@10.0.0.5:554/Streaming/101",
        ),
        ("rtsp://admin@cam.local/live", "rtsp://***:***@cam.local/live"),
        ("rtsp://a:p@ss@cam:8554/x", "rtsp://***:***@cam:8554/x"),
        (
            "http://h:8080/v.m3u8?x=1&token=abc&Password=p",
            "http://h:8080/v.m3u8?x=1&token=***&Password=***",
        ),
        ("https://u:p@h/s?quality=hd", "https://***:***@h/s?quality=hd"),
        ("rtsp://cam:554/live", "rtsp://cam:554/live"),
        ("out/sample.mp4", "out/sample.mp4"),
        ("file:///media/a.mp4", "file:///media/a.mp4"),
    ],
)
def test_redact_url_hides_credentials_keeps_location(url: str, want: str) -> None:
    assert redact_url(url) == want


def test_redact_url_never_returns_the_secret() -> None:
    for url in (
        "rtsp://u:topsecret@h/p",
        "http://h/p?access_token=topsecret",
        "rtsp://u:top%40secret@h/p",
    ):
        assert "topsecret" not in redact_url(url) and "top%40secret" not in redact_url(url)


# ------------------------------------------------------------------ parse_source


@pytest.fixture
def no_rtsp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ES_RTSP_USERNAME", "ES_RTSP_PASSWORD", "ES_RTSP_PASSWORD_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.usefixtures("no_rtsp_env")
def test_parse_source_file_path_default_id_is_stem() -> None:
    spec = parse_source("out/sample.mp4")
    assert spec == SourceSpec("out/sample.mp4", SourceKind.FILE, "sample", False, "out/sample.mp4")
    assert parse_source("/tmp/My Clip (1).mkv").stream_id == "My-Clip-1"
    assert parse_source("out/sample.mp4").stream_id == parse_source("out/sample.mp4").stream_id


@pytest.mark.usefixtures("no_rtsp_env")
def test_parse_source_file_url_and_explicit_id() -> None:
    spec = parse_source("file:///media/lobby%20cam.mp4", "lobby")
    assert (spec.kind, spec.url, spec.stream_id, spec.is_live) == (
        SourceKind.FILE,
        "/media/lobby cam.mp4",
        "lobby",
        False,
    )


@pytest.mark.usefixtures("no_rtsp_env")
def test_parse_source_urls_kind_liveness_and_default_id() -> None:
    rtsp = parse_source("rtsp://cam.local:8554/live/main")
    assert (rtsp.kind, rtsp.is_live, rtsp.stream_id) == (
        SourceKind.RTSP,
        True,
        "cam.local-8554-live-main",
    )
    hls = parse_source("https://example.org/live/index.m3u8")
    assert (hls.kind, hls.is_live) == (SourceKind.HTTP, True)
    mp4 = parse_source("http://example.org/media/clip.mp4")
    assert (mp4.kind, mp4.is_live) == (SourceKind.HTTP, False)


@pytest.mark.usefixtures("no_rtsp_env")
@pytest.mark.parametrize("bad", ["", "ftp://h/x.mp4", "rtsp:///nohost"])
def test_parse_source_invalid_source_is_config_error(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_source(bad)


@pytest.mark.usefixtures("no_rtsp_env")
@pytest.mark.parametrize("sid", ["", "-x", "a b", "x" * 129, "é"])
def test_parse_source_invalid_stream_id_is_config_error(sid: str) -> None:
    with pytest.raises(ConfigError, match="stream id"):
        parse_source("rtsp://u:secret@cam/x", sid)
    try:
        parse_source("rtsp://u:secret@cam/x", sid)
    except ConfigError as exc:
        assert "secret" not in str(exc)


def test_parse_source_rtsp_credentials_from_env_injected_and_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ES_RTSP_USERNAME", "viewer")
    monkeypatch.setenv("ES_RTSP_PASSWORD", "p@ss:w/rd")
    monkeypatch.delenv("ES_RTSP_PASSWORD_FILE", raising=False)
    spec = parse_source("rtsp://cam:554/live")
    assert spec.url == "rtsp://viewer:p%40ss%3Aw%2Frd@cam:554/live"
    assert spec.display == "rtsp://***:***@cam:554/live"
    assert "p%40ss" not in repr(spec) and "viewer" not in repr(spec)
    # credentials already in the URL win; other schemes get none
    assert parse_source("rtsp://me:mine@cam/live").url == "rtsp://me:mine@cam/live"
    assert "@" not in parse_source("http://cam/live.m3u8").url


def test_parse_source_rtsp_password_file_read_at_parse_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("fromfile\n")
    monkeypatch.setenv("ES_RTSP_USERNAME", "viewer")
    monkeypatch.delenv("ES_RTSP_PASSWORD", raising=False)
    monkeypatch.setenv("ES_RTSP_PASSWORD_FILE", str(pw))
    assert parse_source("rtsp://cam/live").url == "rtsp://viewer:fromfile@cam/live"
    pw.write_text("rotated\n")
    assert parse_source("rtsp://cam/live").url == "rtsp://viewer:rotated@cam/live"
    monkeypatch.setenv("ES_RTSP_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="ES_RTSP_PASSWORD_FILE"):
        parse_source("rtsp://cam/live")


# ------------------------------------------------------------------ queue policies (unit, fake producer)


class FakeLiveSource(VideoSource):
    """A live source whose 'decoder' produces ``n`` tiny frames as fast as it can."""

    def __init__(self, settings: SourceSettings, n: int) -> None:
        super().__init__(
            SourceSpec("rtsp://fake/x", SourceKind.RTSP, "fake", True, "rtsp://fake/x"), settings
        )
        self.n = n

    def _run_live(self) -> None:
        img = np.zeros((4, 4, 3), np.uint8)
        for i in range(self.n):
            self._decoded += 1
            self._put(Frame("fake", i, i / 25, time.time(), img), live=True)


def slow_consume(src: VideoSource, delay: float = 0.01) -> list[int]:
    src.start()
    got: list[int] = []
    while not src.ended:
        f = src.get(timeout=0.2)
        if f is not None:
            got.append(f.frame_num)
            time.sleep(delay)
    src.stop()
    return got


def test_source_drop_oldest_keeps_newest_frames_for_slow_consumer() -> None:
    src = FakeLiveSource(SourceSettings(queue_size=4, drop_policy=DropPolicy.DROP_OLDEST), n=200)
    got = slow_consume(src)
    st = src.stats()
    assert got == sorted(got) and got[-1] == 199
    assert st.dropped > 0 and st.dropped + len(got) == 200 and st.queued == 200


def test_source_drop_latest_keeps_oldest_frames_for_slow_consumer() -> None:
    src = FakeLiveSource(SourceSettings(queue_size=4, drop_policy=DropPolicy.DROP_LATEST), n=200)
    got = slow_consume(src)
    st = src.stats()
    assert got[:4] == [0, 1, 2, 3] and got == sorted(got)
    assert st.dropped > 0 and st.dropped + len(got) == 200 and st.queued == len(got)


def test_source_block_policy_loses_nothing() -> None:
    src = FakeLiveSource(SourceSettings(queue_size=2, drop_policy=DropPolicy.BLOCK), n=50)
    assert slow_consume(src, 0.002) == list(range(50))
    assert src.stats().dropped == 0


def test_source_peek_shows_queued_frames_without_taking_them() -> None:
    src = FakeLiveSource(SourceSettings(queue_size=4, drop_policy=DropPolicy.BLOCK), n=6)
    src.start()
    deadline = time.monotonic() + 5
    while len(src.peek(8)) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [f.frame_num for f in src.peek(8)] == [0, 1, 2, 3]  # the queue is full
    assert [f.frame_num for f in src.peek(2)] == [0, 1]
    assert src.get(timeout=1).frame_num == 0  # peeked frames are still there, in order
    assert slow_consume(src, 0.0) == [1, 2, 3, 4, 5]


def test_source_stop_never_hangs_on_full_queue(sample_clip: Path) -> None:
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(queue_size=1))
    src.start()
    time.sleep(0.3)  # the decoder now waits on the full queue
    t0 = time.monotonic()
    src.stop()
    src.stop()  # idempotent
    assert time.monotonic() - t0 < 1.0
    assert src.error is None and src.stats().decoded <= 3


def test_source_stop_before_start_is_ended() -> None:
    src = VideoSource(parse_source("nothing-here.mp4"), SourceSettings())
    src.stop()
    assert src.ended and src.get(timeout=0.01) is None


# ------------------------------------------------------------------ files (real media)


@pytest.mark.integration
def test_sample_clip_is_deterministic_h264(tmp_path: Path) -> None:
    import av

    from pipeline.media.sample import make_sample_clip

    a = make_sample_clip(tmp_path / "a.mp4", seconds=0.4, fps=25)
    b = make_sample_clip(tmp_path / "b.mp4", seconds=0.4, fps=25)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    with av.open(str(a)) as c:
        s = c.streams.video[0]
        assert (s.codec_context.name, s.format.name, s.width, s.height, s.frames) == (
            "h264",
            "yuv420p",
            960,
            540,
            10,
        )


@pytest.mark.integration
def test_sample_clip_shows_six_faces_on_every_frame(sample_clip: Path, models_dir: Path) -> None:
    from pipeline.stages.detect import FaceDetector

    det = FaceDetector(DetectorSettings(model_dir=models_dir))
    frames = drain(VideoSource(parse_source(str(sample_clip)), SourceSettings(every=5)))
    counts = [len(det.detect(f.image)) for f in frames]
    assert len(counts) == 20 and all(c == 6 for c in counts), counts
    boxes = [np.sort(det.detect(f.image).xyxy, axis=0) for f in frames]
    steps = [float(np.abs(a - b).max()) for a, b in itertools.pairwise(boxes)]
    assert max(steps) > 2.0  # the faces move ...
    assert max(steps) < 40.0  # ... a little (5 frames apart), so tracks can follow them


@pytest.mark.integration
def test_source_file_decodes_every_frame_with_timing(sample_clip: Path) -> None:
    t0 = time.time()
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(queue_size=4))
    frames = drain(src)
    assert src.error is None and src.ended
    assert [f.frame_num for f in frames] == list(range(CLIP_FRAMES))
    pts = np.array([f.pts for f in frames], np.float64)
    np.testing.assert_allclose(pts, np.arange(CLIP_FRAMES) / 25, atol=1e-6)
    wall = np.array([f.wall_ts for f in frames])
    np.testing.assert_allclose(wall - wall[0], pts, atol=1e-6)  # file: stream start + pts
    assert t0 - 1 < wall[0] < time.time()
    assert frames[0].image.shape == (540, 960, 3) and all(f.stream_id == "sample" for f in frames)
    assert all(f.decoded_at >= t0 for f in frames)
    st = src.stats()
    assert (st.decoded, st.queued, st.dropped, st.reconnects) == (
        CLIP_FRAMES,
        CLIP_FRAMES,
        0,
        0,
    ) and st.fps > 25


@pytest.mark.integration
def test_source_every_n_queues_every_nth_frame(sample_clip: Path) -> None:
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(every=3))
    frames = drain(src)
    assert [f.frame_num for f in frames] == list(range(0, CLIP_FRAMES, 3))
    assert src.stats().decoded == CLIP_FRAMES and src.stats().queued == len(frames)


@pytest.mark.integration
def test_source_max_frames_stops_early(sample_clip: Path) -> None:
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(max_frames=10))
    assert [f.frame_num for f in drain(src)] == list(range(10))
    assert src.error is None and src.stats().decoded == 10


@pytest.mark.integration
def test_source_loop_keeps_counting_frames_and_time(sample_clip: Path) -> None:
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(loop=True, max_frames=250))
    frames = drain(src)
    assert [f.frame_num for f in frames] == list(range(250))
    assert all(f.pts is not None for f in frames)
    pts = np.array([f.pts for f in frames], np.float64)
    steps = np.diff(pts)
    np.testing.assert_allclose(steps, 0.04, atol=1e-6)  # seamless across the loop boundary
    wall = np.array([f.wall_ts for f in frames])
    np.testing.assert_allclose(wall - wall[0], pts - pts[0], atol=1e-5)


@pytest.mark.integration
def test_source_realtime_paces_file_at_its_frame_rate(sample_clip: Path) -> None:
    src = VideoSource(parse_source(str(sample_clip)), SourceSettings(realtime=True, max_frames=26))
    t0 = time.monotonic()
    frames = drain(src)
    elapsed = time.monotonic() - t0
    assert len(frames) == 26 and 0.9 <= elapsed < 2.5, (
        elapsed
    )  # 25 frame intervals at 25 fps = 1.0 s


@pytest.mark.integration
def test_source_missing_file_is_one_line_error(tmp_path: Path) -> None:
    src = VideoSource(parse_source(str(tmp_path / "nope.mp4")), SourceSettings())
    assert drain(src) == [] and src.ended
    assert "not found" in one_line(src.error, "nope.mp4")


@pytest.mark.integration
def test_source_not_a_video_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "notvideo.mp4"
    bad.write_text("this is not a video\n")
    src = VideoSource(parse_source(str(bad)), SourceSettings())
    assert drain(src) == []
    assert "not a video" in one_line(src.error, "notvideo.mp4")


@pytest.mark.integration
def test_source_truncated_file_reports_after_good_frames(sample_clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    data = sample_clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    src = VideoSource(parse_source(str(cut)), SourceSettings())
    frames = drain(src)
    assert 10 < len(frames) < CLIP_FRAMES
    assert "truncated" in one_line(src.error, "cut.mp4")
    assert [f.frame_num for f in frames] == list(range(len(frames)))


@pytest.mark.integration
def test_source_directory_is_one_line_error(tmp_path: Path) -> None:
    src = VideoSource(parse_source(str(tmp_path)), SourceSettings())
    drain(src)
    one_line(src.error, str(tmp_path))


# ------------------------------------------------------------------ RTSP (real server)


def rtsp_settings(**kw: Any) -> SourceSettings:
    base: dict[str, Any] = {
        "open_timeout_s": 5.0,
        "read_timeout_s": 3.0,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 1.0,
        "queue_size": 64,
    }
    base.update(kw)
    return SourceSettings(**base)


@pytest.mark.integration
def test_source_rtsp_reads_live_frames(rtsp_server: Any) -> None:
    spec = parse_source(rtsp_server.url, "cam")
    assert spec.is_live and spec.kind is SourceKind.RTSP
    src = VideoSource(spec, rtsp_settings(max_frames=40))
    t0 = time.time()
    frames = drain(src, timeout=20)
    assert src.error is None, src.error
    assert [f.frame_num for f in frames] == list(range(40))
    assert all(t0 <= f.wall_ts <= time.time() for f in frames)  # live: capture wall clock
    assert frames[-1].image.shape == (540, 960, 3)
    print(f"RTSP decode: {src.stats().fps:.1f} fps (server paces at 25)")


@pytest.mark.integration
def test_source_rtsp_credentials_from_env_work_and_stay_hidden(
    rtsp_server: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ES_RTSP_USERNAME", "viewer")
    monkeypatch.setenv("ES_RTSP_PASSWORD", "hunter2")
    spec = parse_source(rtsp_server.url, "cam")
    assert "hunter2" in spec.url and "hunter2" not in spec.display
    src = VideoSource(spec, rtsp_settings(max_frames=5))
    with caplog.at_level("DEBUG"):
        frames = drain(src, timeout=20)
    assert len(frames) == 5 and src.error is None
    assert "hunter2" not in caplog.text


@pytest.mark.integration
def test_source_rtsp_reconnects_after_server_restart(
    rtsp_server_private: Any, caplog: pytest.LogCaptureFixture
) -> None:
    src = VideoSource(parse_source(rtsp_server_private.url, "cam"), rtsp_settings())
    with caplog.at_level("WARNING", logger="pipeline.media.sources"):
        src.start()
        before = take(src, 10, timeout=15)
        assert len(before) == 10
        t_restart = time.monotonic()
        rtsp_server_private.restart(down_s=0.5)
        after: list[Frame] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (src.stats().reconnects < 1 or len(after) < 10):
            f = src.get(timeout=0.2)
            if f is not None:
                after.append(f)
        src.stop()
    st = src.stats()
    assert st.reconnects >= 1 and src.error is None, (st, src.error)
    fresh = [f for f in after if f.frame_num > before[-1].frame_num]
    assert len(fresh) >= 10
    nums = [f.frame_num for f in before + after]
    assert nums == sorted(nums) and len(set(nums)) == len(nums)  # frame_num keeps counting
    assert "reconnect" in caplog.text and rtsp_server_private.url.split("/cam")[0] in caplog.text
    print(
        f"RTSP reconnect: first frame {time.monotonic() - t_restart:.1f}s after restart began (incl. 0.5 s down)"
    )


@pytest.mark.integration
def test_source_rtsp_gives_up_after_reconnect_attempts(rtsp_server_private: Any) -> None:
    src = VideoSource(
        parse_source(rtsp_server_private.url, "cam"), rtsp_settings(reconnect_attempts=2)
    )
    src.start()
    assert len(take(src, 5, timeout=15)) == 5
    rtsp_server_private.stop()
    deadline = time.monotonic() + 20
    while not src.ended and time.monotonic() < deadline:
        src.get(timeout=0.2)
    assert src.ended
    assert "gave up after 2" in one_line(src.error, rtsp_server_private.url)
    src.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


@pytest.mark.integration
def test_source_rtsp_unreachable_port_is_one_line_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    src = VideoSource(
        parse_source(f"rtsp://u:pw@127.0.0.1:{port}/cam"),
        rtsp_settings(open_timeout_s=2.0, reconnect_attempts=0),  # a first open is retried too
    )
    t0 = time.monotonic()
    assert drain(src, timeout=10) == []
    assert time.monotonic() - t0 < 3.0
    msg = one_line(src.error, f"127.0.0.1:{port}")
    assert "pw@" not in msg and "***:***@" in msg


@pytest.mark.integration
def test_source_rtsp_silent_server_times_out(silent_port: int) -> None:
    src = VideoSource(
        parse_source(f"rtsp://127.0.0.1:{silent_port}/cam"),
        rtsp_settings(open_timeout_s=1.0, read_timeout_s=1.0, reconnect_attempts=0),
    )
    t0 = time.monotonic()
    assert drain(src, timeout=10) == []
    assert time.monotonic() - t0 < 4.0
    assert "no answer" in one_line(src.error, f"127.0.0.1:{silent_port}")


@pytest.mark.integration
def test_source_rtsp_stop_during_read_is_prompt(rtsp_server: Any) -> None:
    src = VideoSource(
        parse_source(rtsp_server.url, "cam"),
        rtsp_settings(queue_size=1, drop_policy=DropPolicy.BLOCK),
    )
    src.start()
    assert take(src, 2, timeout=15)
    t0 = time.monotonic()
    stopper = threading.Thread(target=src.stop)
    stopper.start()
    stopper.join(5)
    assert not stopper.is_alive() and time.monotonic() - t0 < 2.0
    while src.get(timeout=0.05) is not None:
        pass
    assert src.ended


# ------------------------------------------------------------------ HTTP (real loopback server)


@pytest.fixture
def http_media(sample_clip: Path) -> Iterator[str]:
    """http://127.0.0.1:P/ serving the sample clip's folder (Python's http.server)."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(sample_clip.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.integration
def test_source_http_file_decodes_like_local_file(http_media: str) -> None:
    spec = parse_source(f"{http_media}/sample.mp4")
    assert spec.kind is SourceKind.HTTP and not spec.is_live
    src = VideoSource(spec, SourceSettings(max_frames=30))
    frames = drain(src)
    assert src.error is None and [f.frame_num for f in frames] == list(range(30))


@pytest.mark.integration
def test_source_http_not_found_is_one_line_error(http_media: str) -> None:
    src = VideoSource(parse_source(f"{http_media}/missing.mp4"), rtsp_settings())
    assert drain(src) == []
    assert "404" in one_line(src.error, "missing.mp4")


def test_source_unexpected_error_is_one_line_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_source("rtsp://u:topsecret@127.0.0.1:9/cam", "cam")

    def boom(self: VideoSource) -> None:
        raise RuntimeError(f"weird failure opening {spec.url}\nsecond line")

    monkeypatch.setattr(VideoSource, "_run_live", boom)
    src = VideoSource(spec, SourceSettings())
    drain(src, timeout=5)
    msg = one_line(src.error, "rtsp://***:***@127.0.0.1:9/cam")
    assert "topsecret" not in msg and "weird failure" in msg
