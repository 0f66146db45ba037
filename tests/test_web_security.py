"""Who may use the HTTP ports: the web config (exporter-toolkit format: bcrypt basic auth and
TLS), the bind rule, the Host allow-list, security headers, the MJPEG watcher cap and cut ids.
Unit tests for the parts, then the real uvicorn-served view on loopback (HTTPS with a
self-signed certificate made here), then the CLI as a subprocess."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from pipeline.control.web import start_view
from pipeline.control.web.auth import BasicAuth, hash_password, load_web_config, parse_basic
from pipeline.control.web.guard import ECHO_MAX, HostAllowList, check_bind, host_of, is_loopback
from pipeline.core.config import MetricsSettings, ViewSettings, WebSettings
from pipeline.core.errors import ConfigError
from pipeline.core.redact import cut
from tests.servers import wait_until
from tests.test_view import _FakeWorker, _result

REPO = Path(__file__).resolve().parents[1]
HEADERS = (
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "referrer-policy",
)


def _hash(password: str) -> str:
    """A bcrypt hash at the lowest cost (the tests' speed; the CLI asks 10 or more)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------------ the parts


def test_hash_password_verifies_and_refuses_empty_or_too_long() -> None:
    hashed = hash_password("correct horse", cost=4)
    assert hashed.startswith("$2b$04$") and bcrypt.checkpw(b"correct horse", hashed.encode())
    with pytest.raises(ConfigError, match="empty"):
        hash_password("", cost=4)
    with pytest.raises(ConfigError, match="72 bytes"):
        hash_password("x" * 73, cost=4)


def test_basic_auth_caches_successes_only() -> None:
    auth = BasicAuth({"alice": _hash("pw-alice").encode()}, ttl_s=0.5)
    assert not auth.cached("alice", "pw-alice")
    assert auth.verify("alice", "pw-alice") and auth.cached("alice", "pw-alice")
    assert not auth.verify("alice", "wrong") and not auth.cached("alice", "wrong")
    assert not auth.verify("mallory", "pw-alice") and not auth.cached("mallory", "pw-alice")
    time.sleep(0.6)
    assert not auth.cached("alice", "pw-alice")  # expired: bcrypt again


def test_basic_auth_cache_is_bounded() -> None:
    auth = BasicAuth({"alice": _hash("pw").encode()}, max_entries=2)
    for _ in range(3):
        assert auth.verify("alice", "pw")
    assert len(auth._ok) == 1
    auth._users["bob"] = auth._users["carol"] = auth._users["alice"]
    for user in ("bob", "carol"):
        auth.verify(user, "pw")
    assert len(auth._ok) == 2 and not auth.cached("alice", "pw")  # the oldest went


def test_parse_basic_rejects_malformed_headers() -> None:
    assert parse_basic(_basic("a", "b:c")) == ("a", "b:c")
    for bad in ("", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()):
        assert parse_basic(bad) is None


def test_host_allow_list_ignores_port_and_matches_wildcards() -> None:
    hosts = HostAllowList(["127.0.0.1", "localhost", "::1", "*.cams.example"])
    for ok in ("127.0.0.1:8080", "LOCALHOST", "[::1]:9100", "a.cams.example:443"):
        assert hosts.allows(ok), ok
    for bad in ("evil.example", "127.0.0.2", "cams.example", "", None, "[::2]:80"):
        assert not hosts.allows(bad), bad
    assert HostAllowList(["*"]).allows("anything")
    assert host_of("[fe80::1]:80") == "fe80::1" and host_of("Cam:1") == "cam"


def test_default_hosts_bound_to_all_include_own_names_and_addresses() -> None:
    import socket

    from pipeline.control.web.guard import default_hosts, local_addresses

    assert default_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert default_hosts("10.1.2.3") == {"10.1.2.3", "127.0.0.1", "localhost", "::1"}
    everywhere = default_hosts("0.0.0.0")
    assert socket.gethostname().lower() in everywhere
    assert local_addresses() <= everywhere and "127.0.0.1" in local_addresses()


def test_is_loopback_only_for_loopback_addresses() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "no-such-host.invalid"):
        assert not is_loopback(host), host


