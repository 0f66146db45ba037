"""ONNX -> TensorRT plan (TensorRT 10 API), cached by ``engines.cache``.

One optimisation profile for a dynamic batch: (1, opt_batch, max_batch) x (C, H, W). fp16 sets
the FP16 builder flag; int8 sets INT8 and calibrates with ``engines.calibrate`` on aligned face
crops (the calibration table is cached). A timing cache in the cache folder is reused across
builds. Progress (builder phases) and the build time are logged.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engines import cache as plan_cache
from engines.backends import check_precision, onnx_spec, require_file
from engines.base import InputSpec
from pipeline.core.errors import ConfigError, MissingDependencyError, ModelError

logger = logging.getLogger(__name__)

TRT_INSTALL = (
    "TensorRT's libraries are not on the package registries: run the GPU image of deploy/ "
    "(NVIDIA TensorRT base image) or `pip install tensorrt --extra-index-url https://pypi.nvidia.com` on a CUDA machine"
)


class PlanKind(enum.StrEnum):
    """What a plan is for; it decides where the input layout comes from."""

    EMOTION = "emotion"
    DETECTOR = "detector"


#: InsightFace's SCRFD input: RGB, (x - 127.5) / 128 (as an InputSpec: (x/255 - 0.5) / (128/255)).
DETECTOR_MEAN, DETECTOR_STD = 0.5, 128.0 / 255.0


class BuildSettings(BaseModel):
    """How to build a TensorRT plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: str = Field("fp16", description="fp32, fp16 or int8.")
    max_batch: int = Field(32, ge=1, description="Largest batch of the optimisation profile.")
    opt_batch: int | None = Field(
        None,
        ge=1,
        description="Batch TensorRT tunes for; None uses max_batch (full batches under load).",
    )
    workspace_mb: int = Field(1024, ge=16, description="Builder workspace memory pool limit, MiB.")
    calib: Path | None = Field(
        None, description="int8: a folder of aligned face crop images or a .npy of crops."
    )
    calib_limit: int = Field(512, ge=8, description="int8: most crops used for calibration.")
    cache_dir: Path | None = Field(
        None,
        description="Plan cache folder (default ES_ENGINE_CACHE or ~/.cache/emotion-stream/engines).",
    )
    timing_cache: bool = Field(
        True, description="Reuse and update the builder timing cache in the cache folder."
    )
    device_index: int = Field(0, ge=0, description="CUDA device the plan is built for.")
    kind: PlanKind = Field(
        PlanKind.EMOTION,
        description="emotion: input spec from the model's metadata; detector: SCRFD-format ONNX (9 outputs).",
    )
    input_hw: tuple[int, int] | None = Field(
        None,
        description="detector: input (height, width) when the ONNX leaves them dynamic; None keeps the model's.",
    )
    rebuild: bool = Field(False, description="Build even when a matching plan is cached.")

    def opt(self) -> int:
        return min(self.opt_batch or self.max_batch, self.max_batch)


def import_trt() -> Any:
    """The ``tensorrt`` module, or MissingDependencyError saying how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(
            "tensorrt", "the TensorRT engine backend", TRT_INSTALL
        ) from exc
    return tensorrt


def trt_logger(trt: Any) -> Any:
    return trt.Logger(trt.Logger.WARNING)


def onnx_input_dims(onnx_path: Path) -> list[int | None]:
    """The first graph input's dimensions (None where dynamic), read with the ``onnx`` package."""
    import onnx

    try:
        m = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{onnx_path} is not a readable ONNX model ({exc}): replace it") from exc
    init = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in init]
    if not inputs:
        raise ModelError(f"{onnx_path} has no graph input: re-export it")
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in inputs[0].type.tensor_type.shape.dim
    ]


