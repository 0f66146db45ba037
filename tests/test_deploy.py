"""Offline validation of the deployment: compose schema, Dockerfile lint, and consistency of
every command, flag and variable the deployment files name with the real CLI and settings."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILES = [REPO / "deploy" / "Dockerfile.cpu", REPO / "deploy" / "Dockerfile.gpu"]
README = REPO / "deploy" / "README.md"
SCRIPTS = sorted((REPO / "deploy").glob("*/*.sh")) + sorted((REPO / "deploy").glob("*/*.py"))
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
TEXT_FILES = [COMPOSE, README, REPO / "deploy" / "env.example", PROMETHEUS, *DOCKERFILES, *SCRIPTS]
#: Variables that the compose file interpolates but no program reads.
COMPOSE_ONLY = {
    "WORKERS",
    "WORKER_GROUP",
    "CONTROL_PARTITIONS",
    "EVENTS_PARTITIONS",
    "REDIS_PASSWORD_FILE",
    "GPU_BACKEND",
    "GPU_PRECISION",
    "WEB_CONFIG_FILE",
    "METRICS_PASSWORD_FILE",
    "GRAFANA_ADMIN_PASSWORD_FILE",
}


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in the venv (pip install the dev extra)")
    return str(path)


def _compose() -> dict[str, Any]:
    from ruamel.yaml import YAML

    data: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return data


def _parser() -> argparse.ArgumentParser:
    from pipeline.cli.main import build_parser

    return build_parser()


def _subparser(
    parser: argparse.ArgumentParser, words: list[str]
) -> tuple[argparse.ArgumentParser, list[str]]:
    """Follow subcommand words; returns the deepest parser and the words after them."""
    p = parser
    rest = list(words)
    while rest:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or rest[0] not in subs[0].choices:
            break
        p = subs[0].choices[rest.pop(0)]
    return p, rest


def _check_command(words: list[str], where: str) -> None:
    parser = _parser()
    p, rest = _subparser(parser, words)
    assert p is not parser, f"{where}: {' '.join(words[:2])!r} is not an emotion-stream command"
    known = {s for a in p._actions for s in a.option_strings}
    for w in rest:
        if w.startswith("--"):
            flag = w.split("=", 1)[0]
            assert flag in known, f"{where}: `emotion-stream {' '.join(words[:2])}` has no {flag}"


def _cli_lines(text: str) -> list[list[str]]:
    """Every `emotion-stream ...` invocation in a text, split into words (one line each)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for m in re.finditer(r"emotion-stream\s+([a-z][^`|;&)]*)", line):
            try:
                words = shlex.split(m.group(1), comments=True)
            except ValueError:
                words = m.group(1).split()
            out.append([w for w in words if not w.startswith("$")])
    return out