def test_check_bind_refuses_beyond_loopback_without_web_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        check_bind("0.0.0.0", WebSettings(), "--http")
    msg = str(info.value)
    assert msg.startswith("--http 0.0.0.0:") and "--web-config" in msg and "--http-insecure" in msg
    check_bind("127.0.0.1", WebSettings(), "--http")
    check_bind("0.0.0.0", WebSettings(insecure=True), "--http")
    check_bind("0.0.0.0", WebSettings(config=tmp_path / "web.yml"), "--metrics-host")


def test_metrics_port_binds_loopback_by_default() -> None:
    assert MetricsSettings().host == "127.0.0.1"


def test_cut_shortens_long_text() -> None:
    assert cut("cam1", ECHO_MAX) == "cam1"
    short = cut("x" * 100_000, ECHO_MAX)
    assert len(short) < 90 and short.endswith("(100000 characters)")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read it"),
        ("basic_auth_users: [unclosed", "not valid YAML"),
        ("basic_auth_users:\n  alice: hunter2hunter2\n", "not a bcrypt hash"),
        ("basic_auth_users:\n  alice: $2b$04$short\n", "hash-password"),
        ("- a\n- b\n", "expected a mapping"),
        ("http_server_config:\n  http2: false\n", "unsupported key 'http_server_config'"),
        ("tls_server_config:\n  cert_file: c.pem\n", "needs both cert_file and key_file"),
        ("tls_server_config:\n  cert_file: no.pem\n  key_file: no.key\n", "do not load"),
        ("{}\n", "neither basic_auth_users nor tls_server_config"),
    ],
    ids=["missing", "yaml", "plain-password", "short-hash", "list", "unknown", "no-key", "no-cert", "empty"],
)  # fmt: skip
def test_load_web_config_bad_file_is_one_config_error(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "web.yml"
    if text is not None:
        _write(path, text)
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    msg = str(info.value)
    assert msg.startswith(f"--web-config {path}: ") and expected in msg and "\n" not in msg
    assert "hunter2" not in msg


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "emotion-stream test")])
    now = dt.datetime.now(dt.UTC)
    san = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


# ------------------------------------------------------------------ the real server


