"""Live streams that decode whole, heal themselves and keep ids unique (issue 8, part 2).

Real parts only: H.264 encoded and decoded by PyAV, GStreamer's RTSP server
(``tests/gst_rtsp_serve.py``), the bootstrapped detector and emotion model, a real
redis-server and a real Kafka-protocol broker where the CLI needs one.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core import events as ev
from pipeline.core.config import (
    DeliverySettings,
    DetectorSettings,
    DropPolicy,
    KafkaSettings,
    RedisSettings,
    SourceSettings,
    WorkerSettings,
)
from pipeline.core.errors import ConfigError, ModelError
from pipeline.media.sources import SourceState, VideoSource, parse_source
from tests.delivery_check import assert_ids_in_kafka
from tests.fixtures_rtsp import RtspServer, free_port
from tests.servers import wait_until
from tests.test_sources import drain

pytestmark = [pytest.mark.integration]


def _live_settings(**kw: Any) -> SourceSettings:
    base: dict[str, Any] = {
        "open_timeout_s": 5.0,
        "read_timeout_s": 3.0,
        "reconnect_initial_s": 0.2,
        "reconnect_max_s": 2.0,
        "queue_size": 64,
    }
    return SourceSettings(**(base | kw))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _face_epochs(path: Path) -> Counter[int]:
    """Face events per epoch in a JSONL file that is still being written."""
    out: Counter[int] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            if '"type":"face"' in line and line.endswith("}"):
                out[json.loads(line)["epoch"]] += 1
    return out


def _topic(kind: str) -> str:
    """A Kafka topic of this test's own, so its ids can be diffed exactly."""
    return f"live-{kind}-{uuid.uuid4().hex[:8]}"


def _kafka(broker: Any, topic: str) -> KafkaSettings:
    return KafkaSettings(bootstrap=broker.bootstrap, topic=topic, partitions=2)


def _ids(*paths: Path) -> list[str]:
    return [e["event_id"] for p in paths for e in _read_jsonl(p)]


def _rss_mb(trim: bool = False) -> float:
    """This process's resident memory; ``trim``: after handing the C allocator's free pages
    back (glibc ``malloc_trim``), so what stays is memory in use, not allocator slack."""
    if trim:
        import ctypes
        import gc

        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# ------------------------------------------------------------------ ids carry the epoch


def test_event_ids_file_epoch_unchanged_live_epoch_distinct() -> None:
    old = str(uuid.uuid5(ev.NS_FACE, "cam\x1f3\x1f1"))  # the v1 formula files keep
    assert ev.face_event_id("cam", 3, 1) == old == ev.face_event_id("cam", 3, 1, epoch=0)
    a, b = ev.face_event_id("cam", 3, 1, epoch=1000), ev.face_event_id("cam", 3, 1, epoch=2000)
    assert len({old, a, b}) == 3
    assert ev.stream_end_event_id("cam", 5, 7) != ev.stream_end_event_id("cam", 5)
    assert ev.track_end_event_id("cam", 1, 0, 7) != ev.track_end_event_id("cam", 1, 0)


def test_redis_scope_files_keep_stream_id_live_get_epoch() -> None:
    from pipeline.sinks.redis_agg import split_scope, stream_scope

    assert stream_scope("cam:1", 0) == "cam:1"
    assert split_scope(stream_scope("cam:1", 1234)) == ("cam:1", 1234)
    assert split_scope("cam:1") == ("cam:1", 0)


# ------------------------------------------------------------------ frames that decode whole


@pytest.fixture(scope="module")
def multislice_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """720p, t1.jpg's 6 real faces, every frame encoded in 4 slices (x264 slices=4)."""
    from pipeline.media.sample import make_sample_clip

    out = tmp_path_factory.mktemp("ms") / "multislice720.mp4"
    return make_sample_clip(out, seconds=2.0, fps=25, size=(1280, 720), slices=4)


def _slices_per_frame(clip: Path) -> list[int]:
    """VCL NAL units per access unit of the MP4 (length-prefixed NAL units)."""
    import av

    out = []
    with av.open(str(clip)) as c:
        for pkt in c.demux(video=0):
            data, i, n = bytes(pkt), 0, 0
            while i + 4 <= len(data):
                size = int.from_bytes(data[i : i + 4], "big")
                n += (data[i + 4] & 0x1F) in (1, 5)
                i += 4 + size
            if data:
                out.append(n)
    return out


