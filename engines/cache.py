"""The TensorRT plan cache: one plan per (ONNX sha256, TensorRT version, GPU, precision, max batch).

A plan is only valid for the TensorRT version and GPU (name and compute capability) it was
built with, so those are part of the key; a plan built elsewhere is rebuilt, never loaded.
Each plan ``<name>.plan`` has a metadata JSON ``<name>.json`` beside it (input spec, class
order, normalisation, the key fields, build time). Writes are atomic (temp file + rename).

Folder: ``ES_ENGINE_CACHE`` or ``~/.cache/emotion-stream/engines`` unless one is passed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_ENV = "ES_ENGINE_CACHE"
TIMING_CACHE_NAME = "timing.cache"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "emotion-stream" / "engines"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.9"


def gpu_identity(device_index: int = 0) -> GpuIdentity:
    """Name and compute capability of a CUDA device: pycuda (the GPU image), else torch."""
    from engines.cuda import import_pycuda
    from pipeline.core.errors import MissingDependencyError

    try:
        cuda = import_pycuda()
    except MissingDependencyError:
        cuda = None
    if cuda is not None:
        dev = cuda.Device(device_index)
        cc_major, cc_minor = dev.compute_capability()
        return GpuIdentity(str(dev.name()), f"{cc_major}.{cc_minor}")
    import torch

    major, minor = torch.cuda.get_device_capability(device_index)
    return GpuIdentity(torch.cuda.get_device_name(device_index), f"{major}.{minor}")


@dataclass(frozen=True, slots=True)
class PlanKey:
    """Everything a serialized plan depends on."""

    onnx_sha256: str
    trt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    max_batch: int
    opt_batch: int
    kind: str = "emotion"  # emotion | detector: each has its own profile and cache entry
    input_hw: str = ""  # detector input "HxW" when the ONNX leaves it dynamic

    def digest(self) -> str:
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def file_stem(self, model_stem: str) -> str:
        return f"{model_stem}-{self.precision}-b{self.max_batch}-{self.digest()}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class PlanCache:
    """Plans and their metadata under one folder."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def paths(self, key: PlanKey, model_stem: str) -> tuple[Path, Path]:
        stem = key.file_stem(model_stem)
        return self.root / f"{stem}.plan", self.root / f"{stem}.json"

    @property
    def timing_cache(self) -> Path:
        return self.root / TIMING_CACHE_NAME

    def lookup(self, key: PlanKey, model_stem: str) -> Path | None:
        """The cached plan for ``key`` if present and its metadata matches ``key`` exactly."""
        plan, meta = self.paths(key, model_stem)
        if not (plan.is_file() and meta.is_file()):
            return None
        try:
            stored = json.loads(meta.read_text())["key"]
        except (ValueError, KeyError) as exc:
            logger.warning("plan metadata %s is unreadable (%s); rebuilding", meta, exc)
            return None
        if stored != asdict(key):
            logger.warning(
                "plan %s was built for %s, not %s; rebuilding", plan, stored, asdict(key)
            )
            return None
        return plan

    def store(self, key: PlanKey, model_stem: str, plan_bytes: bytes, meta: dict[str, Any]) -> Path:
        """Write the plan, then its metadata (the metadata's presence marks a complete entry)."""
        plan, meta_path = self.paths(key, model_stem)
        atomic_write(plan, plan_bytes)
        full = {**meta, "key": asdict(key), "plan": plan.name}
        atomic_write(meta_path, json.dumps(full, indent=2, sort_keys=True).encode())
        logger.info("cached TensorRT plan %s (%.1f MB)", plan, len(plan_bytes) / 1e6)
        return plan


def read_plan_meta(plan: Path) -> dict[str, Any] | None:
    """The metadata JSON beside a plan (``PLAN.json``), or None."""
    meta = Path(plan).with_suffix(".json")
    if not meta.is_file():
        return None
    data: dict[str, Any] = json.loads(meta.read_text())
    return data