class Client:
    """HTTPS requests to the served view, trusting only the test's certificate."""

    def __init__(self, port: int, cafile: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(cafile))

    def conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)

    def get(
        self, path: str, auth: str | None = None, host: str | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        c = self.conn()
        try:
            headers = {"Host": host or f"127.0.0.1:{self.port}"}
            if auth is not None:
                headers["Authorization"] = auth
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[Client, _FakeWorker, str]]:
    from pipeline.control.metrics import Metrics

    _self_signed(tmp_path)
    config = _write(
        tmp_path / "web.yml",
        "basic_auth_users:\n"
        f"  alice: {_hash('pw-alice')}\n"
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    worker = _FakeWorker()
    view = start_view(
        worker,
        ViewSettings(http="127.0.0.1:0", preview_fps=20, max_watchers=2),
        metrics=Metrics(worker.stats).render,
        web=WebSettings(config=config),
    )
    try:
        assert view.url.startswith("https://127.0.0.1:")
        yield Client(view.port, tmp_path / "server.crt"), worker, _basic("alice", "pw-alice")
    finally:
        view.close()


PROTECTED = ("/", "/api/streams", "/api/meta", "/metrics", "/readyz", "/streams/cam1/snapshot.jpg")


@pytest.mark.integration
def test_web_config_requires_login_on_every_route_but_healthz(
    secured: tuple[Client, _FakeWorker, str],
) -> None:
    client, worker, good = secured
    worker.observer.offer(_result(1))
    for path in PROTECTED:
        for auth in (None, _basic("alice", "wrong"), _basic("mallory", "pw-alice"), "Basic %%%"):
            code, headers, body = client.get(path, auth)
            assert code == 401, (path, auth)
            assert headers["www-authenticate"] == 'Basic realm="emotion-stream", charset="UTF-8"'
            assert "error" in json.loads(body)
        code, _, _ = client.get(path, good)
        assert code == 200, path
    code, _, body = client.get("/healthz")  # liveness probes need no login
    assert code == 200 and json.loads(body)["ok"] is True


@pytest.mark.integration
def test_web_config_login_is_checked_by_bcrypt_once_then_cached(
    secured: tuple[Client, _FakeWorker, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _, good = secured
    checks: list[str] = []
    verify = BasicAuth.verify

    def counting(self: BasicAuth, user: str, password: str) -> bool:
        checks.append(user)
        return verify(self, user, password)

    monkeypatch.setattr(BasicAuth, "verify", counting)
    for _ in range(10):
        assert client.get("/api/streams", good)[0] == 200
    assert checks == ["alice"]
    for _ in range(3):  # failures are never cached: each costs a bcrypt check
        assert client.get("/api/streams", _basic("alice", "guess"))[0] == 401
    assert checks == ["alice"] * 4


@pytest.mark.integration
def test_tls_refuses_plain_http_and_untrusted_clients(
    secured: tuple[Client, _FakeWorker, str],
) -> None:
    client, _, _ = secured
    plain = http.client.HTTPConnection("127.0.0.1", client.port, timeout=5)
    with pytest.raises((http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse()
    plain.close()
    strict = http.client.HTTPSConnection(
        "127.0.0.1", client.port, context=ssl.create_default_context(), timeout=5
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        strict.request("GET", "/healthz")
    strict.close()


@pytest.mark.integration
def test_foreign_host_header_is_400_and_headers_on_every_answer(
    secured: tuple[Client, _FakeWorker, str],
) -> None:
    client, worker, good = secured
    worker.observer.offer(_result(2))
    code, headers, body = client.get("/streams/cam1/snapshot.jpg", good, host="evil.example")
    assert code == 400 and "evil.example" in json.loads(body)["error"]
    assert client.get("/api/streams", good, host="localhost:1234")[0] == 200
    answers = [
        client.get("/api/streams", good),
        client.get("/api/streams"),
        client.get("/api/streams", good, host="evil.example"),
        client.get("/nope", good),
        client.get("/healthz"),
    ]
    for code, headers, _ in answers:
        for name in HEADERS:
            assert name in headers, (code, name)
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "default-src 'self'" in headers["content-security-policy"]
    assert [a[0] for a in answers] == [200, 401, 400, 404, 200]
    assert "server" not in answers[0][1]


@pytest.mark.integration
def test_long_ids_are_cut_in_json_errors(secured: tuple[Client, _FakeWorker, str]) -> None:
    client, _, good = secured
    long_id = "A" * 10_000  # under uvicorn's 16 KiB limit of a request head
    for path in (f"/streams/{long_id}/snapshot.jpg", f"/streams/{long_id}/preview.mjpg"):
        code, headers, body = client.get(path, good)
        assert code == 404 and headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert len(error) < 200 and "(10000 characters)" in error
    code, headers, body = client.get(f"/no/such/{long_id}", good)
    assert code == 404 and len(json.loads(body)["error"]) < 200
    for path in (f"/api/sessions/{long_id}", f"/sessions/{long_id}"):
        code, headers, body = client.get(path, good)
        assert code in (400, 404) and len(json.loads(body)["error"]) < 300, (code, body[:300])


def _open_preview(client: Client, auth: str) -> tuple[http.client.HTTPSConnection, Any]:
    c = client.conn()
    c.request("GET", "/streams/cam1/preview.mjpg", headers={"Authorization": auth})
    return c, c.getresponse()


@pytest.mark.integration
def test_mjpeg_watchers_are_capped_and_released_on_disconnect(
    secured: tuple[Client, _FakeWorker, str],
) -> None:
    client, worker, good = secured
    hub = worker.observer
    hub.offer(_result(3))
    watching = [_open_preview(client, good) for _ in range(2)]
    for _, r in watching:
        assert r.status == 200 and r.read1(65536).startswith(b"--frame")
    code, headers, body = client.get("/streams/cam1/preview.mjpg", good)
    assert code == 503 and headers["retry-after"] == "10"
    assert "max_watchers" in json.loads(body)["error"]
    assert hub.watchers["cam1"] == 2
    for c, _ in watching:  # both watchers go away
        c.close()
    wait_until(lambda: hub.watchers["cam1"] == 0, 10, lambda: f"watchers {hub.watchers}")
    c, r = _open_preview(client, good)
    try:
        assert r.status == 200
    finally:
        c.close()


# ------------------------------------------------------------------ the command line


def _cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "-q", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def _one_error(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.integration
def test_cli_refuses_open_bind_beyond_loopback(tmp_path: Path) -> None:
    line = _one_error(_cli("run", str(tmp_path / "clip.mp4"), "--http", "0.0.0.0:0"))
    assert "--http 0.0.0.0" in line and "--web-config" in line and "--http-insecure" in line
    line = _one_error(
        _cli("worker", "--kafka", "127.0.0.1:9", "--metrics-host", "0.0.0.0", "--metrics-port", "0")
    )
    assert "--metrics-host 0.0.0.0" in line and "--web-config" in line
    bad = _write(tmp_path / "web.yml", "basic_auth_users:\n  alice: plain-text-password\n")
    line = _one_error(_cli("run", "x.mp4", "--http", "0.0.0.0:0", "--web-config", str(bad)))
    assert str(bad) in line and "hash-password" in line and "plain-text-password" not in line


@pytest.mark.integration
def test_cli_hash_password_prints_a_bcrypt_hash_only() -> None:
    r = _cli("web", "hash-password", "--cost", "10", stdin="s3cret-pass\n")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.strip()
    assert hashed.startswith("$2b$10$") and bcrypt.checkpw(b"s3cret-pass", hashed.encode())
    assert "s3cret" not in r.stdout.replace(hashed, "") and "s3cret" not in r.stderr
    _one_error(_cli("web", "hash-password", stdin=""))


@pytest.mark.integration
def test_metrics_port_has_the_same_protection(tmp_path: Path) -> None:
    from pipeline.control.health import HealthServer

    def ok() -> tuple[bool, dict[str, Any]]:
        return True, {}

    with pytest.raises(ConfigError, match=r"^--metrics-host 0\.0\.0\.0: .*--web-config"):
        HealthServer("0.0.0.0", 0, ok, ok, lambda: b"m 1\n")
    config = _write(tmp_path / "web.yml", f"basic_auth_users:\n  prom: {_hash('pw-prom')}\n")
    srv = HealthServer("127.0.0.1", 0, ok, ok, lambda: b"m 1\n", WebSettings(config=config))
    srv.start()
    try:

        def get(path: str, auth: str | None = None) -> int:
            c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            c.request("GET", path, headers={"Authorization": auth} if auth else {})
            code = c.getresponse().status
            c.close()
            return code

        assert [get("/metrics"), get("/readyz"), get("/healthz")] == [401, 401, 200]
        assert get("/metrics", _basic("prom", "pw-prom")) == 200
        assert get("/readyz", _basic("prom", "nope")) == 401
    finally:
        srv.close()


@pytest.mark.integration
def test_docker_healthcheck_passes_on_a_tls_metrics_port(tmp_path: Path) -> None:
    import os

    from pipeline.control.health import HealthServer

    def ok() -> tuple[bool, dict[str, Any]]:
        return True, {}

    _self_signed(tmp_path)
    config = _write(
        tmp_path / "web.yml",
        f"basic_auth_users:\n  prom: {_hash('pw')}\n"
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    )
    srv = HealthServer("127.0.0.1", 0, ok, ok, None, WebSettings(config=config)).start()
    script, port = REPO / "deploy" / "scripts" / "healthcheck.py", srv.port

    def check() -> int:
        env = {**os.environ, "ES_METRICS_PORT": str(port)}
        return subprocess.run(
            [sys.executable, str(script)], check=False, env=env, timeout=30
        ).returncode

    try:
        assert check() == 0
    finally:
        srv.close()
    assert check() == 1