def test_multislice_clip_has_four_slices_per_frame(multislice_clip: Path) -> None:
    slices = _slices_per_frame(multislice_clip)
    assert len(slices) == 50 and set(slices) == {4}


@pytest.fixture(scope="module")
def detector(models_dir: Path) -> Any:
    from pipeline.stages.detect import FaceDetector

    return FaceDetector(DetectorSettings(model_dir=models_dir))


@pytest.fixture(scope="module")
def file_frames(multislice_clip: Path) -> list[np.ndarray]:
    """The clip's 50 frames decoded straight from the file (BGR)."""
    import av

    with av.open(str(multislice_clip)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


@pytest.fixture(scope="module")
def file_faces(file_frames: list[np.ndarray], detector: Any) -> int:
    """Faces per frame when the file is decoded directly (every 5th frame checked)."""
    counts = [len(detector.detect(img)) for img in file_frames[::5]]
    assert counts == [6] * len(counts)
    return 6


class _UdpSockets:
    """The most UDP sockets this process held at once while the block ran: RTP over UDP
    opens a pair per track; RTP interleaved in the RTSP connection (tcp) opens none."""

    def __init__(self) -> None:
        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.most = 0
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.most = max(self.most, len(self._proc.net_connections(kind="udp")))

    def __enter__(self) -> _UdpSockets:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _diff_to_file(image: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute pixel difference (0-255 scale)."""
    return float(np.abs(image.astype(np.int16) - reference.astype(np.int16)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_source_rtsp_multislice_frames_same_faces_as_file(
    transport: str,
    file_frames: list[np.ndarray],
    multislice_clip: Path,
    detector: Any,
    file_faces: int,
    _gst_available: None,
) -> None:
    """The server sends the file's H.264 as is: every frame arrives whole (all 4 slices),
    so each decodes to the file's own frame; a lost slice shows as concealed blocks."""
    with RtspServer(multislice_clip) as server, _UdpSockets() as udp:
        src = VideoSource(
            parse_source(server.url, "cam"),
            _live_settings(
                rtsp_transport=transport,
                max_frames=50,
                drop_policy=DropPolicy.BLOCK,
                reconnect_attempts=0,
            ),
        )
        frames = drain(src, timeout=60.0)
    assert src.error is None, src.error
    # the transport asked for is the one used: RTP/RTCP UDP sockets only with udp
    used = f"{transport} asked for, {udp.most} UDP sockets open"
    assert (udp.most >= 2) if transport == "udp" else (udp.most == 0), used
    assert len(frames) == 50 and frames[0].image.shape == (720, 1280, 3)
    # the stream starts at some frame of the clip (it loops): find it, then frame by frame
    start = min(range(50), key=lambda k: _diff_to_file(frames[0].image, file_frames[k]))
    diffs = [_diff_to_file(f.image, file_frames[(start + i) % 50]) for i, f in enumerate(frames)]
    print(f"{transport}: from file frame {start}, worst mean pixel difference {max(diffs):.3f}")
    assert max(diffs) <= 1.0, [round(d, 2) for d in diffs]
    counts = [len(detector.detect(f.image)) for f in frames[::5]]
    assert counts == [file_faces] * len(counts), counts


# ------------------------------------------------------------------ corrupt bytes in a file


def _corrupt_copy(clip: Path, out: Path, lo: float = 0.45, hi: float = 0.55) -> Path:
    data = bytearray(clip.read_bytes())
    rnd = random.Random(1)
    for i in range(int(len(data) * lo), int(len(data) * hi)):
        data[i] = rnd.randrange(256)
    out.write_bytes(bytes(data))
    return out


def test_source_file_corrupt_middle_rest_is_processed(sample_clip: Path, tmp_path: Path) -> None:
    bad = _corrupt_copy(sample_clip, tmp_path / "corrupt.mp4")
    src = VideoSource(parse_source(str(bad)), SourceSettings())
    frames = drain(src, timeout=60.0)
    st = src.stats()
    assert src.error is None, src.error
    assert st.decode_errors > 0 and st.state is SourceState.ENDED
    # the frames after the corrupt tenth are decoded, up to the clip's last frame (3.96 s)
    assert max(f.pts or 0.0 for f in frames) >= 3.9
    assert 50 < len(frames) < 100


def test_source_file_corrupt_gives_up_after_max_decode_errors(
    sample_clip: Path, tmp_path: Path
) -> None:
    bad = _corrupt_copy(sample_clip, tmp_path / "corrupt.mp4")
    src = VideoSource(parse_source(str(bad)), SourceSettings(max_decode_errors=1))
    drain(src, timeout=60.0)
    msg = str(src.error)
    assert "max_decode_errors=1" in msg and "corrupt.mp4" in msg and "\n" not in msg
    assert src.stats().state is SourceState.FAILED


def test_run_corrupt_file_summary_counts_decode_errors(
    sample_clip: Path,
    models_dir: Path,
    kafka_broker: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli.main import main

    bad = _corrupt_copy(sample_clip, tmp_path / "corrupt.mp4")
    out, topic = tmp_path / "events.jsonl", _topic("corrupt")
    rc = main(
        [
            "-q",
            "run",
            str(bad),
            "--models",
            str(models_dir),
            "--sink",
            f"jsonl:{out}",
            "--kafka",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--log-dir",
            str(tmp_path / "log"),
            "--every",
            "5",
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    stream = summary["per_stream"]["corrupt"]
    assert rc == 0 and stream["decode_errors"] > 0 and stream["error"] is None
    # the corrupt tenth is at 1.8-2.2 s: frames well after it still give events
    assert max(e["pts"] for e in _read_jsonl(out) if e["type"] == "face") >= 3.5
    assert_ids_in_kafka(_ids(out), kafka_broker.bootstrap, topic)  # every event delivered


# ------------------------------------------------------------------ a camera down at start


def _start_later(server: RtspServer, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, server.start)
    timer.daemon = True
    timer.start()
    return timer


@pytest.fixture
def late_camera(sample_clip: Path, _gst_available: None) -> Iterator[RtspServer]:
    """An RTSP server that is down now and comes up 20 s later on the same port."""
    server = RtspServer(sample_clip, port=free_port())
    timer = _start_later(server, 20.0)
    try:
        yield server
    finally:
        timer.cancel()
        timer.join()
        server.stop()


@pytest.mark.slow
def test_run_camera_down_at_start_is_retried_until_it_comes_up(
    late_camera: RtspServer,
    models_dir: Path,
    kafka_broker: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.cli.main import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"source": {"reconnect_max_s": 2.0, "open_timeout_s": 3.0}}))
    out, topic = tmp_path / "events.jsonl", _topic("late")
    t0 = time.monotonic()
    rc = main(
        [
            "-q",
            "run",
            late_camera.url,
            "--stream-id",
            "late",
            "--models",
            str(models_dir),
            "--sink",
            f"jsonl:{out}",
            "--kafka",
            kafka_broker.bootstrap,
            "--topic",
            topic,
            "--log-dir",
            str(tmp_path / "log"),
            "--max-frames",
            "25",
            "--config",
            str(cfg),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    events = _read_jsonl(out)
    faces = [e for e in events if e["type"] == "face"]
    assert rc == 0 and time.monotonic() - t0 >= 19.0
    late = summary["per_stream"]["late"]
    assert late["decoded"] == 25 and late["processed"] >= 5  # live: the queue drops the oldest
    assert len(faces) >= 5 * late["processed"] and 0 not in {e["epoch"] for e in faces}
    assert_ids_in_kafka(_ids(out), kafka_broker.bootstrap, topic)  # every event delivered


@pytest.mark.slow
def test_worker_camera_down_at_start_states_then_events(
    late_camera: RtspServer, models_dir: Path, kafka_broker: Any, tmp_path: Path
) -> None:
    from pipeline.control.group import GroupRunner, GroupSettings
    from pipeline.control.metrics import Metrics
    from pipeline.runtime.worker import build_worker

    out, topic = tmp_path / "events.jsonl", _topic("late")
    source = _live_settings(open_timeout_s=3.0)
    worker = build_worker(
        WorkerSettings(source=source, delivery=DeliverySettings(log_dir=tmp_path / "log")),
        [f"jsonl:{out}", "kafka"],
        _kafka(kafka_broker, topic),
        RedisSettings(),
        models_dir,
    )
    group = GroupRunner(worker, KafkaSettings(), GroupSettings(), "w1", None, source)
    metrics = Metrics(worker.stats)
    try:
        worker.add_stream(parse_source(late_camera.url, "late"))
        wait_until(
            lambda: worker.stream_states()["late"]["reason"] is not None,
            10,
            lambda: f"a failed connect, states {worker.stream_states()}",
        )
        _ok, ready = group.ready()
        state = ready["stream_states"]["late"]
        assert state["state"] == "connecting" and "127.0.0.1" in state["reason"]
        text = metrics.render().decode()
        assert 'emotion_stream_stream_state{state="connecting",stream="late"} 1.0' in text
        wait_until(
            lambda: worker.stats().streams["late"].processed >= 20,
            60,
            lambda: f"frames after the camera came up, states {worker.stream_states()}",
        )
        assert worker.stream_states()["late"]["state"] == "running"
        assert 'state="running",stream="late"} 1.0' in metrics.render().decode()
        worker.remove_stream("late")
    finally:
        worker.stop()
    faces = [e for e in _read_jsonl(out) if e["type"] == "face"]
    assert len(faces) >= 20 * 5
    assert_ids_in_kafka(_ids(out), kafka_broker.bootstrap, topic)  # every event delivered


# ------------------------------------------------------------------ restarts and migration


def _worker(
    models_dir: Path,
    sinks: list[str],
    redis_url: str,
    session: str,
    kafka: KafkaSettings,
    log: Path,
) -> Any:
    from pipeline.runtime.worker import build_worker

    settings = WorkerSettings(
        session_id=session,
        source=_live_settings(every=2, queue_size=4),
        delivery=DeliverySettings(log_dir=log),
    )
    return build_worker(settings, sinks, kafka, RedisSettings(url=redis_url), models_dir)


@pytest.mark.slow
def test_worker_rtsp_restart_and_migration_new_epochs_distinct_ids_exact_redis(
    rtsp_server_private: RtspServer,
    redis_server: Any,
    kafka_broker: Any,
    models_dir: Path,
    tmp_path: Path,
) -> None:
    import redis

    from pipeline.sinks.redis_agg import read_session

    session = f"live-{uuid.uuid4().hex[:8]}"
    out1, out2 = tmp_path / "w1.jsonl", tmp_path / "w2.jsonl"
    spec = parse_source(rtsp_server_private.url, "cam")
    topic = _topic("move")
    kafka = _kafka(kafka_broker, topic)
    sinks1, sinks2 = [f"jsonl:{out1}", "redis", "kafka"], [f"jsonl:{out2}", "redis", "kafka"]

    def processed(w: Any) -> int:
        return int(w.stats().streams["cam"].processed)

    w1 = _worker(models_dir, sinks1, redis_server.url, session, kafka, tmp_path / "log1")
    try:
        w1.add_stream(spec)
        wait_until(lambda: processed(w1) >= 15, 60, lambda: "frames before the restart")
        rtsp_server_private.restart(down_s=1.0)
        wait_until(
            lambda: len(_face_epochs(out1)) >= 2 and min(_face_epochs(out1).values()) >= 30,
            60,
            lambda: f"faces of a second capture: {_face_epochs(out1)}, {w1.stats().streams}",
        )
        w1.remove_stream("cam", "migrated")
    finally:
        w1.stop()
    w2 = _worker(models_dir, sinks2, redis_server.url, session, kafka, tmp_path / "log2")  # moved
    try:
        w2.add_stream(spec)
        wait_until(lambda: processed(w2) >= 15, 60, lambda: "frames on the second worker")
        w2.remove_stream("cam")
    finally:
        w2.stop()

    first, second = _read_jsonl(out1), _read_jsonl(out2)
    faces1 = [e for e in first if e["type"] == "face"]
    faces2 = [e for e in second if e["type"] == "face"]
    epochs1 = sorted({e["epoch"] for e in faces1})
    epochs2 = {e["epoch"] for e in faces2}
    assert len(epochs1) == 2 and 0 not in epochs1  # one per capture (before / after restart)
    assert len(epochs2) == 1 and epochs2.isdisjoint(epochs1)
    assert min(e["frame_num"] for e in faces2) < max(e["frame_num"] for e in faces1)  # reused
    ids = [e["event_id"] for e in first + second]
    assert len(ids) == len(set(ids))  # every id distinct, across the restart and the move
    for e in first[:3] + second[-3:]:
        ev.validate(e)
    # tracks end at a new capture: none spans two epochs
    ends = [e for e in first if e["type"] == "track_end"]
    assert {e["epoch"] for e in ends} == set(epochs1)

    agg = read_session(redis.Redis.from_url(redis_server.url), "es", session)
    all_faces = faces1 + faces2
    assert agg["faces"] == len(all_faces)
    assert agg["frames"] == len({(e["epoch"], e["frame_num"]) for e in all_faces})
    assert agg["tracks"] == len({(e["epoch"], e["track_id"]) for e in all_faces})
    assert agg["streams"] == ["cam"]
    assert_ids_in_kafka(ids, kafka_broker.bootstrap, topic)  # both workers' events, all delivered


# ------------------------------------------------------------------ churn


def _slope_kb(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of (cycle, RSS MB) samples, in KB per cycle."""
    cycles, mb = zip(*samples, strict=True)
    return float(np.polyfit(cycles, mb, 1)[0]) * 1024


@pytest.mark.slow
def test_worker_stream_churn_200_cycles_memory_flat(
    sample_clip: Path, models_dir: Path, kafka_broker: Any, tmp_path: Path
) -> None:
    """Streams added and removed 200 times, each processing a frame (6 faces): every event of
    every stream is delivered, and memory stays flat: judged by its slope over the 180 cycles
    after the warm-up (RSS after a gc and malloc_trim), not by one total a slow leak fits
    under (50 MB of slack admitted 280 KB a cycle)."""
    from pipeline.runtime.worker import build_worker

    out, topic = tmp_path / "e.jsonl", _topic("churn")
    worker = build_worker(
        WorkerSettings(delivery=DeliverySettings(log_dir=tmp_path / "log")),
        [f"jsonl:{out}", "kafka"],
        _kafka(kafka_broker, topic),
        RedisSettings(),
        models_dir,
    )
    settings = SourceSettings(max_frames=1)

    def cycle(i: int) -> None:
        worker.add_stream(parse_source(str(sample_clip), f"s{i}"), settings)
        wait_until(lambda: worker.stats().streams[f"s{i}"].processed >= 1, 30, lambda: "a frame")
        worker.remove_stream(f"s{i}")

    rss: list[tuple[int, float]] = []
    try:
        for i in range(20):  # warm up: allocator pools, thread stacks, ONNX arenas
            cycle(i)
        threads0 = threading.active_count()
        for i in range(20, 200):
            cycle(i)
            if i % 2:  # every other cycle: a trimmed sample costs a full gc
                rss.append((i, _rss_mb(trim=True)))
        assert worker.stream_ids() == []
        assert threading.active_count() <= threads0  # no stream thread left behind
    finally:
        worker.stop()
    events = _read_jsonl(out)
    faces = Counter(e["stream_id"] for e in events if e["type"] == "face")
    ends = Counter(e["stream_id"] for e in events if e["type"] == "stream_end")
    assert all(faces[f"s{i}"] >= 1 and ends[f"s{i}"] == 1 for i in range(200)), (faces, ends)
    assert_ids_in_kafka(_ids(out), kafka_broker.bootstrap, topic)  # every event delivered
    slope, late = _slope_kb(rss), _slope_kb(rss[len(rss) // 2 :])
    print(
        f"RSS {rss[0][1]:.1f} -> {rss[-1][1]:.1f} MB over 180 cycles: {slope:.1f} KB/cycle "
        f"({late:.1f} over the last 90); {sum(faces.values())} faces"
    )
    assert slope <= 20.0, [mb for _, mb in rss]


# ------------------------------------------------------------------ bad neighbours, bad models


def test_health_server_port_in_use_is_one_config_error() -> None:
    from pipeline.control.health import HealthServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            HealthServer("127.0.0.1", port, lambda: (True, {}), lambda: (True, {}))
    msg = str(info.value)
    assert f"metrics port {port}" in msg and "--metrics-port" in msg and "0: any free port" in msg


def test_worker_cli_metrics_port_in_use_exits_2_with_one_line(
    kafka_broker: Any, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        rc = main(
            [
                "-q",
                "worker",
                "--kafka",
                kafka_broker.bootstrap,
                "--models",
                str(models_dir),
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                str(port),
            ]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"error: metrics port {port} ")
    assert "--metrics-port" in err[0] and "Traceback" not in err[0]


def _onnx_model(path: Path, in_shape: list[Any], out_shape: list[Any], k: int) -> Path:
    """A tiny float model: Flatten -> MatMul (features, k) -> Softmax, shapes as declared."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features = int(np.prod([d for d in in_shape[1:] if isinstance(d, int)]))
    w = numpy_helper.from_array(np.full((features, k), 1e-4, np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Softmax", ["m"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, out_shape)],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("in_shape", "out_shape", "k", "needle"),
    [
        (["N", 1, 64, 64], ["N", 8], 8, "is not (N, 7)"),  # declared wrong output
        (["N", 4096], ["N", 7], 7, "is not an image tensor"),  # input is no image
        (["N", 1, 64, 64], ["N", "K"], 8, "returns shape (2, 8)"),  # only a run shows it
    ],
)
def test_load_engine_refuses_non_emotion_model(
    tmp_path: Path, in_shape: list[Any], out_shape: list[Any], k: int, needle: str
) -> None:
    from engines.registry import load_engine

    bad = _onnx_model(tmp_path / "bad.onnx", in_shape, out_shape, k)
    with pytest.raises(ModelError) as info:
        load_engine(bad, backend="onnxruntime")
    msg = str(info.value)
    assert needle in msg and "bad.onnx" in msg and "\n" not in msg


def test_load_engine_accepts_tiny_emotion_model(tmp_path: Path) -> None:
    from engines.registry import load_engine

    good = _onnx_model(tmp_path / "good.onnx", ["N", 1, 64, 64], ["N", 7], 7)
    engine = load_engine(good, backend="onnxruntime", max_batch=4)
    probs = engine.infer(np.zeros((3, 64, 64), np.uint8))
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_run_cli_bad_emotion_model_exits_2_with_one_line(
    sample_clip: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli.main import main

    bad = _onnx_model(tmp_path / "eight.onnx", ["N", 1, 64, 64], ["N", 8], 8)
    rc = main(
        [
            "-q",
            "run",
            str(sample_clip),
            "--models",
            str(models_dir),
            "--emotion-model",
            str(bad),
            "--sink",
            f"jsonl:{tmp_path / 'e.jsonl'}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: emotion model ")
    assert "eight.onnx" in err[0]


@pytest.mark.slow
def test_worker_cli_camera_down_at_start_retried_visible_then_events(
    kafka_broker: Any, sample_clip: Path, models_dir: Path, tmp_path: Path, _gst_available: None
) -> None:
    """The `worker` command (consumer group, control topic): a stream whose camera is down
    is listed as connecting with its reason in /readyz, then its events reach Kafka."""
    from tests.test_scaleout import Seen, Workers, _cli, _follow

    tag = f"{time.monotonic_ns() % 10**9}"
    control, topic = f"ctl-{tag}", f"events-{tag}"
    kafka = ["--kafka", kafka_broker.bootstrap, "--control-topic", control]
    cfg = tmp_path / "cfg.json"
    source = {"reconnect_max_s": 2.0, "open_timeout_s": 3.0}
    # the camera is on loopback, which control-topic streams may reach only when allowed
    cfg.write_text(json.dumps({"source": source, "group": {"allow_hosts": ["127.0.0.1"]}}))
    server = RtspServer(sample_clip, port=free_port())
    workers, seen, stop = Workers(tmp_path), Seen(), threading.Event()
    follower = threading.Thread(
        target=_follow, args=(kafka_broker.bootstrap, topic, seen, stop), daemon=True
    )
    timer: threading.Timer | None = None
    try:
        workers.start(
            "w0",
            [
                *kafka,
                "--topic",
                topic,
                "--group",
                f"g-{tag}",
                "--models",
                str(models_dir),
                "--metrics-port",
                "0",
                "--metrics-host",
                "127.0.0.1",
                "--session-timeout-ms",
                "3000",
                "--heartbeat-ms",
                "500",
                "--max-poll-interval-ms",
                "10000",
                "--backend",
                "onnxruntime",
                "--config",
                str(cfg),
            ],
        )
        r = _cli("streams", "add", "late", server.url, "--every", "3", *kafka)
        assert r.returncode == 0, r.stderr
        timer = _start_later(server, 20.0)
        follower.start()

        def state() -> dict[str, Any]:
            ready = workers.ready("w0") or {}
            return dict(ready.get("stream_states", {}).get("late", {}))

        wait_until(
            lambda: state().get("state") == "connecting" and bool(state().get("reason")),
            40,
            lambda: f"a connecting stream in /readyz: {state()} {workers.dead_report()}",
        )
        assert "refused" in state()["reason"] and "127.0.0.1" in state()["reason"]
        wait_until(
            lambda: len(seen.owners(0.0).get("late", ())) > 0 and state().get("state") == "running",
            90,
            lambda: f"events of the late camera: {state()} {workers.dead_report()}",
        )
        faces = [r for r in seen.since(0.0) if r[1] == "late" and r[3] == "face"]
        assert len(faces) >= 6 and len({r[4] for r in faces}) == len(faces)
    finally:
        stop.set()
        if timer is not None:
            timer.cancel()
            timer.join()
        workers.stop_all()
        server.stop()
        if follower.is_alive():
            follower.join(10)
