"""The web view's parts: preview annotation and blur, on-demand encoding, recent figures,
the HTTP routes on a real uvicorn server (fake worker stats), and the per-minute Redis buckets
on a real redis-server. The browser test is ``tests/test_view_browser.py``."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import pytest

from pipeline.control.web import start_view
from pipeline.control.web.live import LiveStats
from pipeline.control.web.preview import PreviewHub, annotate
from pipeline.control.web.server import parse_http
from pipeline.core.config import RedisSettings, ViewSettings
from pipeline.core.errors import ConfigError
from pipeline.core.types import EMOTIONS, Emotions, Faces, Frame, FrameResult
from pipeline.runtime.stats import StreamStats, WorkerStats


def _result(frame_num: int = 0, stream_id: str = "cam1") -> FrameResult:
    rng = np.random.default_rng(frame_num)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    faces = Faces.create(
        [[20, 30, 60, 80], [90, 20, 140, 90]], [0.9, 0.8], np.zeros((2, 5, 2)), [1, 2]
    )
    probs = np.zeros((2, 7), np.float32)
    probs[0, EMOTIONS.index("happy")] = 1.0
    probs[1, EMOTIONS.index("sad")] = 1.0
    frame = Frame(stream_id, frame_num, frame_num / 25, time.time(), image)
    return FrameResult(frame, faces, Emotions(probs), Emotions(probs))


def test_parse_http_bare_port_binds_loopback() -> None:
    assert parse_http("8080") == ("127.0.0.1", 8080)
    assert parse_http(":0") == ("127.0.0.1", 0)
    assert parse_http("0.0.0.0:9000") == ("0.0.0.0", 9000)


def test_parse_http_garbage_is_config_error() -> None:
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_http("localhost:http")


def test_annotate_draws_boxes_and_leaves_source_untouched() -> None:
    r = _result()
    before = r.frame.image.copy()
    out = annotate(r)
    assert out.shape == r.frame.image.shape
    assert np.array_equal(r.frame.image, before)
    # the box edge of face 1 (left side, x=20) is drawn in a flat colour
    edge = out[50:80, 20]
    assert (edge == edge[0]).all() and not np.array_equal(edge, before[50:80, 20])


def test_annotate_blur_hides_face_detail() -> None:
    r = _result()
    plain = annotate(r, blur=False)[40:75, 28:55].astype(np.float32)
    blurred = annotate(r, blur=True)[40:75, 28:55].astype(np.float32)

    def detail(a: np.ndarray) -> float:  # mean neighbour difference: fine detail
        return float(np.abs(np.diff(a, axis=1)).mean())

    assert detail(blurred) < detail(plain) / 10


def test_preview_hub_encodes_only_when_asked() -> None:
    hub = PreviewHub()
    try:
        for i in range(50):
            hub.offer(_result(i))
        assert hub.encoded_frames == 0  # nobody watched: nothing encoded
        jpg = hub.jpeg("cam1")
        assert jpg is not None and hub.encoded_frames == 1
        assert hub.jpeg("cam1") is jpg  # same frame: shared, not re-encoded
        img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3)
        assert hub.jpeg("other") is None
    finally:
        hub.close()


def test_live_stats_last_minute_counts_only_new_labels() -> None:
    state = {"processed": 10, "emotions": {"happy": 5}}

    def stats() -> dict[str, Any]:
        return {"streams": {"cam1": {"stream_id": "cam1", **state, "done": False}}}

    live = LiveStats(stats, window_s=2.0, period_s=0.5)
    for _ in range(6):  # roll the window past the first sample
        live.sample()
        time.sleep(0.01)
    state = {"processed": 20, "emotions": {"happy": 5, "sad": 3}}
    time.sleep(0.6)
    s = live.streams()["cam1"]
    assert s["state"] == "running"
    assert s["emotions_last_minute"]["sad"] == 3
    assert s["emotions_last_minute"]["happy"] == 0
    assert s["fps_recent"] > 0


class _FakeWorker:
    """What start_view needs of a Worker: stats() and set_observer()."""

    def __init__(self) -> None:
        self.observer: Any = None

    def set_observer(self, observer: Any) -> None:
        self.observer = observer

    def stats(self) -> WorkerStats:
        cam = StreamStats(
            stream_id="cam1",
            url="rtsp://***@cam/1",
            session_id="s1",
            decoded=8,
            dropped=1,
            reconnects=0,
            decode_errors=0,
            epoch=0,
            state="running",
            state_reason=None,
            processed=7,
            faces=14,
            tracks=2,
            emotions={"happy": 7, "sad": 7},
            fps=3.5,
            faces_per_s=7.0,
            detect_ms_mean=0.0,
            infer_ms_mean=0.0,
            done=False,
            end_reason="running",
            error=None,
        )
        return WorkerStats(
            worker_id="w",
            streams={"cam1": cam},
            events=14,
            latency_ms={"0.5": 12.0, "0.99": 30.0},
        )


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


@pytest.fixture
def fake_view() -> Iterator[tuple[str, _FakeWorker]]:
    from pipeline.control.metrics import Metrics

    worker = _FakeWorker()
    view = start_view(
        worker,
        ViewSettings(http="127.0.0.1:0", preview_fps=20),
        metrics=Metrics(worker.stats).render,
    )
    try:
        yield view.url.rstrip("/"), worker
    finally:
        view.close()


def test_view_api_streams_lists_redacted_stream(fake_view: tuple[str, _FakeWorker]) -> None:
    base, worker = fake_view
    worker.observer.offer(_result(3))
    code, ctype, body = _get(base + "/api/streams")
    assert code == 200 and ctype.startswith("application/json")
    (item,) = json.loads(body)
    assert item["id"] == "cam1" and item["url"] == "rtsp://***@cam/1"
    assert item["faces"] == 2 and item["tracks"] == 2 and item["state"] == "running"
    assert set(item["emotions_last_minute"]) == set(EMOTIONS)


def test_view_snapshot_is_annotated_jpeg_at_source_size(fake_view: tuple[str, _FakeWorker]) -> None:
    base, worker = fake_view
    assert _get(base + "/streams/cam1/snapshot.jpg")[0] == 503  # no frame yet
    worker.observer.offer(_result(4))
    code, ctype, body = _get(base + "/streams/cam1/snapshot.jpg")
    assert code == 200 and ctype == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (120, 160, 3)


def test_view_unknown_stream_or_session_is_json_404(fake_view: tuple[str, _FakeWorker]) -> None:
    base, _ = fake_view
    for path in ("/streams/nope/snapshot.jpg", "/streams/nope/preview.mjpg"):
        code, ctype, body = _get(base + path)
        assert code == 404 and ctype.startswith("application/json")
        assert "nope" in json.loads(body)["error"]
    code, _, body = _get(base + "/api/sessions/s1")  # no Redis configured
    assert code == 503 and "--redis" in json.loads(body)["error"]


def test_view_mjpeg_sends_jpeg_parts_while_watched(fake_view: tuple[str, _FakeWorker]) -> None:
    base, worker = fake_view
    hub = worker.observer
    hub.offer(_result(5))
    with urllib.request.urlopen(base + "/streams/cam1/preview.mjpg", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        data = r.read1(65536)
        while data.count(b"\xff\xd9") < 1:
            data += r.read1(65536)
        hub.offer(_result(6))
        while data.count(b"--frame") < 2:
            data += r.read1(65536)
        assert hub.watchers["cam1"] == 1
    assert data.startswith(b"--frame\r\nContent-Type: image/jpeg")
    assert hub.encoded_frames == 2


def test_view_serves_health_and_metrics(fake_view: tuple[str, _FakeWorker]) -> None:
    base, _ = fake_view
    code, _, body = _get(base + "/healthz")
    assert code == 200 and json.loads(body)["ok"] is True
    code, _, body = _get(base + "/metrics")
    text = body.decode()
    assert 'emotion_stream_publish_latency_ms{quantile="0.99"} 30.0' in text
    assert "process_resident_memory_bytes" in text
    code, ctype, body = _get(base + "/")
    assert code == 200 and b"live view" in body and ctype.startswith("text/html")


def test_view_port_in_use_is_one_clear_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot listen"):
            start_view(_FakeWorker(), ViewSettings(http=f"127.0.0.1:{port}"))


def _face_event(frame: int, ts: str, label: str, track: int = 1) -> dict[str, Any]:
    probs = dict.fromkeys(EMOTIONS, 0.0)
    probs[label] = 1.0
    return {
        "type": "face",
        "session_id": "sv",
        "stream_id": "cam1",
        "frame_num": frame,
        "timestamp": ts,
        "track_id": track,
        "emotion": {"label": label, "probs": probs},
    }


@pytest.mark.integration
def test_redis_minute_buckets_count_once_on_replay(redis_server: Any) -> None:
    from pipeline.sinks.redis_agg import RedisAggregateSink, connect, read_minutes

    settings = RedisSettings(url=redis_server.url, key_prefix="view-test", ttl_s=300)
    events = [
        _face_event(1, "2026-01-01T10:00:10.000Z", "happy"),
        _face_event(1, "2026-01-01T10:00:10.000Z", "sad", track=2),
        _face_event(2, "2026-01-01T10:00:59.000Z", "happy"),
        _face_event(3, "2026-01-01T10:01:05.000Z", "neutral"),
    ]
    sink = RedisAggregateSink(settings)
    try:
        sink.write(events)
        sink.write(events)  # a replay changes nothing
    finally:
        sink.close()
    client = connect(redis_server.url)
    try:
        minutes = read_minutes(client, "view-test", "sv")
        ttl = client.ttl("view-test:session:sv:minutes")
    finally:
        client.close()
    assert [m["minute"] for m in minutes] == [
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T10:01:00.000Z",
    ]
    assert minutes[0]["counts"]["happy"] == 2 and minutes[0]["counts"]["sad"] == 1
    assert minutes[1]["counts"]["neutral"] == 1 and minutes[1]["faces"] == 1
    assert 0 < ttl <= 300


def test_best_faces_keeps_highest_score_crop_under_cap() -> None:
    import base64

    from pipeline.core.events import validate
    from pipeline.stages.thumbnail import MAX_THUMBNAIL_BYTES, BestFaces

    best = BestFaces()
    dark = np.full((2, 64, 64), 30, np.uint8)
    light = np.full((2, 64, 64), 220, np.uint8)
    best.update(np.array([1, 2]), np.array([0.6, 0.9], np.float32), dark, frame_num=3)
    best.update(np.array([1, 2]), np.array([0.8, 0.7], np.float32), light, frame_num=4)
    t1, t2 = best.pop(1), best.pop(2)
    assert t1 is not None and t2 is not None and best.pop(1) is None
    assert (t1["frame_num"], t1["det_score"]) == (4, 0.8)
    assert (t2["frame_num"], t2["det_score"]) == (3, 0.9)
    raw = base64.b64decode(str(t1["jpeg_base64"]))
    assert len(raw) <= MAX_THUMBNAIL_BYTES
    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (64, 64) and abs(int(img.mean()) - 220) < 5
    event = _track_end_with(t1)
    validate(event)


def test_best_faces_leaves_out_thumbnail_over_cap() -> None:
    from pipeline.stages.thumbnail import BestFaces

    best = BestFaces(max_bytes=200)
    noise = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    best.update(np.array([7]), np.array([0.9], np.float32), noise, frame_num=1)
    assert best.pop(7) is None


def _track_end_with(thumbnail: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core import events as ev
    from pipeline.core.types import TrackSummary

    summary = TrackSummary(3, 4, 1.0, 2.0, 0.1, 0.2)
    summary.add(Frame("cam1", 4, 0.2, 2.0, np.zeros((8, 8, 3), np.uint8)), "happy")
    ctx = ev.EventContext(
        worker_id="w", session_id="s", detector="d", classifier="c", backend="b", precision="fp32"
    )
    event = ev.track_end_event("cam1", 1, summary, ctx)
    event["thumbnail"] = thumbnail
    return event


def test_view_blur_setting_blurs_served_snapshots() -> None:
    worker = _FakeWorker()
    view = start_view(worker, ViewSettings(http="127.0.0.1:0", blur_faces=True))
    try:
        r = _result(9)
        worker.observer.offer(r)
        code, _, body = _get(view.url + "streams/cam1/snapshot.jpg")
        assert code == 200
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).astype(np.float32)
        face, raw = img[40:75, 28:55], r.frame.image[40:75, 28:55].astype(np.float32)
        assert np.abs(np.diff(face, axis=1)).mean() < np.abs(np.diff(raw, axis=1)).mean() / 5
    finally:
        view.close()


def test_view_close_with_watcher_connected_returns_promptly() -> None:
    worker = _FakeWorker()
    view = start_view(worker, ViewSettings(http="127.0.0.1:0"))
    worker.observer.offer(_result(1))
    r = urllib.request.urlopen(view.url + "streams/cam1/preview.mjpg", timeout=10)
    try:
        assert r.read1(65536).startswith(b"--frame")
        t0 = time.monotonic()
        view.close()
        assert time.monotonic() - t0 < 4.0
    finally:
        r.close()