def input_layout(onnx_path: Path, settings: BuildSettings) -> tuple[InputSpec, int | None]:
    """The input spec of the plan and the ONNX's fixed batch size (None: dynamic batch axis)."""
    dims = onnx_input_dims(onnx_path)
    if len(dims) != 4:
        raise ModelError(f"{onnx_path} input has {len(dims)} axes, not NCHW: re-export it")
    fixed_batch = dims[0]
    if settings.kind is PlanKind.EMOTION:
        return onnx_spec(onnx_path), fixed_batch
    c, h, w = dims[1] or 3, dims[2], dims[3]
    want = settings.input_hw
    if want is not None and None not in (h, w) and (h, w) != tuple(want):
        raise ConfigError(
            f"detector {onnx_path} has a fixed {w}x{h} input, not {want[1]}x{want[0]}: set detector input_size to {w}x{h}"
        )
    if h is None or w is None:
        if want is None:
            raise ConfigError(
                f"detector {onnx_path} has a dynamic input size: pass the detector input_size"
            )
        h, w = want
    spec = InputSpec(c, h, w, DETECTOR_MEAN, DETECTOR_STD, classes=(), softmax_in_model=False)
    return spec, fixed_batch


def profile_shapes(
    spec: InputSpec, settings: BuildSettings, fixed_batch: int | None = None
) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) input shapes of the one optimisation profile (a fixed batch: all equal)."""
    chw = (spec.channels, spec.height, spec.width)
    if fixed_batch is not None:
        return (fixed_batch, *chw), (fixed_batch, *chw), (fixed_batch, *chw)
    return (1, *chw), (settings.opt(), *chw), (settings.max_batch, *chw)


def effective_settings(onnx_path: Path, settings: BuildSettings) -> BuildSettings:
    """``settings`` with the batch pinned to the ONNX's fixed batch axis, if it has one."""
    _spec, fixed = input_layout(onnx_path, settings)
    if fixed is None or (settings.max_batch == fixed and settings.opt() == fixed):
        return settings
    logger.info("%s has a fixed batch of %d: building for batch %d", onnx_path, fixed, fixed)
    return settings.model_copy(update={"max_batch": fixed, "opt_batch": fixed})


def plan_key(
    onnx_path: Path, trt: Any, settings: BuildSettings, gpu: plan_cache.GpuIdentity
) -> plan_cache.PlanKey:
    return plan_cache.PlanKey(
        onnx_sha256=plan_cache.file_sha256(onnx_path),
        trt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=check_precision(settings.precision),
        max_batch=settings.max_batch,
        opt_batch=settings.opt(),
        kind=settings.kind.value,
        input_hw="" if settings.input_hw is None else "x".join(map(str, settings.input_hw)),
    )


