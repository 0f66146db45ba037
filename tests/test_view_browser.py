"""The web view in a real browser: a worker (``run --http``) on the sample clip with the real
redis-server, opened in headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
installed by ``make system``) through Selenium. Screenshots go to ``out/``. The same worker's
``/metrics`` is checked against every metric the Grafana dashboard queries."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "emotion-stream.json"
SESSION = "s-view"
STREAM = "lobby"


class ViewWorker:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, url: str) -> None:
        self.proc, self.log, self.url = proc, log, url.rstrip("/")


def _live_url(log: Path) -> str | None:
    m = re.search(r"live view: (http://\S+)", log.read_text(errors="replace"))
    return m.group(1) if m else None


def _wait_live_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The view URL the process prints once it serves (fails if it exits first)."""
    wait_until(
        lambda: proc.poll() is not None or _live_url(log) is not None,
        120,
        lambda: f"the view URL in {log}: {log.read_text()[-1500:]}",
        poll_s=0.2,
    )
    url = _live_url(log)
    assert url is not None, log.read_text()[-2000:]
    return url


@pytest.fixture(scope="module")
def view_worker(
    tmp_path_factory: pytest.TempPathFactory, sample_clip: Path, models_dir: Path, redis_server: Any
) -> Iterator[ViewWorker]:
    tmp = tmp_path_factory.mktemp("view")
    log = tmp / "worker.log"
    cmd = [
        sys.executable, "-m", "pipeline", "run", str(sample_clip),
        "--models", str(models_dir), "--http", "127.0.0.1:0", "--loop", "--realtime",
        "--stream-id", STREAM, "--session", SESSION, "--redis", redis_server.url,
        "--sink", f"jsonl:{tmp / 'events.jsonl'}",
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = _wait_live_url(proc, log)
        yield ViewWorker(proc, log, url)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                rc = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(10)
            assert rc == 0, log.read_text()[-2000:]


def _binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        f"none of {', '.join(names)} is installed: run `make system` (Debian packages chromium "
        "and chromium-driver)",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = _binary("chromium", "chromium-browser", "google-chrome")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1360,900")
    opts.page_load_strategy = "eager"  # the MJPEG preview never "finishes" loading
    service = Service(executable_path=_binary("chromedriver"))
    os.environ.setdefault("SE_OFFLINE", "true")
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(60)
    # every Content-Security-Policy violation of a page, for _csp_violations()
    driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        },
    )
    try:
        yield driver
    finally:
        driver.quit()


def _js(driver: Any, script: str) -> Any:
    return driver.execute_script(script)


def _csp_violations(driver: Any) -> list[str]:
    """What the page's Content-Security-Policy blocked (scripts, styles, images, fetches)."""
    return list(_js(driver, "return window.__csp || ['the CSP listener did not run']"))


CARD = f"document.querySelector('[data-stream=\"{STREAM}\"]')"


def test_view_page_shows_live_preview_fps_and_labels(view_worker: ViewWorker, browser: Any) -> None:
    browser.get(view_worker.url + "/")
    wait_until(
        lambda: bool(_js(browser, f"const c={CARD}; const i=c&&c.querySelector('img.preview');"
                                  "return !!i && i.naturalWidth > 0")),
        90,
        lambda: f"the preview image to load; worker log: {view_worker.log.read_text()[-800:]}",
        poll_s=0.5,
    )  # fmt: skip
    assert _js(browser, f"return {CARD}.querySelector('img.preview').naturalWidth") == 960
    wait_until(
        lambda: float(_js(browser, f"return {CARD}.querySelector('.fps span').textContent")) > 0,
        60,
        lambda: "a non-zero frames/s on the stream card",
        poll_s=0.5,
    )
    labels = _js(
        browser,
        f"return [...{CARD}.querySelectorAll('.labels .emotion')].map(e => e.dataset.emotion)",
    )
    assert labels and set(labels) <= {
        "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
    }  # fmt: skip
    assert int(_js(browser, f"return {CARD}.querySelector('.faces span').textContent")) > 0
    OUT.mkdir(exist_ok=True)
    browser.save_screenshot(str(OUT / "view-screenshot.png"))
    assert (OUT / "view-screenshot.png").stat().st_size > 20_000
    with urllib.request.urlopen(view_worker.url + "/", timeout=10) as r:
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert _csp_violations(browser) == []