def test_compose_validates_against_compose_spec() -> None:
    r = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    r = subprocess.run(
        [_tool("hadolint"), str(dockerfile)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_worker_is_scalable_and_healthy() -> None:
    services = _compose()["services"]
    for name in ("worker", "worker-gpu"):
        svc = services[name]
        assert "container_name" not in svc, f"{name}: container_name prevents --scale"
        assert "ports" not in svc, f"{name}: a host port prevents --scale"
        assert svc["healthcheck"]["test"], name
        assert svc["restart"] == "unless-stopped", name
        assert "redis_password" in svc["secrets"], name
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    for name in ("kafka", "redis", "rtsp"):
        assert "healthcheck" in services[name], name
    assert services["kafka-init"]["restart"] == "no"


def test_compose_grafana_needs_a_login_from_a_secret() -> None:
    compose = _compose()
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert str(env["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "false"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env and "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert "grafana_admin_password" in grafana["secrets"]
    assert "deploy/secrets/" in compose["secrets"]["grafana_admin_password"]["file"]


def test_compose_kafka_ui_only_in_debug_profile_on_loopback() -> None:
    ui = _compose()["services"]["kafka-ui"]
    assert ui["profiles"] == ["debug"]
    assert all(str(p).startswith("127.0.0.1:") for p in ui["ports"])


def test_compose_host_ports_are_loopback_only() -> None:
    for name, svc in _compose()["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is open beyond the host"


def test_compose_workers_metrics_port_has_a_web_config() -> None:
    compose = _compose()
    env = compose["x-worker-env"]
    assert env["ES_WEB_CONFIG"] == "/run/secrets/web_config"
    assert env["ES_METRICS_HOST"] == "0.0.0.0"  # the compose network, behind the login
    assert "--http-insecure" not in COMPOSE.read_text()
    for name in ("worker", "worker-gpu"):
        svc = compose["services"][name]
        assert svc["environment"]["ES_WEB_CONFIG"] == env["ES_WEB_CONFIG"], name
        assert "web_config" in svc["secrets"], name
    assert "deploy/secrets/" in compose["secrets"]["web_config"]["file"]


def test_prometheus_scrapes_workers_with_basic_auth_from_a_secret() -> None:
    from ruamel.yaml import YAML

    compose = _compose()
    (job,) = YAML(typ="safe").load(PROMETHEUS.read_text())["scrape_configs"]
    auth = job["basic_auth"]
    assert auth["username"] and "password" not in auth
    secret = Path(auth["password_file"]).name
    assert auth["password_file"] == f"/run/secrets/{secret}"
    assert secret in compose["services"]["prometheus"]["secrets"]
    assert "deploy/secrets/" in compose["secrets"][secret]["file"]
    script = (REPO / "deploy" / "scripts" / "make-secrets.sh").read_text()
    assert "prometheus: %s" in script and "web hash-password" in script and secret in script


def test_compose_commands_exist_in_cli() -> None:
    """Each `command:` of a service that runs the emotion-stream image is a real command."""
    services = _compose()["services"]
    checked = 0
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("emotion-stream") or "entrypoint" in svc:
            continue
        cmd = svc["command"]
        words = cmd if isinstance(cmd, list) else shlex.split(cmd)
        _check_command([str(w) for w in words], f"compose service {name}")
        checked += 1
    assert checked >= 2


def test_dockerfile_cmd_exists_in_cli() -> None:
    for df in DOCKERFILES:
        m = re.search(r"^CMD (\[.*\])$", df.read_text(), re.M)
        assert m, f"{df.name}: no exec-form CMD"
        _check_command(json.loads(m.group(1)), df.name)


@pytest.mark.parametrize("path", [COMPOSE, README, *DOCKERFILES, *SCRIPTS], ids=lambda p: p.name)
def test_invocations_use_real_flags(path: Path) -> None:
    """Every `emotion-stream SUBCOMMAND --flag` written in a deployment file exists."""
    for words in _cli_lines(path.read_text()):
        if words and words[0] in {
            "worker",
            "streams",
            "models",
            "sample",
            "run",
            "engines",
            "sessions",
            "web",
        }:
            _check_command(words, path.name)


def _known_env() -> set[str]:
    from pipeline.core.config_load import env_names
    from pipeline.media import sources

    # The settings' ES_<SECTION>_<FIELD>, plus the pair `run` reads for its own sources.
    rtsp = {sources.ENV_RTSP_USERNAME, sources.ENV_RTSP_PASSWORD, sources.ENV_RTSP_PASSWORD_FILE}
    return set(env_names()) | rtsp


def test_env_vars_named_exist() -> None:
    known = _known_env()
    for path in TEXT_FILES:
        for var in set(re.findall(r"\bES_[A-Z0-9_]*[A-Z0-9]\b(?!_)", path.read_text())):
            assert var in known, (
                f"{path.name}: {var} is read by nothing (known: ES_<SECTION>_<FIELD> of WorkerSettings)"
            )


def test_env_example_names_are_known() -> None:
    known = _known_env() | COMPOSE_ONLY
    for line in (REPO / "deploy" / "env.example").read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=", line)
        if m:
            assert m.group(1) in known, f"env.example: {m.group(1)} is used by nothing"


_SECRET_PATTERNS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(
        r"(?i)(password|passwd|secret|token)\s*[:=]\s*['\"]?(?!\$|/run/|\./|<|\*)[A-Za-z0-9+/_-]{6,}"
    ),
    re.compile(r"(?i)--requirepass\s+(?!\")[A-Za-z0-9]{6,}"),
    re.compile(r"[a-z]+://[^/\s:@$]+:[^/\s@$*]{3,}@"),
]


def test_no_secrets_in_deployment_files() -> None:
    for path in TEXT_FILES:
        text = path.read_text()
        for pat in _SECRET_PATTERNS:
            m = pat.search(text)
            assert m is None, f"{path.relative_to(REPO)}: looks like a secret: {m.group(0)!r}"


def test_secret_scan_catches_a_planted_password() -> None:
    planted = "ES_REDIS_PASSWORD=hunter2hunter2\nurl: rtsp://admin:s3cret@cam/1\n"
    assert any(p.search(planted) for p in _SECRET_PATTERNS)


def test_no_secret_files_tracked() -> None:
    r = subprocess.run(
        ["git", "ls-files", "deploy/secrets", ".env"],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout


def test_cli_help_lists_worker_and_streams() -> None:
    """The real entry point (not only the parser object) knows the commands compose runs."""
    for words in (
        ["worker", "--help"],
        ["streams", "add", "--help"],
        ["streams", "list", "--help"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "pipeline", *words],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    for flag in (
        "--kafka",
        "--redis",
        "--group",
        "--worker-id",
        "--media-root",
        "--metrics-port",
        "--topic",
    ):
        assert flag in r.stdout, flag