def _progress_monitor(trt: Any) -> Any:
    """A builder progress monitor that logs phases (TensorRT >= 10 has ``IProgressMonitor``)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class LogProgress(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # type: ignore[misc]
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.started[phase_name] = time.monotonic()
            logger.info("build: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            logger.debug("build: %s step %d", phase_name, step)
            return True

        def phase_finish(self, phase_name: str) -> None:
            t0 = self.started.pop(phase_name, time.monotonic())
            logger.info("build: %s done in %.1f s", phase_name, time.monotonic() - t0)

    return LogProgress()


def _parse(trt: Any, builder: Any, onnx_path: Path, log: Any) -> tuple[Any, Any]:
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(
            f"TensorRT cannot parse {onnx_path} ({errors}): re-export it with `emotion-stream export`"
        )
    return network, parser


def _configure(
    trt: Any,
    builder: Any,
    network: Any,
    spec: InputSpec,
    settings: BuildSettings,
    cache: plan_cache.PlanCache,
    onnx_path: Path,
) -> tuple[Any, Any]:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    name = network.get_input(0).name
    profile = None
    if any(int(d) < 0 for d in network.get_input(0).shape):  # a dynamic axis needs a profile
        profile = builder.create_optimization_profile()
        batch = int(network.get_input(0).shape[0])
        lo, opt, hi = profile_shapes(spec, settings, batch if batch > 0 else None)
        profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        logger.info("profile %s: min %s opt %s max %s", name, lo, opt, hi)
    else:
        logger.info(
            "input %s is static %s: no optimisation profile", name, network.get_input(0).shape
        )
    precision = check_precision(settings.precision)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if settings.calib is None:
            raise ConfigError(
                f"int8 build of {onnx_path} needs calibration crops: pass --calib DIR (aligned face crops)"
            )
        from engines.calibrate import load_crops, make_calibrator

        crops = load_crops(settings.calib, spec, settings.calib_limit)
        config.set_flag(trt.BuilderFlag.INT8)
        table = cache.root / f"{onnx_path.stem}-{plan_cache.file_sha256(onnx_path)[:12]}.calib"
        config.int8_calibrator = make_calibrator(
            trt,
            crops,
            spec,
            min(settings.max_batch, 32),
            table,
            settings.device_index,
        )
        if profile is not None:
            config.set_calibration_profile(profile)
    timing = None
    if settings.timing_cache:
        raw = cache.timing_cache.read_bytes() if cache.timing_cache.is_file() else b""
        timing = config.create_timing_cache(raw)
        config.set_timing_cache(timing, False)
    monitor = _progress_monitor(trt)
    if monitor is not None:
        config.progress_monitor = monitor
    return config, monitor


def build_plan(
    onnx_path: Path, settings: BuildSettings, trt: Any | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Build a serialized plan from ``onnx_path``; returns (plan bytes, metadata)."""
    trt = trt or import_trt()
    onnx_path = require_file(Path(onnx_path), (".onnx",), settings.kind.value)
    spec, _fixed = input_layout(onnx_path, settings)
    cache = plan_cache.PlanCache(settings.cache_dir)
    log = trt_logger(trt)
    t0 = time.monotonic()
    logger.info(
        "building TensorRT %s plan from %s (TensorRT %s, max batch %d)",
        settings.precision,
        onnx_path,
        trt.__version__,
        settings.max_batch,
    )
    builder = trt.Builder(log)
    network, _parser = _parse(trt, builder, onnx_path, log)
    config, _monitor = _configure(trt, builder, network, spec, settings, cache, onnx_path)
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        calibrator = getattr(config, "int8_calibrator", None)
        if calibrator is not None and hasattr(calibrator, "free"):
            calibrator.free()
    if plan is None:
        raise ModelError(
            f"TensorRT failed to build a plan from {onnx_path}: run with -vv for the builder log"
        )
    if settings.timing_cache:
        plan_cache.atomic_write(cache.timing_cache, bytes(config.get_timing_cache().serialize()))
    took = time.monotonic() - t0
    logger.info("built %s plan from %s in %.1f s", settings.precision, onnx_path, took)
    meta = {
        "input_spec": json.loads(spec.to_metadata()[InputSpec.METADATA_KEY]),
        "classes": list(spec.classes),
        "normalisation": {
            "mean": list(spec.mean_vec.tolist()),
            "std": list(spec.std_vec.tolist()),
            "colour": str(spec.colour),
            "formula": "(x * scale - mean[c]) / std[c]",
        },
        "input_name": network.get_input(0).name,
        "output_name": network.get_output(0).name,
        "output_names": [network.get_output(i).name for i in range(network.num_outputs)],
        "kind": settings.kind.value,
        "source_onnx": str(onnx_path),
        "build_seconds": round(took, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return bytes(plan), meta


def ensure_plan(
    onnx_path: Path, settings: BuildSettings, trt: Any | None = None
) -> tuple[Path, dict[str, Any], bool]:
    """The cached plan for ``onnx_path`` under ``settings`` (built if absent): (plan, meta, built)."""
    trt = trt or import_trt()
    onnx_path = require_file(Path(onnx_path), (".onnx",), settings.kind.value)
    settings = effective_settings(onnx_path, settings)
    gpu = plan_cache.gpu_identity(settings.device_index)
    key = plan_key(onnx_path, trt, settings, gpu)
    cache = plan_cache.PlanCache(settings.cache_dir)
    found = None if settings.rebuild else cache.lookup(key, onnx_path.stem)
    if found is not None:
        logger.info("using cached TensorRT plan %s", found)
        meta = plan_cache.read_plan_meta(found) or {}
        return found, meta, False
    plan, meta = build_plan(onnx_path, settings, trt)
    meta.update(asdict(key))
    path = cache.store(key, onnx_path.stem, plan, meta)
    return path, plan_cache.read_plan_meta(path) or meta, True