def test_view_session_page_chart_has_points(view_worker: ViewWorker, browser: Any) -> None:
    def applied() -> bool:
        with urllib.request.urlopen(f"{view_worker.url}/api/streams", timeout=10) as r:
            streams = json.loads(r.read())
        return bool(streams) and streams[0]["faces_total"] > 0

    wait_until(applied, 90, lambda: "faces processed", poll_s=0.5)
    browser.get(f"{view_worker.url}/sessions/{SESSION}")
    wait_until(
        lambda: _js(browser, "return document.body.dataset.loaded") == "1",
        30,
        lambda: "the session page to load its data",
        poll_s=0.2,
    )
    points = _js(browser, "return document.querySelectorAll('#chart rect.point').length")
    assert points > 0
    assert int(_js(browser, "return document.querySelectorAll('#tracks tbody tr').length")) > 0
    assert _csp_violations(browser) == []
    browser.save_screenshot(str(OUT / "view-session.png"))


def test_view_unknown_session_is_json_404(view_worker: ViewWorker) -> None:
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(f"{view_worker.url}/sessions/no-such-session", timeout=10)
    assert exc.value.code == 404
    assert "no-such-session" in json.loads(exc.value.read())["error"]


def dashboard_metrics(path: Path = DASHBOARD) -> set[str]:
    """Every metric name the dashboard's PromQL expressions use."""
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names: set[str] = set()
    for expr in exprs:
        names.update(re.findall(r"\b((?:emotion_stream|process)_[a-z0-9_]+)", expr))
    return names


def test_dashboard_queries_only_exported_metrics(view_worker: ViewWorker) -> None:
    with urllib.request.urlopen(f"{view_worker.url}/metrics", timeout=10) as r:
        text = r.read().decode()
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)", text, re.MULTILINE))
    wanted = dashboard_metrics()
    assert len(wanted) >= 10
    assert {
        "emotion_stream_sink_pending_events",
        "emotion_stream_sink_oldest_pending_age_seconds",
    } <= wanted
    missing = sorted(wanted - exported)
    assert not missing, f"dashboard queries metrics the worker does not export: {missing}"


def test_group_worker_serves_view_of_assigned_stream(
    kafka_broker: Any, sample_clip: Path, models_dir: Path, tmp_path: Path
) -> None:
    """``worker --http``: the view lists the stream the group assigned, /readyz turns 200."""
    tag = f"view-{os.getpid()}"
    kafka = ["--kafka", kafka_broker.bootstrap, "--control-topic", f"ctl-{tag}"]
    log = tmp_path / "worker.log"
    cmd = [
        sys.executable, "-m", "pipeline", "worker", *kafka, "--topic", f"events-{tag}",
        "--group", f"g-{tag}", "--media-root", str(sample_clip.parent), "--models",
        str(models_dir), "--metrics-port", "-1", "--http", "127.0.0.1:0",
        "--session-timeout-ms", "2000", "--heartbeat-ms", "500", "--max-poll-interval-ms", "5000",
    ]  # fmt: skip
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = _wait_live_url(proc, log).rstrip("/")
        add = subprocess.run(
            [sys.executable, "-m", "pipeline", "streams", "add", "cam-v", f"file://{sample_clip}",
             "--loop", "--realtime", *kafka],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert add.returncode == 0, add.stderr

        def listed() -> bool:
            with urllib.request.urlopen(f"{url}/api/streams", timeout=10) as r:
                streams = json.loads(r.read())
            return any(s["id"] == "cam-v" and s["preview"] for s in streams)

        wait_until(listed, 90, lambda: f"cam-v in /api/streams: {log.read_text()[-1500:]}", 0.5)
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{url}/streams/cam-v/snapshot.jpg", timeout=10) as r:
            assert r.headers["Content-Type"] == "image/jpeg" and len(r.read()) > 10_000
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
