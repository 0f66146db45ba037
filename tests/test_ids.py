"""One id rule for session, stream and worker ids (no ':' key separator), at every entry point:
flags, --config, ES_*, control records, source ids, the event-log folder and URL paths."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from pipeline.control.streams import StreamRecord
from pipeline.core.config_load import load_settings
from pipeline.core.errors import ConfigError
from pipeline.core.ids import ID_RULE, check_id, is_valid_id
from pipeline.media.sources import SourceKind, default_stream_id, parse_source

BAD_IDS = ["lobby:tracks", "cam@3", "a/b", "..", "", "-x", "a b", "lobby\n", "x" * 129, "é"]


@pytest.mark.parametrize("good", ["lobby", "cam-1", "Cam_2.main", "0", "x" * 128, "worker-0"])
def test_id_rule_accepts_plain_ids(good: str) -> None:
    assert is_valid_id(good) and check_id("session id", good) == good


@pytest.mark.parametrize("bad", [*BAD_IDS, None, 7])
def test_id_rule_rejects_separators_paths_and_odd_values(bad: object) -> None:
    assert not is_valid_id(bad)


def test_check_id_error_is_one_line_with_the_value_cut() -> None:
    with pytest.raises(ConfigError) as info:
        check_id("session id", "s:" + "x" * 100_000, "fix --session")
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400
    assert msg.startswith("session id 's:xxx") and "100002 characters" in msg
    assert ID_RULE in msg and msg.endswith("fix --session")


def test_settings_reject_an_id_with_the_separator_from_every_layer(tmp_path: Path) -> None:
    cfg = tmp_path / "w.json"
    cfg.write_text(json.dumps({"session_id": "lobby:tracks"}))
    cases = [
        ({"flags": {"session_id": "lobby:tracks"}}, "command line"),
        ({"config": cfg}, f"--config {cfg}"),
        ({"environ": {"ES_SESSION_ID": "lobby:tracks"}}, "environment"),
        ({"environ": {"ES_WORKER_ID": "w:1"}}, "environment"),
    ]
    for kwargs, origin in cases:
        with pytest.raises(ConfigError) as info:
            load_settings(**kwargs)  # type: ignore[arg-type]
        msg = str(info.value)
        assert msg.startswith(f"{origin}: invalid setting ") and ID_RULE in msg, msg
    ok = load_settings(environ={"ES_SESSION_ID": "lobby", "ES_WORKER_ID": "edge-1.a"})
    assert (ok.session_id, ok.worker_id) == ("lobby", "edge-1.a")


def test_cli_session_flag_with_separator_is_one_error_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "show", "--session", "lobby:tracks"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "session_id" in err[0]


def test_control_record_with_an_id_outside_the_rule_is_rejected() -> None:
    for record in (
        {"stream_id": "cam:1", "url": "rtsp://cam/1"},
        {"stream_id": "cam1", "url": "rtsp://cam/1", "session_id": "lobby:tracks"},
    ):
        key = record["stream_id"]
        with pytest.raises(ConfigError, match=f"control record {key!r}"):
            StreamRecord.from_bytes(key, json.dumps(record).encode())
    ok = StreamRecord.from_bytes("cam1", b'{"stream_id": "cam1", "url": "rtsp://cam/1"}')
    assert ok.session_id is None


def test_source_ids_follow_the_rule() -> None:
    with pytest.raises(ConfigError, match=r"stream id 'cam:1' is invalid"):
        parse_source("rtsp://cam/1", "cam:1")
    for url in ("rtsp://user@cam:554/a:b@c/live", "http://[::1]:80/x y"):
        assert is_valid_id(default_stream_id(SourceKind.RTSP, url))


def test_cli_streams_add_and_sessions_show_check_ids_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = "127.0.0.1:9"  # never contacted: the id is refused before any connection
    runs = [
        ["streams", "add", "cam:1", "rtsp://cam/1", "--kafka", dead],
        ["streams", "add", "cam1", "rtsp://cam/1", "--session", "a:b", "--kafka", dead],
        ["sessions", "show", "lobby:tracks", "--redis", f"redis://{dead}/0"],
    ]
    for argv in runs:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and " id " in err[0] and "is invalid" in err[0], err


def test_event_log_folder_needs_a_valid_worker_id(tmp_path: Path) -> None:
    from pipeline.core.config import DeliverySettings
    from pipeline.runtime.eventlog import open_log

    for bad in ("..", "a/b", "w:1"):
        with pytest.raises(ConfigError, match="worker id"):
            open_log(tmp_path, bad, DeliverySettings())
    assert not any(tmp_path.iterdir())


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
def test_api_sessions_malformed_id_is_400_json_never_500(redis_server: Any) -> None:
    import redis

    from pipeline.control.web import start_view
    from pipeline.core.config import RedisSettings, ViewSettings
    from pipeline.runtime.stats import WorkerStats

    class _Worker:
        def set_observer(self, observer: Any) -> None:
            pass

        def stats(self) -> WorkerStats:
            return WorkerStats(worker_id="w")

    client = redis.Redis.from_url(redis_server.url)
    client.set("es:session:notahash", "x")  # a key of another type than the aggregates
    view = start_view(
        _Worker(), ViewSettings(http="127.0.0.1:0"), redis=RedisSettings(url=redis_server.url)
    )
    try:
        code, body = _get(view.url + "api/sessions/lobby:tracks")
        assert code == 400 and "session id 'lobby:tracks' is invalid" in body["error"]
        code, body = _get(view.url + "api/sessions/" + "x:" * 5000)
        assert code == 400 and len(body["error"]) < 400
        code, body = _get(view.url + "api/sessions/notahash")
        assert code == 503 and "Redis" in body["error"]
        code, body = _get(view.url + "api/sessions/never-written")
        assert code == 404
    finally:
        view.close()
        client.close()
